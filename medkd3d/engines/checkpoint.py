"""Strict teacher checkpoint loading: a teacher with missing or unexpected weights is an error, not silence."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .taps import unwrap_model

__all__ = ["load_teacher_checkpoint"]

logger = logging.getLogger(__name__)

#: Keys under which MONAI ``CheckpointSaver`` dicts and common training scripts store the network's weights.
STATE_DICT_KEYS = ("network", "model", "state_dict", "net", "teacher")

_MAX_LISTED = 10


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def _select_state_dict(checkpoint: object, path: Path, key: str | None) -> dict[str, torch.Tensor]:
    if key is not None:
        if not isinstance(checkpoint, Mapping) or key not in checkpoint:
            found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise KeyError(f"Teacher checkpoint {path} has no entry {key!r} (found: {found}).")
        checkpoint = checkpoint[key]
    elif not _is_state_dict(checkpoint) and isinstance(checkpoint, Mapping):
        candidates = [k for k in STATE_DICT_KEYS if _is_state_dict(checkpoint.get(k))]
        candidates = candidates or [k for k, v in checkpoint.items() if _is_state_dict(v)]
        if len(candidates) != 1:
            raise ValueError(
                f"Cannot tell which entry of teacher checkpoint {path} holds the network weights: entries "
                f"{sorted(checkpoint)}, state-dict-like {candidates}. Pass key=... (e.g. key='network')."
            )
        checkpoint = checkpoint[candidates[0]]
    if not _is_state_dict(checkpoint):
        raise ValueError(
            f"Teacher checkpoint {path} does not hold a state dict of tensors (got {type(checkpoint).__name__}); "
            "save it with torch.save(model.state_dict(), path) or MONAI's CheckpointSaver."
        )
    return dict(checkpoint)


def load_teacher_checkpoint(
    model: nn.Module, path: str | os.PathLike, key: str | None = None, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Load a teacher's weights strictly: every parameter and buffer must match by name and shape.

    Accepts a plain ``state_dict`` file and the dictionaries MONAI's ``CheckpointSaver`` writes (weights under
    ``"network"``, ``"model"``, ...; the only state-dict entry is used when no known key is present). A state
    dict saved from a ``DistributedDataParallel`` wrapper (keys prefixed ``"module."``) is accepted too.

    Args:
        model: the teacher network (wrappers such as DDP are looked through).
        path: checkpoint file.
        key: entry of a checkpoint dictionary holding the weights; guessed when ``None``.
        map_location: passed to ``torch.load``.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        KeyError, ValueError: if the file holds no recognisable state dict.
        RuntimeError: naming the file and the missing, unexpected and shape-mismatched keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Teacher checkpoint {path} does not exist; train the teacher first or fix the path.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"Cannot read teacher checkpoint {path}: {e}") from e
    state_dict = _select_state_dict(checkpoint, path, key)

    inner = unwrap_model(model)
    expected = inner.state_dict()
    if all(k.startswith("module.") for k in state_dict) and not any(k.startswith("module.") for k in expected):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        problems = [
            f"{label} keys: {_listed(names)}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched))
            if names
        ]
        raise RuntimeError(
            f"Teacher checkpoint {path} does not match {type(inner).__name__}: {'; '.join(problems)}. "
            "Build the teacher with the same architecture and arguments it was trained with."
        )
    inner.load_state_dict(state_dict, strict=True)
    logger.info("Loaded teacher weights of %s from %s.", type(inner).__name__, path)
    return model
