"""MultiTeacherKDLoss against KDLoss and hand computations of the weighted ensemble soft target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medkd3d.losses import KDLoss, MultiTeacherKDLoss

STUDENT = [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]]
TEACHER_A = [[2.0, 0.5, 1.0], [0.0, 1.0, -0.5]]
TEACHER_B = [[-1.0, 3.0, 0.0], [0.5, 0.5, 2.5]]
TARGET = [1, 2]


def softmax(z, temperature: float = 1.0) -> np.ndarray:
    e = np.exp(np.asarray(z, dtype=np.float64) / temperature)
    return e / e.sum(axis=1, keepdims=True)


def hand_kl(p_t: np.ndarray, p_s: np.ndarray) -> float:
    return float(np.mean((p_t * np.log(p_t / p_s)).sum(axis=1)))


def t(z, requires_grad: bool = False) -> torch.Tensor:
    return torch.tensor(z, requires_grad=requires_grad)


@pytest.mark.parametrize("weighting", ["fixed", "confidence"])
def test_one_teacher_equals_kd_loss(weighting):
    multi_total, multi_parts = MultiTeacherKDLoss(alpha=0.4, temperature=3.0, weighting=weighting)(
        t(STUDENT), [t(TEACHER_A)], t(TARGET)
    )
    kd_total, kd_parts = KDLoss(alpha=0.4, temperature=3.0)(t(STUDENT), t(TEACHER_A), t(TARGET))
    assert multi_total.item() == pytest.approx(kd_total.item(), rel=1e-6)
    assert set(multi_parts) == set(kd_parts)


def test_fixed_weights_average_soft_targets():
    temperature = 2.0
    loss = MultiTeacherKDLoss(teacher_weights=[3.0, 1.0], alpha=1.0, temperature=temperature)
    total, components = loss(t(STUDENT), [t(TEACHER_A), t(TEACHER_B)], None)
    mixture = 0.75 * softmax(TEACHER_A, temperature) + 0.25 * softmax(TEACHER_B, temperature)
    expected = temperature**2 * hand_kl(mixture, softmax(STUDENT, temperature))
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert list(components) == ["kd"]
    # No weights: the plain mean of the teachers' soft targets.
    equal, _ = MultiTeacherKDLoss(alpha=1.0, temperature=temperature)(t(STUDENT), (t(TEACHER_A), t(TEACHER_B)))
    mixture = 0.5 * softmax(TEACHER_A, temperature) + 0.5 * softmax(TEACHER_B, temperature)
    assert equal.item() == pytest.approx(temperature**2 * hand_kl(mixture, softmax(STUDENT, temperature)), rel=1e-5)


def test_confidence_weights_follow_each_teachers_probability_of_the_label():
    temperature, prior = 1.5, [1.0, 2.0]
    loss = MultiTeacherKDLoss(teacher_weights=prior, alpha=0.5, temperature=temperature, weighting="confidence")
    total, components = loss(t(STUDENT), [t(TEACHER_A), t(TEACHER_B)], t(TARGET))
    conf_a, conf_b = softmax(TEACHER_A), softmax(TEACHER_B)
    soft_a, soft_b = softmax(TEACHER_A, temperature), softmax(TEACHER_B, temperature)
    mixture = []
    for i, y in enumerate(TARGET):
        w_a, w_b = prior[0] * conf_a[i, y], prior[1] * conf_b[i, y]
        mixture.append((w_a * soft_a[i] + w_b * soft_b[i]) / (w_a + w_b))
    kd = temperature**2 * hand_kl(np.array(mixture), softmax(STUDENT, temperature))
    ce = np.mean([-math.log(softmax(STUDENT)[i, y]) for i, y in enumerate(TARGET)])
    assert components["kd"].item() == pytest.approx(0.5 * kd, rel=1e-5)
    assert total.item() == pytest.approx(0.5 * kd + 0.5 * ce, rel=1e-5)


def test_teachers_are_detached():
    student, teachers = t(STUDENT, True), [t(TEACHER_A, True), t(TEACHER_B, True)]
    total, _ = MultiTeacherKDLoss(alpha=0.5, weighting="confidence")(student, teachers, t(TARGET))
    total.backward()
    assert student.grad.abs().sum() > 0
    assert all(teacher.grad is None for teacher in teachers)


def test_bad_inputs_and_arguments():
    loss = MultiTeacherKDLoss(teacher_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="3 teachers but 2 teacher_weights"):
        loss(t(STUDENT), [t(TEACHER_A)] * 3, t(TARGET))
    with pytest.raises(TypeError, match=r"wrap a single teacher as \[teacher_logits\]"):
        loss(t(STUDENT), t(TEACHER_A), t(TARGET))
    with pytest.raises(ValueError, match=r"logits of teacher 1 have shape \(2, 2\)"):
        loss(t(STUDENT), [t(TEACHER_A), t(TEACHER_B)[:, :2]], t(TARGET))
    with pytest.raises(ValueError, match="target is None"):
        MultiTeacherKDLoss(alpha=1.0, weighting="confidence")(t(STUDENT), [t(TEACHER_A)], None)
    with pytest.raises(ValueError, match="teacher_weights"):
        MultiTeacherKDLoss(teacher_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="weighting"):
        MultiTeacherKDLoss(weighting="vote")
