"""Cross-architecture knowledge distillation in 3D (Liu et al., ACCV 2022, arXiv:2207.05273; seed 002).

For teacher/student pairs whose features do not line up - a ViT or VGG-ViT hybrid teacher and a CNN student -
the student's stage features are aligned with the teacher's in two projected spaces and, optionally, in
distribution::

    L = pca_weight * mean_s L_pca(s) + gl_weight * mean_s L_gl(s) + adv_weight * mean_s L_adv(s)

over the distilled stages ``s``:

- ``L_pca``: partially-cross-attention projector, the student's attention over a small common 3D token grid
  matches the teacher's (row-wise KL) - see :class:`~medkd3d.losses.projectors.PartiallyCrossAttentionProjector`.
- ``L_gl = MSE(GL(F_s), resize(F_t))``: the group-wise linear projector maps the student map to the teacher's
  channels at the student's grid; the teacher map is resized to that grid (averaged when smaller, trilinearly
  interpolated otherwise) - see :class:`~medkd3d.losses.projectors.GroupWiseLinearProjector`.
- ``L_adv`` (``multi_view=True``): multi-view robust training, see :class:`AdversarialFeatureLoss`.

The projectors and discriminators are submodules: pass ``loss.parameters()`` to the optimizer together with the
student's (the ``DistillationTrainer`` does). Only the modules of enabled terms are built, so no parameter is
left without a gradient (which DDP would reject).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .feature import standardize_per_sample
from .kd import check_fraction, check_non_negative, sum_components
from .projectors import (
    FeatureDiscriminator,
    GroupWiseLinearProjector,
    PartiallyCrossAttentionProjector,
    as_feature_volume,
    gradient_reversal,
    random_feature_views,
    resize_spatial,
)

__all__ = ["AdversarialFeatureLoss", "CrossArchitectureKDLoss"]


class AdversarialFeatureLoss(nn.Module):
    """Multi-view adversarial feature matching with a gradient-reversal layer (one optimizer step).

    A :class:`~medkd3d.losses.projectors.FeatureDiscriminator` ``D`` tells teacher maps (label 1) from projected
    student maps (label 0) over ``num_views`` random feature-space views (a random box crop of at least
    ``min_crop_fraction`` per side plus random flips, the same for teacher and student within a view)::

        L_adv = 1 / (2 V) * sum_v [ BCE(D(view_v(F_t)), 1) + BCE(D(R(view_v(GL(F_s)))), 0) ]

    ``R`` is a gradient-reversal layer: identity forward, gradient times ``-grl_scale`` backward. Minimising
    ``L_adv`` with one optimizer over all parameters therefore trains ``D`` to *lower* ``L_adv`` (tell the two
    apart) while the student and its projector receive the reversed gradient and *raise* it (fool ``D``) - the
    GAN minimax in a single backward pass, so the trainer needs no second optimizer or alternating steps. The
    reported value is the discriminator's loss (``log 2 ~ 0.69`` when ``D`` cannot tell the two apart). The views
    complement the augmented input views the trainer already feeds: each batch is seen by ``D`` under several
    crops and flips, which keeps ``D`` from keying on position and makes the matching robust.

    Args:
        channels: channels of the compared maps (the teacher's).
        num_views: random views per call (>= 1).
        min_crop_fraction: smallest crop side as a fraction of the map side; 1.0 keeps the full map.
        disc_grid: grid the discriminator pools each view to.
        disc_hidden: hidden width of the discriminator.
        grl_scale: magnitude of the reversed gradient reaching the student.
    """

    def __init__(
        self,
        channels: int,
        num_views: int = 2,
        min_crop_fraction: float = 0.75,
        disc_grid: int | Sequence[int] = 2,
        disc_hidden: int = 64,
        grl_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if num_views < 1:
            raise ValueError(f"AdversarialFeatureLoss: num_views must be >= 1, got {num_views}.")
        self.num_views = num_views
        self.min_crop_fraction = check_fraction(min_crop_fraction, "min_crop_fraction", type(self).__name__)
        self.grl_scale = grl_scale
        self.discriminator = FeatureDiscriminator(channels, disc_grid, disc_hidden)

    def forward(self, projected_student: Tensor, teacher: Tensor) -> Tensor:
        """Compute ``L_adv`` for maps ``[B, C, X, Y, Z]`` on the same grid (teacher detached here)."""
        views = random_feature_views((projected_student, teacher.detach()), self.num_views, self.min_crop_fraction)
        terms = []
        for student_view, teacher_view in views:
            real = self.discriminator(teacher_view).float()
            fake = self.discriminator(gradient_reversal(student_view, self.grl_scale)).float()
            terms.append(F.binary_cross_entropy_with_logits(real, torch.ones_like(real)))
            terms.append(F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        return torch.stack(terms).mean()


def _per_stage(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    values = (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)
    if not values or min(values) < 1:
        raise ValueError(f"CrossArchitectureKDLoss: {name} must be a positive int or a non-empty list of them.")
    return values


class CrossArchitectureKDLoss(nn.Module):
    """Cross-architecture feature distillation: PCA + GL projectors and optional multi-view adversarial training.

    ``L = pca_weight * L_pca + gl_weight * L_gl + adv_weight * L_adv``, each term averaged over the stages (see
    the module docstring for the formulas). Components (weighted, summing to the total): ``"pca"``, ``"gl"``
    and, with ``multi_view=True``, ``"adv"``; a term with weight 0 is neither built nor reported.

    A stage pairs student feature ``student_indices[s]`` with teacher feature ``teacher_indices[s]``. Student
    features are maps ``[B, C_s, X, Y, Z]``; teacher features are maps ``[B, C_t, X', Y', Z']`` or ViT tokens
    ``[B, N, C_t]`` (``teacher_prefix_tokens`` leading class tokens are dropped, the rest reshaped to
    ``teacher_grids[s]`` or to a cube). The partial-cross replacement of the PCA projector only happens in
    training mode (``loss.train()``).

    Args:
        student_channels: ``C_s`` per stage (an int for one stage).
        teacher_channels: ``C_t`` per stage, same length.
        pca_weight: weight of the PCA term (0 disables it).
        gl_weight: weight of the GL term (0 disables it; the GL projector is still built when ``multi_view``).
        multi_view: add the adversarial multi-view robust-training term.
        adv_weight: weight of the adversarial term.
        student_indices: positions in the student feature list, one per stage; default ``0 .. S-1``.
        teacher_indices: positions in the teacher feature list, one per stage; default ``0 .. S-1``.
        gl_groups: channel groups of the GL projectors (must divide every ``C_s`` and ``C_t``).
        pca_grid: common token grid of the attention maps (int or ``(X, Y, Z)``).
        pca_heads: attention heads (must divide every ``C_t``).
        pca_kernel_size: kernel of the Q/K/V convolution, 1 or 3.
        cross_prob: probability ``p`` of replacing each of the student's Q, K, V by the teacher's.
        value_weight: weight of the attention-output MSE inside ``L_pca``.
        teacher_grids: token grid ``(X, Y, Z)`` per stage for token-shaped teacher features (``None``: cubes).
        teacher_prefix_tokens: leading non-spatial tokens of token-shaped teacher features (1 for a class token).
        num_views, min_crop_fraction, disc_grid, disc_hidden, grl_scale: see :class:`AdversarialFeatureLoss`.
        normalize_teacher: standardise each sample's teacher map (zero mean, unit variance,
            :func:`~medkd3d.losses.feature.standardize_per_sample`) before it is a target, so the terms do not
            scale with the teacher's activations (a deep 3D teacher stage reaches a mean square of 10-100, which
            would swamp the classification loss); the bundles use it.

    Raises:
        ValueError: for mismatched per-stage lists or invalid weights.

    Example::

        loss = CrossArchitectureKDLoss(student_channels=[40, 320], teacher_channels=[256, 768],
                                       student_indices=[2, 4], teacher_indices=[3, 4], multi_view=True)
        optimizer = torch.optim.AdamW([*student.parameters(), *loss.parameters()])
        total, components = loss(student.forward_features(x), teacher_features)
    """

    def __init__(
        self,
        student_channels: int | Sequence[int],
        teacher_channels: int | Sequence[int],
        pca_weight: float = 1.0,
        gl_weight: float = 1.0,
        multi_view: bool = False,
        adv_weight: float = 0.1,
        student_indices: Sequence[int] | None = None,
        teacher_indices: Sequence[int] | None = None,
        gl_groups: int = 4,
        pca_grid: int | Sequence[int] = 4,
        pca_heads: int = 1,
        pca_kernel_size: int = 1,
        cross_prob: float = 0.5,
        value_weight: float = 1.0,
        teacher_grids: Sequence[Sequence[int] | None] | None = None,
        teacher_prefix_tokens: int = 0,
        num_views: int = 2,
        min_crop_fraction: float = 0.75,
        disc_grid: int | Sequence[int] = 2,
        disc_hidden: int = 64,
        grl_scale: float = 1.0,
        normalize_teacher: bool = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.normalize_teacher = bool(normalize_teacher)
        self.student_channels = _per_stage(student_channels, "student_channels")
        self.teacher_channels = _per_stage(teacher_channels, "teacher_channels")
        num_stages = len(self.student_channels)
        self.student_indices = tuple(student_indices) if student_indices is not None else tuple(range(num_stages))
        self.teacher_indices = tuple(teacher_indices) if teacher_indices is not None else tuple(range(num_stages))
        self.teacher_grids = tuple(teacher_grids) if teacher_grids is not None else (None,) * num_stages
        lengths = {
            "teacher_channels": len(self.teacher_channels),
            "student_indices": len(self.student_indices),
            "teacher_indices": len(self.teacher_indices),
            "teacher_grids": len(self.teacher_grids),
        }
        if any(n != num_stages for n in lengths.values()):
            raise ValueError(
                f"{owner}: student_channels lists {num_stages} stages but {lengths}; give one entry per "
                "distilled stage in every per-stage argument."
            )
        self.pca_weight = check_non_negative(pca_weight, "pca_weight", owner)
        self.gl_weight = check_non_negative(gl_weight, "gl_weight", owner)
        self.adv_weight = check_non_negative(adv_weight, "adv_weight", owner) if multi_view else 0.0
        if not (self.pca_weight or self.gl_weight or self.adv_weight):
            raise ValueError(f"{owner}: every term has weight 0; enable pca_weight, gl_weight or multi_view.")
        self.teacher_prefix_tokens = teacher_prefix_tokens
        stages = list(zip(self.student_channels, self.teacher_channels))
        self.pca = (
            nn.ModuleList(
                PartiallyCrossAttentionProjector(
                    c_s, c_t, pca_heads, pca_grid, pca_kernel_size, cross_prob, value_weight
                )
                for c_s, c_t in stages
            )
            if self.pca_weight
            else None
        )
        self.gl = (
            nn.ModuleList(GroupWiseLinearProjector(c_s, c_t, gl_groups) for c_s, c_t in stages)
            if self.gl_weight or self.adv_weight
            else None
        )
        self.adv = (
            nn.ModuleList(
                AdversarialFeatureLoss(c_t, num_views, min_crop_fraction, disc_grid, disc_hidden, grl_scale)
                for c_t in self.teacher_channels
            )
            if self.adv_weight
            else None
        )

    def extra_repr(self) -> str:
        return (
            f"pca_weight={self.pca_weight}, gl_weight={self.gl_weight}, adv_weight={self.adv_weight}, "
            f"student_indices={self.student_indices}, teacher_indices={self.teacher_indices}"
        )

    def _stage_features(
        self, stage: int, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor]:
        owner = type(self).__name__
        i_s, i_t = self.student_indices[stage], self.teacher_indices[stage]
        if i_s >= len(student_features) or i_t >= len(teacher_features):
            raise ValueError(
                f"{owner}: stage {stage} pairs student feature {i_s} with teacher feature {i_t}, but the student "
                f"gives {len(student_features)} features and the teacher {len(teacher_features)}; fix "
                "student_indices/teacher_indices (0-based positions in the feature lists)."
            )
        student = as_feature_volume(student_features[i_s], name=f"{owner} stage {stage} student feature {i_s}")
        teacher = as_feature_volume(
            teacher_features[i_t].detach(),
            self.teacher_grids[stage],
            self.teacher_prefix_tokens,
            name=f"{owner} stage {stage} teacher feature {i_t}",
        )
        for who, x, expected, arg in (
            ("student", student, self.student_channels[stage], "student_channels"),
            ("teacher", teacher, self.teacher_channels[stage], "teacher_channels"),
        ):
            if x.shape[1] != expected:
                raise ValueError(
                    f"{owner}: stage {stage} {who} feature has {x.shape[1]} channels (shape {tuple(x.shape)}) but "
                    f"{arg}[{stage}] is {expected}; use the models' feature_info 'num_chs' of the tapped stages."
                )
        if self.normalize_teacher:
            teacher = standardize_per_sample(teacher.float())
        if student.shape[0] != teacher.shape[0]:
            raise ValueError(
                f"{owner}: stage {stage} student batch {student.shape[0]} differs from teacher batch {teacher.shape[0]}."
            )
        return student, teacher

    def forward(
        self,
        student_features: Sequence[Tensor],
        teacher_features: Sequence[Tensor],
        teacher_attentions: Sequence[Tensor | None] | None = None,
        **batch_kwargs: object,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            student_features: the student's feature list (``forward_features`` or taps).
            teacher_features: the teacher's feature list (detached here).
            teacher_attentions: optional teacher attention per stage, ``[B, H, N, N]`` (or ``[B, N, N]``) over
                the stage's teacher token grid; tokens beyond the grid's count are taken as leading class tokens
                and dropped. ``None`` entries fall back to the self-attention of the teacher features.
            batch_kwargs: other batch entries the trainer forwards to feature losses (unused).

        Returns:
            ``(total, components)``.

        Raises:
            ValueError: for missing stages, wrong channel counts or token counts (messages name the stage).
        """
        num_stages = len(self.student_channels)
        sums: dict[str, Tensor] = {}

        def add(name: str, value: Tensor) -> None:
            sums[name] = sums[name] + value if name in sums else value

        for stage in range(num_stages):
            student, teacher = self._stage_features(stage, student_features, teacher_features)
            if self.pca is not None:
                attention = teacher_attentions[stage] if teacher_attentions is not None else None
                if attention is not None:
                    # tokens beyond the teacher map's grid are prefix (class/distillation) tokens
                    prefix = max(0, attention.shape[-1] - math.prod(teacher.shape[2:]))
                    attention = self.pca[stage].pool_attention(attention, teacher.shape[2:], prefix)
                add("pca", self.pca[stage](student, teacher, attention))
            if self.gl is not None:
                projected = self.gl[stage](student)
                target = resize_spatial(teacher, projected.shape[2:])
                if self.gl_weight:
                    add("gl", F.mse_loss(projected.float(), target.float()))
                if self.adv is not None:
                    add("adv", self.adv[stage](projected, target))
        weights = {"pca": self.pca_weight, "gl": self.gl_weight, "adv": self.adv_weight}
        components = {name: weights[name] * value / num_stages for name, value in sums.items()}
        return sum_components(components), components
