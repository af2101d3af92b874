"""Model size and cost: parameters, GFLOPs at an input shape, and eager latency.

Shapes here exclude the batch dimension (like the registry's ``default_input_shape``); ``batch_size`` adds it.
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts matrix multiplications and
convolutions (a multiply-add is 2 FLOPs) and ignores element-wise work such as normalisation, activations and
pooling - the usual convention of model-zoo tables.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_gflops", "count_parameters", "measure_latency", "spatial_rank"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``model``.

    Args:
        model: the network.
        trainable_only: count only parameters with ``requires_grad`` (e.g. not a fixed sin-cos embedding).

    Returns:
        The parameter count.
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def spatial_rank(model: nn.Module) -> int:
    """Number of spatial axes the model convolves over: 3 for a volume model, 2 for a 2D / 2.5D model.

    Read from the first convolution (every registered model starts with one). Axes before the channel axis
    beyond the batch (e.g. the slices of a multi-slice 2.5D input ``[B, S, C, H, W]``) are not spatial.

    Raises:
        ValueError: if the model has no convolution.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            return len(module.kernel_size)
    raise ValueError(f"{type(model).__name__} has no convolution; cannot tell how many spatial axes it expects.")


@contextmanager
def _eval_mode(model: nn.Module):
    """Puts ``model`` in eval mode and restores its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _example_input(model: nn.Module, input_shape: Sequence[int], batch_size: int, device: str | torch.device | None):
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else "cpu"
    return torch.randn(batch_size, *input_shape, device=device)


def count_gflops(
    model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, device: str | torch.device | None = None
) -> float:
    """GFLOPs (1e9 floating-point operations) of one eval-mode forward pass.

    Args:
        model: the network; its training mode is restored afterwards.
        input_shape: input shape without the batch dimension, e.g. ``(4, 128, 128, 128)``.
        batch_size: batch size of the counted pass.
        device: device of the example input; the device of the model's parameters by default.

    Returns:
        The GFLOPs of the pass (see the module docstring for what is counted).
    """
    x = _example_input(model, input_shape, batch_size, device)
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    warmup: int = 2,
    repeats: int = 10,
    batch_size: int = 1,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Wall-clock latency of eval-mode eager forward passes under ``torch.inference_mode``.

    Args:
        model: the network; its training mode is restored afterwards.
        input_shape: input shape without the batch dimension.
        warmup: untimed passes first (allocator and kernel caches).
        repeats: timed passes, at least 1.
        batch_size: batch size of each pass.
        device: device of the input; the model's device by default. CUDA passes are synchronised.

    Returns:
        ``{"median_ms": ..., "p90_ms": ..., "mean_ms": ...}``; ``p90_ms`` is the nearest-rank 90th percentile.

    Raises:
        ValueError: if ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"measure_latency: need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}.")
    x = _example_input(model, input_shape, batch_size, device)
    synchronize = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times_ms = []
    with _eval_mode(model), torch.inference_mode():
        for step in range(warmup + repeats):
            synchronize()
            start = time.perf_counter()
            model(x)
            synchronize()
            if step >= warmup:
                times_ms.append((time.perf_counter() - start) * 1e3)
    times_ms.sort()
    median = (times_ms[(repeats - 1) // 2] + times_ms[repeats // 2]) / 2
    p90 = times_ms[max(0, -(-9 * repeats // 10) - 1)]
    return {"median_ms": median, "p90_ms": p90, "mean_ms": sum(times_ms) / repeats}
