"""Direct feature distillation of HDKD (eq. 7-8) for teacher/student pairs with shared stage shapes.

HDKD's teacher and student share the hierarchy of their convolutional stages, so stage features are compared
as they are, without projectors::

    L_feat = lambda * sum_j j^beta * MSE(f_teacher_j, f_student_j)

where ``MSE`` is ``1 / (C_j H_j W_j [D_j]) * ||f_t - f_s||^2`` averaged over the batch and ``j`` is the 1-based
stage number, so later (more semantic) stages weigh more. HDKD uses ``lambda=10`` and ``beta=1``.

Raw activations of two networks differ in scale by orders of magnitude (a 3D teacher's deep stage easily
reaches a mean square of 10-100), so the raw MSE can dwarf the classification term and make training explode.
``normalize=True`` first standardises each sample's map over all of its elements (layer normalisation without
affine parameters), which bounds every stage term by 4 (``MSE <= 2 + 2``) whatever the networks; the bundles use
it.

The full HDKD objective ``l_cls + lambda * l_feat`` (eq. 8) is the sum of two orthogonal losses, which the
``DistillationTrainer`` adds (``total = logit_total + feature_total``, components merged)::

    logit_loss = TokenDistillationLoss(alpha=0.5, temperature=1.0, distillation="soft")   # l_cls
    feature_loss = FeatureKDLoss(lambda_feat=10.0, beta=1.0)                             # lambda * l_feat

For features whose shapes differ (another architecture), use the projector losses of
``medkd3d.losses.cross_arch`` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .kd import check_non_negative, sum_components

__all__ = ["FeatureKDLoss", "standardize_per_sample"]


def standardize_per_sample(features: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean, unit variance of each sample's features over all non-batch dimensions (affine-free layer norm).

    Args:
        features: ``[B, ...]`` feature map.
        eps: added to the variance, so a constant map stays finite (it becomes all zeros).

    Returns:
        The standardised map, same shape.
    """
    return F.layer_norm(features, features.shape[1:], eps=eps)


class FeatureKDLoss(nn.Module):
    """HDKD feature distillation: ``lambda * sum_j j^beta * MSE(f_t_j, f_s_j)`` over the selected stages.

    ``MSE`` is the mean over every element (batch, channels, space), i.e. the batch mean of HDKD's
    ``||f_t - f_s||^2 / (C H W)``; it is computed in float32 and the teacher features are detached.

    Components: ``"feat_<j>"`` = ``lambda * j^beta * MSE_j`` per stage number ``j``; they sum to the total.

    Args:
        lambda_feat: overall weight ``lambda >= 0`` of the feature term (HDKD: 10).
        beta: exponent of the stage weights ``j^beta`` (HDKD: 1; 0 weighs all stages equally).
        stage_indices: 0-based positions in the feature lists to distill; ``None`` distills every position
            (then both lists must have the same length). Stage ``i`` has number ``j = i + 1``, so the weights
            follow the network's stage numbering even when only later stages are selected. Use it when the
            lists differ in length, e.g. ``(0, 1, 2)`` for HDKD's three shared stages of a 4-stage student
            and a 3-stage teacher.

    Raises:
        ValueError: for a negative ``lambda_feat`` or ``beta``, or empty/negative/duplicate ``stage_indices``.
    """

    def __init__(
        self,
        lambda_feat: float = 10.0,
        beta: float = 1.0,
        stage_indices: Sequence[int] | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.lambda_feat = check_non_negative(lambda_feat, "lambda_feat", owner)
        self.beta = check_non_negative(beta, "beta", owner)
        if stage_indices is not None:
            stage_indices = tuple(int(i) for i in stage_indices)
            if not stage_indices or min(stage_indices) < 0 or len(set(stage_indices)) != len(stage_indices):
                raise ValueError(
                    f"{owner}: stage_indices={stage_indices} must be distinct 0-based positions in the feature "
                    "lists (e.g. (0, 1, 2)); pass None to use every stage."
                )
        self.stage_indices = stage_indices
        self.normalize = bool(normalize)

    def extra_repr(self) -> str:
        return (
            f"lambda_feat={self.lambda_feat}, beta={self.beta}, stage_indices={self.stage_indices}, "
            f"normalize={self.normalize}"
        )

    def stage_weight(self, index: int) -> float:
        """Weight ``lambda * j^beta`` of the stage at 0-based ``index`` (``j = index + 1``)."""
        return self.lambda_feat * (index + 1) ** self.beta

    def forward(
        self, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor], **batch_kwargs: object
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            student_features: stage features of the student (``forward_features`` or feature taps).
            teacher_features: stage features of the teacher, same order; detached here.
            batch_kwargs: accepted for the feature-loss contract and unused.

        Returns:
            ``(total, components)``.

        Raises:
            ValueError: when the lists are too short or differ in length without ``stage_indices``, or when a
                stage's student and teacher features differ in shape (the message names stage and shapes).
        """
        owner = type(self).__name__
        n_student, n_teacher = len(student_features), len(teacher_features)
        if self.stage_indices is None:
            if n_student != n_teacher or n_student == 0:
                raise ValueError(
                    f"{owner}: the student gives {n_student} feature maps and the teacher {n_teacher}; with "
                    "stage_indices=None they must be equally many (and at least one). Pass stage_indices to pick "
                    f"the shared stages, e.g. stage_indices={tuple(range(min(n_student, n_teacher)))}."
                )
            indices: Sequence[int] = range(n_student)
        else:
            indices = self.stage_indices
            if max(indices) >= min(n_student, n_teacher):
                raise ValueError(
                    f"{owner}: stage_indices={self.stage_indices} but the student gives {n_student} feature maps "
                    f"and the teacher {n_teacher}; every index must be < {min(n_student, n_teacher)}."
                )
        components: dict[str, Tensor] = {}
        for i in indices:
            student, teacher = student_features[i], teacher_features[i]
            if student.shape != teacher.shape:
                raise ValueError(
                    f"{owner}: stage {i + 1} (index {i}) student feature has shape {tuple(student.shape)} but the "
                    f"teacher feature has shape {tuple(teacher.shape)}; direct (HDKD) feature KD needs identical "
                    "shapes. Pick stages that share their shape with stage_indices, or use a projector loss from "
                    "medkd3d.losses.cross_arch for architectures whose features differ."
                )
            student, teacher = student.float(), teacher.detach().float()
            if self.normalize:
                student, teacher = standardize_per_sample(student), standardize_per_sample(teacher)
            mse = F.mse_loss(student, teacher)
            components[f"feat_{i + 1}"] = self.stage_weight(i) * mse
        return sum_components(components), components
