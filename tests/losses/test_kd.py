"""KDLoss and kl_divergence against hand computations in numpy (the seed formula of logit KD)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medkd3d.losses import KDLoss, kl_divergence

STUDENT = [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [0.0, 0.0, 0.0]]
TEACHER = [[2.0, 0.5, 1.0], [0.0, 1.0, -0.5], [3.0, -2.0, 1.0]]
TARGET = [1, 2, 0]


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    e = np.exp(np.asarray(z, dtype=np.float64) / temperature)
    return e / e.sum(axis=1, keepdims=True)


def hand_kl_per_sample(student, teacher, temperature: float) -> np.ndarray:
    p_s, p_t = softmax(student, temperature), softmax(teacher, temperature)
    return np.array([sum(pt * math.log(pt / ps) for pt, ps in zip(row_t, row_s)) for row_t, row_s in zip(p_t, p_s)])


def hand_ce(student, target) -> float:
    p = softmax(student)
    return float(np.mean([-math.log(p[i, y]) for i, y in enumerate(target)]))


def tensors(requires_grad: bool = False):
    s = torch.tensor(STUDENT, requires_grad=requires_grad)
    t = torch.tensor(TEACHER, requires_grad=requires_grad)
    return s, t, torch.tensor(TARGET)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_kd_loss_matches_seed_formula(alpha, temperature):
    s, t, y = tensors()
    total, components = KDLoss(alpha=alpha, temperature=temperature)(s, t, y)
    kl = hand_kl_per_sample(STUDENT, TEACHER, temperature).mean()
    expected = alpha * temperature**2 * kl + (1 - alpha) * hand_ce(STUDENT, TARGET)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert sum(components.values()).item() == pytest.approx(total.item(), rel=1e-6)
    assert set(components) == {name for name, weight in (("kd", alpha), ("ce", 1 - alpha)) if weight > 0}


def test_temperature_squared_scaling_of_soft_term():
    s, t, _ = tensors()
    for temperature in (1.0, 2.0, 8.0):
        _, components = KDLoss(alpha=1.0, temperature=temperature)(s, t, None)
        kl = hand_kl_per_sample(STUDENT, TEACHER, temperature).mean()
        assert components["kd"].item() == pytest.approx(temperature**2 * kl, rel=1e-5)


def test_gradient_is_t_times_probability_gap_and_reaches_student_only():
    # d/dz_s [T^2 KL(p_t || softmax(z_s/T))] / B = T (p_s - p_t) / B: the T^2 factor keeps gradients from vanishing.
    s, t, _ = tensors(requires_grad=True)
    temperature = 4.0
    total, _ = KDLoss(alpha=1.0, temperature=temperature)(s, t, None)
    total.backward()
    expected = temperature * (softmax(STUDENT, temperature) - softmax(TEACHER, temperature)) / len(STUDENT)
    np.testing.assert_allclose(s.grad.numpy(), expected, rtol=1e-4, atol=1e-7)
    assert t.grad is None


def test_alpha_edges_do_not_need_the_unused_input():
    s, t, y = tensors()
    total, components = KDLoss(alpha=1.0)(s, t, None)
    assert list(components) == ["kd"]
    total, components = KDLoss(alpha=0.0)(s, None, y)
    assert list(components) == ["ce"]
    assert total.item() == pytest.approx(hand_ce(STUDENT, TARGET), rel=1e-6)


def test_kd_is_zero_when_student_equals_teacher():
    s, _, _ = tensors()
    total, _ = KDLoss(alpha=1.0, temperature=3.0)(s, s.clone(), None)
    assert abs(total.item()) < 1e-6


def test_kl_divergence_reductions():
    s, t, _ = tensors()
    log_s, log_t = torch.log_softmax(s / 2.0, dim=1), torch.log_softmax(t / 2.0, dim=1)
    per_sample = hand_kl_per_sample(STUDENT, TEACHER, 2.0)
    np.testing.assert_allclose(kl_divergence(log_s, log_t, reduction="none").numpy(), per_sample, rtol=1e-5)
    # batchmean divides by the batch only, not by batch * classes (the elementwise mean would be 3x smaller).
    assert kl_divergence(log_s, log_t).item() == pytest.approx(per_sample.sum() / 3, rel=1e-5)
    assert kl_divergence(log_s, log_t, reduction="sum").item() == pytest.approx(per_sample.sum(), rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        kl_divergence(log_s, log_t, reduction="mean")


def test_class_weighted_ce_term_is_replaceable():
    s, t, y = tensors()
    weights = [0.5, 2.0, 1.0]
    _, components = KDLoss(alpha=0.25, ce_loss=nn.CrossEntropyLoss(weight=torch.tensor(weights)))(s, t, y)
    p = softmax(STUDENT)
    weighted = sum(-weights[c] * math.log(p[i, c]) for i, c in enumerate(TARGET)) / sum(weights[c] for c in TARGET)
    assert components["ce"].item() == pytest.approx(0.75 * weighted, rel=1e-5)


def test_half_precision_logits_give_float32_loss():
    s, t, y = tensors()
    total, _ = KDLoss(alpha=1.0, temperature=2.0)(s.half(), t.half(), y)
    assert total.dtype == torch.float32
    assert total.item() == pytest.approx(4.0 * hand_kl_per_sample(STUDENT, TEACHER, 2.0).mean(), rel=2e-3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"alpha": -0.1}, "alpha"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KDLoss(**kwargs)


def test_bad_inputs_name_the_problem():
    s, t, y = tensors()
    loss = KDLoss(alpha=0.5)
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(3, 2\)"):
        loss(s, t[:, :2], y)
    with pytest.raises(ValueError, match="target is None"):
        loss(s, t, None)
    with pytest.raises(ValueError, match=r"target has shape \(3, 1\)"):
        loss(s, t, y[:, None])
    with pytest.raises(TypeError, match="TokenDistillationLoss"):
        loss((s, s), t, y)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        loss(s[:, 0], t[:, 0], y)
