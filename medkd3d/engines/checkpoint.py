"""Strict teacher checkpoint loading: a teacher with missing or unexpected weights is an error, not silence.

:func:`load_teacher_checkpoint` is :func:`medkd3d.bundles.load_weights`, the one strict loader of medkd3d (bundle
exports, explanations and the student bundles' teachers load through it too), under the name the engines'
users know: load any teacher network - ours or a torchvision / MONAI / timm one - before handing it to
:class:`medkd3d.engines.DistillationTrainer`.
"""

from __future__ import annotations

from medkd3d.bundles import load_weights as load_teacher_checkpoint

__all__ = ["load_teacher_checkpoint"]
