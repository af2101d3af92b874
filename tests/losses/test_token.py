"""TokenDistillationLoss (DeiT/HDKD distillation token) against hand computations in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medkd3d.losses import KDLoss, TokenDistillationLoss

CLS = [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]]
DIST = [[0.5, 0.0, 1.5], [1.0, 1.0, -1.0]]
TEACHER = [[2.0, 0.5, 1.0], [0.0, 1.0, -0.5]]  # argmax: [0, 1]
TARGET = [1, 2]


def softmax(z, temperature: float = 1.0) -> np.ndarray:
    e = np.exp(np.asarray(z, dtype=np.float64) / temperature)
    return e / e.sum(axis=1, keepdims=True)


def hand_ce(logits, labels) -> float:
    p = softmax(logits)
    return float(np.mean([-math.log(p[i, y]) for i, y in enumerate(labels)]))


def hand_kl(student, teacher, temperature: float) -> float:
    p_s, p_t = softmax(student, temperature), softmax(teacher, temperature)
    return float(np.mean((p_t * np.log(p_t / p_s)).sum(axis=1)))


def heads(requires_grad: bool = False):
    cls = torch.tensor(CLS, requires_grad=requires_grad)
    dist = torch.tensor(DIST, requires_grad=requires_grad)
    return cls, dist, torch.tensor(TEACHER, requires_grad=requires_grad), torch.tensor(TARGET)


@pytest.mark.parametrize(("alpha", "temperature"), [(0.5, 1.0), (0.2, 3.0)])
def test_soft_token_distillation(alpha, temperature):
    cls, dist, teacher, y = heads()
    total, components = TokenDistillationLoss(alpha=alpha, temperature=temperature)((cls, dist), teacher, y)
    assert components["ce"].item() == pytest.approx((1 - alpha) * hand_ce(CLS, TARGET), rel=1e-5)
    assert components["kd"].item() == pytest.approx(
        alpha * temperature**2 * hand_kl(DIST, TEACHER, temperature), rel=1e-5
    )
    assert total.item() == pytest.approx(components["ce"].item() + components["kd"].item(), rel=1e-6)


def test_hard_token_distillation_uses_teacher_argmax_and_ignores_temperature():
    cls, dist, teacher, y = heads()
    teacher_labels = np.argmax(TEACHER, axis=1)
    for temperature in (1.0, 5.0):
        loss = TokenDistillationLoss(alpha=0.5, temperature=temperature, distillation="hard")
        total, components = loss((cls, dist), teacher, y)
        assert components["kd"].item() == pytest.approx(0.5 * hand_ce(DIST, teacher_labels), rel=1e-5)
        assert total.item() == pytest.approx(0.5 * hand_ce(CLS, TARGET) + 0.5 * hand_ce(DIST, teacher_labels), rel=1e-5)
    soft_total, _ = TokenDistillationLoss(alpha=0.5, distillation="soft")((cls, dist), teacher, y)
    assert soft_total.item() != pytest.approx(total.item(), rel=1e-3)


def test_heads_receive_gradient_only_from_their_own_term():
    cls, dist, teacher, y = heads(requires_grad=True)
    total, _ = TokenDistillationLoss(alpha=1.0)((cls, dist), teacher, None)
    total.backward()
    assert cls.grad is None  # alpha=1: no CE, so the class token is untouched
    assert teacher.grad is None
    np.testing.assert_allclose(dist.grad.numpy(), (softmax(DIST) - softmax(TEACHER)) / 2, rtol=1e-4, atol=1e-7)

    cls, dist, teacher, y = heads(requires_grad=True)
    total, components = TokenDistillationLoss(alpha=0.0)((cls, dist), None, y)
    total.backward()
    assert list(components) == ["ce"] and dist.grad is None and cls.grad.abs().sum() > 0


def test_equal_heads_reduce_to_kd_loss():
    cls, _, teacher, y = heads()
    token_total, _ = TokenDistillationLoss(alpha=0.3, temperature=2.0)((cls, cls), teacher, y)
    kd_total, _ = KDLoss(alpha=0.3, temperature=2.0)(cls, teacher, y)
    assert token_total.item() == pytest.approx(kd_total.item(), rel=1e-6)


def test_bad_inputs_and_arguments():
    cls, dist, teacher, y = heads()
    loss = TokenDistillationLoss()
    with pytest.raises(TypeError, match="forward_heads"):
        loss(cls, teacher, y)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 2\)"):
        loss((cls, dist[:, :2]), teacher, y)
    with pytest.raises(ValueError, match="teacher logits have shape"):
        loss((cls, dist), teacher[:1], y)
    with pytest.raises(ValueError, match="distillation="):
        TokenDistillationLoss(distillation="medium")
    with pytest.raises(ValueError, match="alpha"):
        TokenDistillationLoss(alpha=2.0)
