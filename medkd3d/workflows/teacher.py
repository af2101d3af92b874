"""Teacher loading for the student bundles: a missing checkpoint stops the run with the command that makes it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from medkd3d.engines.checkpoint import load_teacher_checkpoint
from medkd3d.export.bundle import check_checkpoint_config, network_arguments
from medkd3d.workflows.bundle import bundle_command

__all__ = ["load_teacher", "require_checkpoint", "require_teacher_checkpoint"]


def require_checkpoint(checkpoint: str | os.PathLike, bundle_root: str | os.PathLike, role: str = "model") -> str:
    """Check that a bundle's trained checkpoint exists before evaluation, inference or export do any work.

    Args:
        checkpoint: the checkpoint path (``models/model.pt`` of the bundle by default).
        bundle_root: the bundle that trains it, named in the message with its training command.
        role: what the checkpoint is, for the message (``"model"``, ``"teacher"``).

    Returns:
        The checkpoint path as a string.

    Raises:
        FileNotFoundError: if the checkpoint does not exist; the message gives the command that trains it.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(
            f"{role.capitalize()} checkpoint {path} not found: train the {role} first:\n"
            f"    {bundle_command(bundle_root)}\n"
            f"or point to an existing checkpoint (--{'teacher_ckpt' if role == 'teacher' else 'ckpt_path'} "
            "/path/to/model.pt)."
        )
    return str(path)


def require_teacher_checkpoint(teacher_ckpt: str | os.PathLike, teacher_bundle_root: str | os.PathLike) -> str:
    """Check that the teacher checkpoint exists before a student bundle does any work.

    Args:
        teacher_ckpt: path of the teacher checkpoint (``models/model.pt`` of the teacher bundle by default).
        teacher_bundle_root: the teacher bundle, named in the message so the user knows what to train.

    Returns:
        The checkpoint path as a string.

    Raises:
        FileNotFoundError: if the checkpoint does not exist; the message gives the command that trains the
            teacher and how to point the student at another checkpoint.
    """
    return require_checkpoint(teacher_ckpt, teacher_bundle_root, role="teacher")


def load_teacher(
    network: nn.Module,
    teacher_ckpt: str | os.PathLike,
    teacher_bundle_root: str | os.PathLike,
    device: str | torch.device = "cpu",
    key: str | None = None,
    spatial_size: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
) -> nn.Module:
    """Load a trained teacher strictly and freeze it for distillation.

    Args:
        network: the teacher architecture, built exactly as the teacher bundle builds it.
        teacher_ckpt: checkpoint written by the teacher bundle (a state dict, as MONAI's ``CheckpointSaver`` writes
            it, possibly nested under ``key``).
        teacher_bundle_root: the teacher bundle (for the message when the checkpoint is missing).
        device: device of the returned teacher.
        key: key of the weights in a nested checkpoint; ``None`` accepts a bare state dict (what MONAI's
            ``CheckpointSaver`` writes for a single object) and guesses the usual keys otherwise.
        spatial_size: the student's ``spatial_size``, which the teacher must have been trained at; ``None``
            skips the check.
        class_names: the student's classes, which must be the teacher's; ``None`` skips the check.

    Returns:
        The teacher on ``device``, in eval mode, with ``requires_grad`` off.

    Raises:
        FileNotFoundError: if the checkpoint is missing (see :func:`require_teacher_checkpoint`).
        ValueError: if the checkpoint records (see :func:`medkd3d.export.bundle.check_checkpoint_config`) another
            ``spatial_size``, class names or network arguments than the student's config gives.
        RuntimeError: if the checkpoint does not fit the architecture (missing, unexpected or mis-shaped keys,
            checked by :func:`medkd3d.engines.checkpoint.load_teacher_checkpoint`); the message says to build the
            teacher with the teacher bundle's ``network_def``.
    """
    path = require_teacher_checkpoint(teacher_ckpt, teacher_bundle_root)
    # checked before the weights: "trained at 32^3, asked for 128^3" says more than a shape mismatch (or nothing,
    # for the networks whose weights do not depend on the input size)
    check_checkpoint_config(
        path,
        {"network_def": network_arguments(network), "spatial_size": spatial_size, "class_names": class_names},
    )
    try:
        load_teacher_checkpoint(network, path, key=key)
    except RuntimeError as err:
        raise RuntimeError(
            f"{err}\nThe student's teacher_def must match the network_def the teacher was trained with "
            f"({Path(teacher_bundle_root) / 'configs' / 'train.json'} plus the same overrides)."
        ) from err
    network = network.to(device).eval()
    network.requires_grad_(False)
    return network
