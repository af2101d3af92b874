"""A student bundle's teacher: built from the teacher bundle and its trained checkpoint, frozen for distillation.

A student's ``train.json`` names its teacher bundle (``teacher_bundle``, found next to the student's folder as
``teacher_bundle_root``) and checkpoint (``teacher_ckpt``), never a copy of the teacher's network: :func:`load_teacher`
builds the teacher from the teacher bundle's own ``train.json`` plus the configuration the checkpoint records
(:func:`medkd3d.bundles.build_bundle_network`), so a teacher trained under a profile or with other
``network_def#...`` overrides needs nothing repeated on its students.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medkd3d.bundles.io import (
    build_bundle_network,
    check_checkpoint_config,
    load_weights,
    network_arguments,
    require_checkpoint,
)
from medkd3d.networks import place_network

__all__ = ["load_teacher", "require_teacher_checkpoint"]

#: The teacher bundle's config its network is built from: the recipe its checkpoint was trained by.
TEACHER_CONFIG = "train.json"


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
    return str(require_checkpoint(teacher_ckpt, teacher_bundle_root, role="teacher"))


def _freeze(network: nn.Module, device: str | torch.device, channels_last: bool) -> nn.Module:
    network = place_network(network, device, channels_last).eval()
    network.requires_grad_(False)
    return network


def load_teacher(
    teacher_bundle_root: str | os.PathLike,
    teacher_ckpt: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    spatial_size: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    random_weights: bool = False,
    profiles: Sequence[str] = (),
    network: nn.Module | None = None,
    channels_last: bool = False,
) -> nn.Module:
    """Build a student's teacher as it was trained, load its weights strictly and freeze it.

    The teacher is the teacher bundle's ``network_def`` (its ``train.json``) with the configuration the checkpoint
    records applied over it (:func:`medkd3d.bundles.build_bundle_network`): width, depth and every other
    ``network_def#...`` value it was trained with, under whatever profile or overrides.

    Args:
        teacher_bundle_root: the teacher bundle.
        teacher_ckpt: checkpoint written by the teacher bundle; default its ``models/model.pt``.
        device: device of the returned teacher.
        spatial_size: the student's ``spatial_size``, which the teacher must have been trained at (checked against
            the record); ``None`` takes the teacher's.
        class_names: the student's classes, which must be the teacher's; ``None`` takes the teacher's.
        overrides: more config overrides of the teacher bundle, over the record (checked against it). Needed only
            for a checkpoint that records no configuration (an older medkd3d's) or with ``random_weights``.
        random_weights: build the teacher with random weights and read no checkpoint (tests, benchmarks of speed
            and memory).
        profiles: the teacher bundle's profiles to build it under (``["quick"]``), below the record: for random
            weights or a checkpoint that records no configuration.
        network: a teacher architecture built elsewhere (any ``nn.Module``); the checkpoint is then loaded into it
            as it is, checked against the record, and the teacher bundle's config is not read.
        channels_last: store a 3D teacher channels-last (:func:`medkd3d.networks.place_network`), faster on a CPU.

    Returns:
        The teacher on ``device``, in eval mode, with ``requires_grad`` off.

    Raises:
        FileNotFoundError: if the checkpoint or the teacher bundle is missing (the message gives the command that
            trains the teacher and the option that points at another checkpoint).
        ValueError: if the checkpoint records another ``spatial_size``, class names or network arguments than the
            student asks for.
        RuntimeError: if the checkpoint does not fit the architecture (missing, unexpected or mis-shaped keys).
    """
    requested: dict[str, Any] = {"spatial_size": spatial_size, "class_names": class_names}
    requested = {key: list(value) for key, value in requested.items() if value is not None}
    if network is not None:
        if random_weights:
            return _freeze(network, device, channels_last)
        path = require_teacher_checkpoint(
            teacher_ckpt or Path(teacher_bundle_root) / "models" / "model.pt", teacher_bundle_root
        )
        # checked before the weights: "trained at 32^3, asked for 128^3" says more than a shape mismatch (or
        # nothing, for the networks whose weights do not depend on the input size)
        check_checkpoint_config(path, {"network_def": network_arguments(network), **requested})
        return _freeze(load_weights(network, path), device, channels_last)
    try:
        built = build_bundle_network(
            teacher_bundle_root,
            teacher_ckpt,
            {**requested, **dict(overrides or {})},
            TEACHER_CONFIG,
            random_weights=random_weights,
            role="teacher",
            option="--teacher_ckpt",
            profiles=profiles,
        )
    except RuntimeError as err:
        raise RuntimeError(
            f"{err}\nThe teacher is built from {Path(teacher_bundle_root) / 'configs' / TEACHER_CONFIG} and the "
            "configuration its checkpoint records; a checkpoint that records none needs the profiles or overrides it "
            "was trained with: --teacher#profiles \"['quick']\" or --teacher#overrides \"{'network_def#<arg>': value}\"."
        ) from err
    return _freeze(built.network, device, channels_last)
