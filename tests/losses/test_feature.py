"""FeatureKDLoss (HDKD eq. 7-8) against hand computations in numpy, and the HDKD objective as a sum of losses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medkd3d.losses import FeatureKDLoss, TokenDistillationLoss

# Three 3D stages that halve the space and double the channels, like HDKD's shared stages (tiny).
SHAPES = [(2, 4, 8, 8, 8), (2, 8, 4, 4, 4), (2, 16, 2, 2, 2)]


def features(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]


def hand_mse(a: np.ndarray, b: np.ndarray) -> float:
    # HDKD: ||f_t - f_s||^2 / (C H W D) per sample, then the batch mean.
    per_sample = [((a[i].astype(np.float64) - b[i]) ** 2).sum() / a[i].size for i in range(a.shape[0])]
    return float(np.mean(per_sample))


STUDENT, TEACHER = features(0), features(1)


def as_tensors(arrays, requires_grad: bool = False):
    return [torch.tensor(a, requires_grad=requires_grad) for a in arrays]


@pytest.mark.parametrize(("lambda_feat", "beta"), [(10.0, 1.0), (1.0, 0.0), (2.0, 2.0)])
def test_stage_weighted_mse(lambda_feat, beta):
    total, components = FeatureKDLoss(lambda_feat=lambda_feat, beta=beta)(as_tensors(STUDENT), as_tensors(TEACHER))
    expected = {
        f"feat_{j}": lambda_feat * j**beta * hand_mse(s, t) for j, (s, t) in enumerate(zip(STUDENT, TEACHER), 1)
    }
    assert set(components) == set(expected)
    for name, value in expected.items():
        assert components[name].item() == pytest.approx(value, rel=1e-5)
    assert total.item() == pytest.approx(sum(expected.values()), rel=1e-5)


def test_stage_indices_keep_network_stage_numbers():
    # A 4-stage student (the last stage is the transformer) against a 3-stage teacher; distil stages 2 and 3 only.
    student = [*as_tensors(STUDENT), torch.zeros(2, 32)]
    total, components = FeatureKDLoss(lambda_feat=1.0, beta=1.0, stage_indices=(1, 2))(student, as_tensors(TEACHER))
    assert set(components) == {"feat_2", "feat_3"}
    expected = 2 * hand_mse(STUDENT[1], TEACHER[1]) + 3 * hand_mse(STUDENT[2], TEACHER[2])
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_teacher_features_are_detached_and_zero_loss_for_equal_features():
    student, teacher = as_tensors(STUDENT, requires_grad=True), as_tensors(TEACHER, requires_grad=True)
    total, _ = FeatureKDLoss()(student, teacher)
    total.backward()
    assert all(t.grad is None for t in teacher)
    # d/ds [lambda * j * mean((s - t)^2)] = lambda * j * 2 (s - t) / numel
    expected = 10.0 * 3 * 2 * (STUDENT[2] - TEACHER[2]) / STUDENT[2].size
    np.testing.assert_allclose(student[2].grad.numpy(), expected, rtol=1e-4, atol=1e-8)
    same, _ = FeatureKDLoss()(as_tensors(STUDENT), as_tensors(STUDENT))
    assert same.item() == 0.0


def test_mismatched_features_raise_clear_errors():
    student, teacher = as_tensors(STUDENT), as_tensors(TEACHER)
    bad_teacher = [teacher[0], torch.zeros(2, 6, 4, 4, 4), teacher[2]]
    with pytest.raises(ValueError, match=r"stage 2 .*\(2, 8, 4, 4, 4\).*\(2, 6, 4, 4, 4\).*cross_arch"):
        FeatureKDLoss()(student, bad_teacher)
    with pytest.raises(ValueError, match=r"student gives 3 feature maps and the teacher 2.*stage_indices=\(0, 1\)"):
        FeatureKDLoss()(student, teacher[:2])
    with pytest.raises(ValueError, match="every index must be < 3"):
        FeatureKDLoss(stage_indices=(0, 3))(student, teacher)
    with pytest.raises(ValueError, match="distinct"):
        FeatureKDLoss(stage_indices=(1, 1))
    with pytest.raises(ValueError, match="lambda_feat"):
        FeatureKDLoss(lambda_feat=-1.0)


def test_hdkd_objective_is_token_loss_plus_feature_loss():
    # HDKD eq. 8 with the paper's settings (alpha=0.5, T=1, lambda=10, beta=1) are the two losses' defaults.
    cls = torch.tensor([[1.0, -1.0], [0.2, 0.4]])
    dist = torch.tensor([[0.5, 0.0], [-1.0, 1.0]])
    teacher_logits = torch.tensor([[2.0, -2.0], [0.0, 1.0]])
    target = torch.tensor([0, 1])
    logit_total, logit_parts = TokenDistillationLoss()((cls, dist), teacher_logits, target)
    feature_total, feature_parts = FeatureKDLoss()(as_tensors(STUDENT), as_tensors(TEACHER))

    def softmax(z):
        e = np.exp(np.asarray(z, dtype=np.float64))
        return e / e.sum(axis=1, keepdims=True)

    p_cls, p_dist, p_t = softmax(cls), softmax(dist), softmax(teacher_logits)
    l_cls = 0.5 * np.mean(-np.log(p_cls[[0, 1], [0, 1]])) + 0.5 * np.mean((p_t * np.log(p_t / p_dist)).sum(axis=1))
    l_feat = sum(j * hand_mse(s, t) for j, (s, t) in enumerate(zip(STUDENT, TEACHER), 1))
    assert (logit_total + feature_total).item() == pytest.approx(l_cls + 10 * l_feat, rel=1e-5)
    assert not set(logit_parts) & set(feature_parts)  # merged component names do not collide


def test_normalized_feature_loss_is_scale_free_bounded_and_matches_hand_computation():
    """``normalize=True``: each sample's map is standardised over all its elements before the stage MSE."""

    def standardised(a: np.ndarray) -> np.ndarray:
        flat = a.reshape(a.shape[0], -1).astype(np.float64)
        mean, var = flat.mean(1, keepdims=True), flat.var(1, keepdims=True)
        return ((flat - mean) / np.sqrt(var + 1e-5)).reshape(a.shape)

    loss = FeatureKDLoss(lambda_feat=2.0, beta=1.0, normalize=True)
    total, components = loss(as_tensors(STUDENT), as_tensors(TEACHER))
    for j, (s, t) in enumerate(zip(STUDENT, TEACHER), start=1):
        expected = 2.0 * j * hand_mse(standardised(s), standardised(t))
        assert components[f"feat_{j}"].item() == pytest.approx(expected, rel=1e-4)

    # teacher activations 100x larger (a deep 3D teacher stage) leave the term unchanged: the raw MSE grows 10^4x
    scaled = [100.0 * t + 3.0 for t in TEACHER]
    assert loss(as_tensors(STUDENT), as_tensors(scaled))[0].item() == pytest.approx(total.item(), rel=1e-4)
    raw = FeatureKDLoss(lambda_feat=2.0, beta=1.0)
    assert raw(as_tensors(STUDENT), as_tensors(scaled))[0].item() > 1000 * total.item()
    # each standardised stage MSE is at most 4 (two unit-variance maps), so the total is bounded by the weights
    assert total.item() <= 4.0 * sum(loss.stage_weight(i) for i in range(len(SHAPES)))
