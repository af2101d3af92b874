"""Batches for the networks as plain tensors: MONAI's metadata stays with the data, not in the forward pass.

MONAI's transforms return ``MetaTensor``s, and a network fed one runs every operation through
``MetaTensor.__torch_function__``, which also undid the channels-last speed-up of the 3D networks
(:func:`medkd3d.networks.place_network`): a training step of the ``quick`` VGG-ViT teacher (batch 8, 32^3, one CPU
thread) took 0.82x the channels-first time from a plain tensor and 1.01x from a ``MetaTensor``
(``benchmarks/results/layout_cpu.md``). No network here reads metadata, so the
engines give them plain tensors (MONAI's own ``SupervisedTrainer`` does the same for ``torch.compile``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines.utils import default_prepare_batch

__all__ = ["plain_tensor", "prepare_plain_batch"]


def plain_tensor(value: Any) -> Any:
    """``value`` as a ``torch.Tensor`` without metadata when it is a ``MetaTensor`` (a view, no copy), else itself."""
    return value.as_tensor() if isinstance(value, MetaTensor) else value


def prepare_plain_batch(
    batchdata: Mapping[str, Any] | torch.Tensor,
    device: str | torch.device | None = None,
    non_blocking: bool = False,
    **kwargs: Any,
) -> tuple[Any, Any]:
    """MONAI's ``default_prepare_batch`` with the image and label returned as plain tensors.

    Pass it as ``prepare_batch`` of a MONAI trainer or evaluator (the bundles do).

    Args:
        batchdata: the data loader's batch.
        device: where to move the tensors.
        non_blocking: asynchronous host-to-device copies.
        kwargs: more arguments of ``torch.Tensor.to``.

    Returns:
        ``(image, label)``; ``label`` is ``None`` for a batch without one.
    """
    image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
    return plain_tensor(image), plain_tensor(label)
