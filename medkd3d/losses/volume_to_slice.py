"""Volume-to-slice distillation: a 3D teacher that sees the whole volume teaches a 2.5D student that sees slices.

The 2.5D pipelines emit, next to the slice stack ``"image"``, the ``"slice_index"`` of the stack's centre (a
fraction in ``[0, 1]`` of the preprocessed volume's depth along the slicing axis) and, with
``keep_volume=True``, the ``"volume"`` it came from. The trainer feeds ``"volume"`` to the teacher and
``"image"`` to the student; two losses connect them:

- :class:`VolumeToSliceKDLoss` (logit level): the teacher's *volume* logits supervise the student's prediction
  with the seed KD formula (:class:`~medkd3d.losses.KDLoss`). For a multiple-instance student
  (:class:`~medkd3d.networks.efficientnet25d.MultiSliceEfficientNet25D`, the 2.5D bundle) that prediction is
  the subject logits the student outputs from its ``S`` stacks - the same output that is evaluated and
  deployed - so the volume teacher and the student are compared subject to subject. Because the teacher input is the
  deterministic preprocessed volume, its soft targets can be cached per subject even when slices are sampled
  at random.
- :class:`VolumeToSliceFeatureLoss` (feature level): the teacher's 3D stage map is depth-pooled around the
  student's slice position, brought to the student's channels and grid by a 1x1 adapter and a resize, and
  compared with the student's 2D stage map by MSE.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kd import KDLoss, check_non_negative, sum_components
from .projectors import as_feature_volume, resize_spatial

__all__ = ["VolumeToSliceFeatureLoss", "VolumeToSliceKDLoss", "depth_pooling_weights", "pool_teacher_slices"]


class VolumeToSliceKDLoss(KDLoss):
    """Logit KD from a 3D teacher's volume prediction to a 2.5D student's prediction.

    ``L = alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE(student, y)`` exactly as
    :class:`~medkd3d.losses.KDLoss` (same arguments and components ``"kd"``, ``"ce"``). Student logits may be:

    - ``[B, C]``: one prediction per subject. For a multiple-instance student, which pools its ``S`` stacks
      itself, these are its subject logits, so the volume logits supervise exactly what the student outputs
      per subject at inference (the 2.5D bundle). A single-stack student's ``[B, C]`` is a per-stack prediction.
    - ``[B, S, C]``: per-stack predictions; the volume logits ``[B, C]`` and labels ``[B]`` are repeated for
      each of the ``S`` stacks and the loss is averaged over all ``B * S`` stack predictions.

    Teacher and student must give the same batch ``B`` of subjects; a batch of ``B * S`` flattened stacks is
    refused with a message naming the shapes.
    """

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, target: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss; see :meth:`KDLoss.forward`. Per-slice student logits ``[B, S, C]`` are flattened."""
        if isinstance(student_logits, Tensor) and student_logits.ndim == 3:
            b, s, c = student_logits.shape
            student_logits = student_logits.reshape(b * s, c)
            if teacher_logits is not None:
                teacher_logits = teacher_logits.detach().repeat_interleave(s, dim=0)
            if target is not None:
                target = target.repeat_interleave(s, dim=0)
        return super().forward(student_logits, teacher_logits, target)


def depth_pooling_weights(slice_index: Tensor, depth: int, window: int = 0, align_corners: bool = False) -> Tensor:
    """Weights that average ``2 * window + 1`` depth slices of a feature map around each slice position.

    The slice centre ``f`` (fraction of the depth extent) maps to the continuous depth coordinate
    ``c = f * depth - 0.5`` (``align_corners=False``: fractions measure the extent, so the same ``f`` points at
    the same anatomy in feature maps of any stride) or ``c = f * (depth - 1)`` (``align_corners=True``). With
    linear interpolation ``h(j, p) = max(0, 1 - |j - p|)`` and positions clamped to ``[0, depth - 1]`` (border
    slices repeat), ``w_j = 1 / (2 window + 1) * sum_{o=-window..window} h(j, clamp(c + o))``; the weights
    are non-negative and sum to 1 over ``j``. A whole-number ``c`` with ``window=0`` picks exactly slice ``c``.

    Args:
        slice_index: fractions in ``[0, 1]``, any shape ``[...]``.
        depth: number of depth slices of the feature map.
        window: half-width ``w`` of the averaging window, in feature-map slices.
        align_corners: the fraction convention (see above).

    Returns:
        weights ``[..., depth]`` (float32).
    """
    index = slice_index.float()
    centre = index * (depth - 1) if align_corners else index * depth - 0.5
    offsets = torch.arange(-window, window + 1, device=index.device, dtype=torch.float32)
    positions = (centre.unsqueeze(-1) + offsets).clamp(0, depth - 1)  # [..., 2w+1]
    grid = torch.arange(depth, device=index.device, dtype=torch.float32)
    hat = (1 - (grid - positions.unsqueeze(-1)).abs()).clamp_min(0)  # [..., 2w+1, depth]
    return hat.mean(-2)


def pool_teacher_slices(
    teacher: Tensor, slice_index: Tensor, axis: int = -1, window: int = 0, align_corners: bool = False
) -> Tensor:
    """Depth-pool a 3D teacher map around the student's slice positions (differentiable in ``teacher``).

    Args:
        teacher: ``[B, C, X, Y, Z]`` map.
        slice_index: ``[B]`` or ``[B, S]`` fractions in ``[0, 1]``.
        axis: slicing axis among the spatial axes (0 = X, 1 = Y, 2 = Z; negative counts from the end).
        window, align_corners: see :func:`depth_pooling_weights`.

    Returns:
        ``[B, C, P, Q]`` or ``[B, S, C, P, Q]`` - the in-plane axes keep their order (Z-slices give ``(X, Y)``).
    """
    moved = teacher.movedim(2 + axis % 3, -1)
    weights = depth_pooling_weights(slice_index, moved.shape[-1], window, align_corners).to(moved.dtype)
    if weights.ndim == 2:
        return torch.einsum("bcpqd,bd->bcpq", moved, weights)
    return torch.einsum("bcpqd,bsd->bscpq", moved, weights)


class VolumeToSliceFeatureLoss(nn.Module):
    """Feature distillation from a 3D teacher's stage maps to a 2.5D student's 2D stage maps.

    Per stage ``s`` with teacher map ``F_t`` ``[B, C_t, X, Y, Z]`` (or ViT tokens) and student map ``F_s``
    ``[B, C_s, H, W]``::

        P_t = sum_j w_j(slice_index) * F_t[..., j]                         (depth pooling, see depth_pooling_weights)
        L_s = MSE(A(F_s), resize(P_t, (H, W)))   if adapter_side == "student"   (A: 1x1 conv C_s -> C_t)
        L_s = MSE(F_s, resize(A(P_t), (H, W)))   if adapter_side == "teacher"   (A: 1x1 conv C_t -> C_s)
        L = weight * mean_s L_s

    ``resize`` averages when shrinking and interpolates bilinearly otherwise. The default ``"student"`` side is
    the FitNets hint regression: the target stays the fixed teacher slice, so the loss cannot be lowered by
    shrinking both sides together. ``"teacher"`` maps the teacher slice into the student's space (the
    student's features must be a linear function of the teacher's); both sides are trainable then.

    Multi-slice students: with ``slice_index`` ``[B, S]``, a student map ``[B, S, C_s, H, W]`` (the
    ``forward_features`` of :class:`~medkd3d.networks.efficientnet25d.MultiSliceEfficientNet25D`, or
    ``[B * S, C_s, H, W]`` as a forward hook in its shared encoder sees it) is matched slice by slice, while a
    fused map ``[B, C_s, H, W]`` is matched with the mean of the ``S`` pooled teacher slices.

    Components: ``"v2s_feat"`` (the weighted total).

    Args:
        student_channels: ``C_s`` per stage (an int for one stage).
        teacher_channels: ``C_t`` per stage.
        weight: overall weight of the term.
        window: half-width (in teacher feature-map slices) of the depth pooling window.
        axis: the slicing axis among the teacher's spatial axes (0 = X, 1 = Y, 2 = Z; default -1 = Z); it must
            be the axis the 2.5D pipeline sliced along.
        align_corners: fraction convention of ``slice_index`` (see :func:`depth_pooling_weights`).
        adapter_side: ``"student"`` or ``"teacher"``, which side the 1x1 adapter projects.
        student_indices: positions in the student feature list, one per stage; default ``0 .. S-1``.
        teacher_indices: positions in the teacher feature list, one per stage; default ``0 .. S-1``.
        teacher_grids: token grid per stage for token-shaped teacher features (``None``: cubes).
        teacher_prefix_tokens: leading non-spatial tokens of token-shaped teacher features.

    Raises:
        ValueError: on an invalid configuration.
    """

    def __init__(
        self,
        student_channels: int | Sequence[int],
        teacher_channels: int | Sequence[int],
        weight: float = 1.0,
        window: int = 1,
        axis: int = -1,
        align_corners: bool = False,
        adapter_side: str = "student",
        student_indices: Sequence[int] | None = None,
        teacher_indices: Sequence[int] | None = None,
        teacher_grids: Sequence[Sequence[int] | None] | None = None,
        teacher_prefix_tokens: int = 0,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        student_channels = [student_channels] if isinstance(student_channels, int) else list(student_channels)
        teacher_channels = [teacher_channels] if isinstance(teacher_channels, int) else list(teacher_channels)
        n = len(student_channels)
        self.student_indices = tuple(student_indices) if student_indices is not None else tuple(range(n))
        self.teacher_indices = tuple(teacher_indices) if teacher_indices is not None else tuple(range(n))
        self.teacher_grids = tuple(teacher_grids) if teacher_grids is not None else (None,) * n
        if n == 0 or any(
            len(x) != n for x in (teacher_channels, self.student_indices, self.teacher_indices, self.teacher_grids)
        ):
            raise ValueError(
                f"{owner}: student_channels, teacher_channels, student_indices, teacher_indices and teacher_grids "
                "must give one entry per distilled stage (at least one)."
            )
        if adapter_side not in ("student", "teacher"):
            raise ValueError(f"{owner}: adapter_side must be 'student' or 'teacher', got {adapter_side!r}.")
        if window < 0 or axis not in (-3, -2, -1, 0, 1, 2):
            raise ValueError(
                f"{owner}: window={window} must be >= 0 and axis={axis} a spatial axis (0, 1, 2 or -3, -2, -1)."
            )
        self.weight = check_non_negative(weight, "weight", owner)
        self.window = int(window)
        self.axis = axis
        self.align_corners = align_corners
        self.adapter_side = adapter_side
        self.teacher_prefix_tokens = teacher_prefix_tokens
        self.student_channels, self.teacher_channels = tuple(student_channels), tuple(teacher_channels)
        pairs = zip(student_channels, teacher_channels)
        self.adapters = nn.ModuleList(
            nn.Conv2d(c_s, c_t, 1) if adapter_side == "student" else nn.Conv2d(c_t, c_s, 1) for c_s, c_t in pairs
        )

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight}, window={self.window}, axis={self.axis}, align_corners={self.align_corners}, "
            f"adapter_side={self.adapter_side!r}"
        )

    def _check_slice_index(self, slice_index: object, batch: int, device: torch.device) -> Tensor:
        owner = type(self).__name__
        if slice_index is None:
            raise ValueError(
                f"{owner}: slice_index is missing; the 2.5D pipeline emits it per sample - make the trainer "
                "forward the batch's 'slice_index' to the feature loss (slice_index=batch['slice_index'])."
            )
        index = torch.as_tensor(slice_index, dtype=torch.float32, device=device)
        if index.ndim not in (1, 2) or index.shape[0] != batch:
            raise ValueError(
                f"{owner}: slice_index has shape {tuple(index.shape)} but must be [batch] or [batch, slices] with "
                f"batch={batch}."
            )
        if not torch.isfinite(index).all() or index.min() < 0 or index.max() > 1:
            raise ValueError(
                f"{owner}: slice_index must hold fractions of the depth in [0, 1], got values in "
                f"[{index.min().item():.4g}, {index.max().item():.4g}]; pass the pipeline's 'slice_index', not a "
                "slice number."
            )
        return index

    def forward(
        self,
        student_features: Sequence[Tensor],
        teacher_features: Sequence[Tensor],
        slice_index: Tensor | None = None,
        **batch_kwargs: object,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            student_features: the 2.5D student's stage maps ``[B, C_s, H, W]`` (or ``[B, S, C_s, H, W]``).
            teacher_features: the 3D teacher's stage maps ``[B, C_t, X, Y, Z]`` or tokens (detached here).
            slice_index: ``[B]`` (or ``[B, S]``) slice centres as fractions in ``[0, 1]``, from the batch.
            batch_kwargs: other batch entries the trainer forwards (unused).

        Returns:
            ``(total, components)`` with the single component ``"v2s_feat"``.

        Raises:
            ValueError: for a missing or malformed ``slice_index``, missing stages or wrong channel counts.
        """
        owner = type(self).__name__
        terms = []
        for stage, (i_s, i_t) in enumerate(zip(self.student_indices, self.teacher_indices)):
            if i_s >= len(student_features) or i_t >= len(teacher_features):
                raise ValueError(
                    f"{owner}: stage {stage} pairs student feature {i_s} with teacher feature {i_t}, but the student "
                    f"gives {len(student_features)} features and the teacher {len(teacher_features)}."
                )
            student = student_features[i_s]
            teacher = as_feature_volume(
                teacher_features[i_t].detach(),
                self.teacher_grids[stage],
                self.teacher_prefix_tokens,
                name=f"{owner} stage {stage} teacher feature {i_t}",
            )
            index = self._check_slice_index(slice_index, teacher.shape[0], teacher.device)
            if student.ndim == 4 and index.ndim == 2 and index.shape[1] > 1 and student.shape[0] == index.numel():
                # a hook inside a multi-slice student's shared encoder sees the B * S stacks as one batch
                student = student.unflatten(0, tuple(index.shape))
            per_slice = student.ndim == 5
            if (
                student.ndim not in (4, 5)
                or student.shape[0] != index.shape[0]
                or (per_slice and (index.ndim != 2 or student.shape[1] != index.shape[1]))
            ):
                raise ValueError(
                    f"{owner}: stage {stage} student feature has shape {tuple(student.shape)} for a batch of "
                    f"{index.shape[0]} with slice_index {tuple(index.shape)}; expected a 2D map [B, C, H, W], or "
                    "[B, S, C, H, W] (or the B * S stacks [B * S, C, H, W] of a multi-slice encoder) with slice_index "
                    "[B, S]."
                )
            c_s, c_t = self.student_channels[stage], self.teacher_channels[stage]
            if student.shape[-3] != c_s or teacher.shape[1] != c_t:
                raise ValueError(
                    f"{owner}: stage {stage} has {student.shape[-3]} student / {teacher.shape[1]} teacher channels but "
                    f"student_channels[{stage}]={c_s}, teacher_channels[{stage}]={c_t}."
                )
            pooled = pool_teacher_slices(teacher, index, self.axis, self.window, self.align_corners)
            if index.ndim == 2 and not per_slice:
                pooled = pooled.mean(1)  # a fused multi-slice student is matched with the mean teacher slice
            student = student.flatten(0, 1) if per_slice else student
            pooled = pooled.flatten(0, 1) if per_slice else pooled
            size = student.shape[-2:]
            adapter = self.adapters[stage]
            if self.adapter_side == "student":
                prediction, target = adapter(student), resize_spatial(pooled, size)
            else:
                prediction, target = student, resize_spatial(adapter(pooled), size)
            terms.append(F.mse_loss(prediction.float(), target.float()))
        components = {"v2s_feat": self.weight * torch.stack(terms).mean()}
        return sum_components(components), components
