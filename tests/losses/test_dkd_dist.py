"""DKDLoss (Zhao et al. 2022) and DISTLoss (Huang et al. 2022) against hand computations in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medkd3d.losses import DISTLoss, DKDLoss, decoupled_kl_terms

STUDENT = [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]]
TEACHER = [[2.0, 0.5, 1.0], [0.0, 1.0, -0.5]]
TARGET = [1, 2]


def softmax(z, temperature: float = 1.0) -> np.ndarray:
    e = np.exp(np.asarray(z, dtype=np.float64) / temperature)
    return e / e.sum(axis=1, keepdims=True)


def kl(p_t, p_s) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p_t, p_s))


def hand_dkd_terms(student, teacher, target, temperature):
    """Per-sample TCKD and NCKD written out from the paper's definitions."""
    p_s, p_t = softmax(student, temperature), softmax(teacher, temperature)
    tckd, nckd = [], []
    for i, y in enumerate(target):
        others = [c for c in range(p_s.shape[1]) if c != y]
        b_s, b_t = [p_s[i, y], 1 - p_s[i, y]], [p_t[i, y], 1 - p_t[i, y]]
        hat_s = [p_s[i, c] / (1 - p_s[i, y]) for c in others]
        hat_t = [p_t[i, c] / (1 - p_t[i, y]) for c in others]
        tckd.append(kl(b_t, b_s))
        nckd.append(kl(hat_t, hat_s))
    return np.array(tckd), np.array(nckd)


def test_dkd_three_class_hand_example():
    temperature, alpha, beta = 2.0, 1.0, 8.0
    total, components = DKDLoss(alpha=alpha, beta=beta, temperature=temperature)(
        torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGET)
    )
    tckd, nckd = hand_dkd_terms(STUDENT, TEACHER, TARGET, temperature)
    p = softmax(STUDENT)
    ce = np.mean([-math.log(p[i, y]) for i, y in enumerate(TARGET)])
    assert components["tckd"].item() == pytest.approx(temperature**2 * alpha * tckd.mean(), rel=1e-5)
    assert components["nckd"].item() == pytest.approx(temperature**2 * beta * nckd.mean(), rel=1e-5)
    assert components["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert total.item() == pytest.approx(sum(v.item() for v in components.values()), rel=1e-6)


def test_dkd_decomposes_classical_kd():
    # The paper's eq. 5: KL(p_t || p_s) = TCKD + (1 - p_t[y]) * NCKD, per sample.
    for i, y in enumerate(TARGET):
        tckd, nckd = decoupled_kl_terms(
            torch.tensor([STUDENT[i]]), torch.tensor([TEACHER[i]]), torch.tensor([y]), temperature=3.0
        )
        p_s, p_t = softmax([STUDENT[i]], 3.0)[0], softmax([TEACHER[i]], 3.0)[0]
        assert (tckd + (1 - p_t[y]) * nckd).item() == pytest.approx(kl(p_t, p_s), rel=1e-5)


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_dkd_two_classes_has_zero_nckd_and_no_nan(scale):
    student = (scale * torch.tensor([[5.0, -5.0], [0.1, 0.2], [1.0, 1.0]])).requires_grad_()
    teacher = scale * torch.tensor([[-3.0, 3.0], [1.0, 1.0], [2.0, 0.0]])
    target = torch.tensor([0, 1, 1])
    total, components = DKDLoss(ce_weight=0.0, temperature=1.0)(student, teacher, target)
    assert "ce" not in components
    assert components["nckd"].item() == 0.0
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(student.grad).all()
    # With two classes the binary distribution is the full one, so TCKD is classical KD.
    p_s, p_t = softmax(student.detach(), 1.0), softmax(teacher, 1.0)
    if scale == 1.0:
        expected = np.mean([kl(p_t[i], p_s[i]) for i in range(3)])
        assert components["tckd"].item() == pytest.approx(expected, rel=1e-5)


def test_dkd_warmup_scales_kd_terms_and_needs_the_epoch():
    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(TARGET)
    loss = DKDLoss(warmup_epochs=10)
    with pytest.raises(RuntimeError, match="set_epoch"):
        loss(s, t, y)
    _, full = DKDLoss()(s, t, y)
    loss.set_epoch(2)
    _, warm = loss(s, t, y)
    assert warm["tckd"].item() == pytest.approx(0.2 * full["tckd"].item(), rel=1e-6)
    assert warm["nckd"].item() == pytest.approx(0.2 * full["nckd"].item(), rel=1e-6)
    assert warm["ce"].item() == pytest.approx(full["ce"].item(), rel=1e-6)
    loss.set_epoch(30)
    assert loss(s, t, y)[0].item() == pytest.approx(sum(v.item() for v in full.values()), rel=1e-6)


def test_dkd_rejects_bad_arguments_and_missing_target():
    with pytest.raises(ValueError, match="warmup_epochs"):
        DKDLoss(warmup_epochs=-1)
    with pytest.raises(ValueError, match="beta"):
        DKDLoss(beta=-1.0)
    with pytest.raises(ValueError, match=r"target is None.*non-target"):
        DKDLoss()(torch.tensor(STUDENT), torch.tensor(TEACHER), None)


def hand_dist(student, teacher, temperature):
    y_s, y_t = softmax(student, temperature), softmax(teacher, temperature)
    inter = np.mean([1 - np.corrcoef(y_s[i], y_t[i])[0, 1] for i in range(y_s.shape[0])])
    intra = np.mean([1 - np.corrcoef(y_s[:, c], y_t[:, c])[0, 1] for c in range(y_s.shape[1])])
    return inter, intra


def test_dist_matches_pearson_relations():
    rng = np.random.default_rng(0)
    student, teacher = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    target = [0, 2, 1, 1]
    temperature, beta, gamma = 2.0, 1.0, 2.0
    total, components = DISTLoss(beta=beta, gamma=gamma, temperature=temperature)(
        torch.tensor(student, dtype=torch.float32), torch.tensor(teacher, dtype=torch.float32), torch.tensor(target)
    )
    inter, intra = hand_dist(student, teacher, temperature)
    p = softmax(student)
    ce = np.mean([-math.log(p[i, y]) for i, y in enumerate(target)])
    assert components["inter"].item() == pytest.approx(beta * temperature**2 * inter, rel=1e-4)
    assert components["intra"].item() == pytest.approx(gamma * temperature**2 * intra, rel=1e-4)
    assert total.item() == pytest.approx(ce + beta * 4 * inter + gamma * 4 * intra, rel=1e-4)


def test_dist_is_zero_for_equal_predictions_and_finite_for_two_classes():
    logits = torch.randn(6, 4)
    total, components = DISTLoss(ce_weight=0.0)(logits, logits.clone(), None)
    assert "ce" not in components
    assert abs(total.item()) < 1e-5
    student = torch.randn(5, 2, requires_grad=True)
    teacher = torch.randn(5, 2, requires_grad=True)
    loss, _ = DISTLoss(ce_weight=0.0)(student, teacher, None)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all() and teacher.grad is None
