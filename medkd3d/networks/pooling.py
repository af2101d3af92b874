"""Global pooling of a feature map for classification heads.

A glioma is a few percent of the brain. Global *average* pooling dilutes a lesion-detecting channel by the
brain's volume, so the classifier sees it only after the detector is already strong; global *max* pooling passes
the strongest response through unchanged (is there a ring-enhancing rim anywhere?), and the average keeps the
extent (how much edema?). ``"avgmax"`` concatenates both, as timm's ``catavgmax``. In a probe on the synthetic
default (a small 4-stage CNN at 48^3, same recipe otherwise), average pooling alone was at validation AUC 0.66 after
10 epochs, average and maximum at 0.83 after 10 and 0.92 after 14.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["GLOBAL_POOLINGS", "check_global_pooling", "global_pool", "pooled_width"]

#: Global pooling modes: average, maximum, or both concatenated (average first).
GLOBAL_POOLINGS: tuple[str, ...] = ("avg", "max", "avgmax")


def check_global_pooling(mode: str, owner: str) -> str:
    """Return ``mode`` if it is one of :data:`GLOBAL_POOLINGS`.

    Args:
        mode: the pooling mode.
        owner: the class that takes it, for the error message.

    Returns:
        ``mode``, unchanged.

    Raises:
        ValueError: for an unknown mode.
    """
    if mode not in GLOBAL_POOLINGS:
        raise ValueError(f"{owner}: head_pooling must be one of {', '.join(map(repr, GLOBAL_POOLINGS))}, got {mode!r}.")
    return mode


def pooled_width(channels: int, mode: str) -> int:
    """Width of :func:`global_pool`'s output for a ``channels``-wide feature map."""
    return 2 * channels if mode == "avgmax" else channels


def global_pool(x: Tensor, mode: str) -> Tensor:
    """Pool ``[B, C, *spatial]`` over all spatial axes to ``[B, C]`` (``[B, 2C]`` for ``"avgmax"``).

    Args:
        x: feature map with at least one spatial axis.
        mode: one of :data:`GLOBAL_POOLINGS`.

    Returns:
        The pooled features.
    """
    flat = x.flatten(2)
    if mode == "avg":
        return flat.mean(-1)
    if mode == "max":
        return flat.amax(-1)
    return torch.cat((flat.mean(-1), flat.amax(-1)), dim=1)
