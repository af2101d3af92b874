"""Model size and cost: parameters, GFLOPs at an input shape, and latency.

:func:`time_calls` is the one latency timer of medkd3d (eager forward passes here, exported runtimes in
:mod:`medkd3d.export.bench_worker`, the GPU checks of ``benchmarks/bench_gpu.py``), :func:`time_interleaved`
its comparison of several runs in turn (the CPU benchmarks' ratios) and :func:`latency_stats` the one summary of its
times (median, nearest-rank p90, mean).

Shapes here exclude the batch dimension (like the registry's ``default_input_shape``); ``batch_size`` adds it.
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts matrix multiplications and
convolutions (a multiply-add is 2 FLOPs) and ignores element-wise work such as normalisation, activations and
pooling - the usual convention of model-zoo tables.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.networks.utils import eval_mode
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "count_gflops",
    "count_parameters",
    "latency_stats",
    "measure_latency",
    "spatial_rank",
    "time_calls",
    "time_interleaved",
]


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
    with eval_mode(model), counter:  # eval_mode also disables gradients
        model(x)
    return counter.get_total_flops() / 1e9


def _synchronizer(device: str | torch.device | None) -> Callable[[], None]:
    """A function that waits for ``device``'s queued work: CUDA kernels run asynchronously, so without it a timer
    would stop when a kernel is launched rather than when it finishes."""
    if device is not None and torch.device(device).type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_calls(
    run: Callable[[], Any],
    *,
    warmup: int = 0,
    min_repeats: int = 1,
    max_repeats: int | None = None,
    max_seconds: float = math.inf,
    device: str | torch.device | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Milliseconds of repeated ``run()`` calls, sorted ascending.

    ``warmup`` untimed calls come first (allocator and kernel caches, cuDNN algorithm choice). Then calls are timed
    one by one until ``max_repeats`` are timed, or, once ``min_repeats`` are, until the timed calls add up to
    ``max_seconds``. On a CUDA ``device`` the device is synchronised before each timer starts and before it stops.

    Args:
        run: the work to time, e.g. one forward pass.
        warmup: untimed calls first.
        min_repeats: timed calls at least, whatever ``max_seconds`` says.
        max_repeats: timed calls at most; ``None`` stops on ``max_seconds`` only (then it must be finite).
        max_seconds: stop once this much timed work is done (beyond ``min_repeats``).
        device: the device ``run`` works on; CUDA devices are synchronised.
        clock: seconds from an arbitrary origin (``time.perf_counter``; a fake clock in tests).

    Returns:
        The ``n`` times in milliseconds, ``min_repeats <= n <= max_repeats``, smallest first.

    Raises:
        ValueError: if ``warmup < 0``, ``min_repeats < 1``, ``max_repeats < min_repeats``, or nothing bounds the
            number of calls.
    """
    if warmup < 0 or min_repeats < 1 or (max_repeats is not None and max_repeats < min_repeats):
        raise ValueError(
            "time_calls: need warmup >= 0 and 1 <= min_repeats <= max_repeats, got "
            f"warmup={warmup}, min_repeats={min_repeats}, max_repeats={max_repeats}."
        )
    if max_repeats is None and not math.isfinite(max_seconds):
        raise ValueError("time_calls: give max_repeats or a finite max_seconds, or it never stops.")
    limit = math.inf if max_repeats is None else max_repeats
    synchronize = _synchronizer(device)
    for _ in range(warmup):
        run()
    times_ms: list[float] = []
    while len(times_ms) < limit and (len(times_ms) < min_repeats or sum(times_ms) / 1e3 < max_seconds):
        synchronize()
        start = clock()
        run()
        synchronize()
        times_ms.append((clock() - start) * 1e3)
    return sorted(times_ms)


def time_interleaved(
    runs: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    device: str | torch.device | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Milliseconds of ``repeats`` calls of each of ``runs``, the runs called in turn within each repeat.

    Interleaving is what makes the runs comparable on a shared machine: a change in its load touches them alike, so
    a ratio of their times measured in one call holds even when the times themselves drift.

    Args:
        runs: the work to compare, by name.
        repeats: timed calls of each run.
        warmup: untimed calls of each run first (allocator, kernel and primitive caches).
        device: the device the runs work on; CUDA devices are synchronised around each timed call.
        clock: seconds from an arbitrary origin (``time.perf_counter``; a fake clock in tests).

    Returns:
        Per name, its ``repeats`` times in milliseconds, in call order.
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name] += time_calls(run, max_repeats=1, device=device, clock=clock)
    return times


def latency_stats(times_ms: Sequence[float]) -> dict[str, float]:
    """Median, nearest-rank 90th percentile and mean of latencies.

    Args:
        times_ms: at least one time, in any order (e.g. :func:`time_calls`'s).

    Returns:
        ``{"median_ms": ..., "p90_ms": ..., "mean_ms": ...}``.

    Raises:
        ValueError: for no times.
    """
    if not times_ms:
        raise ValueError("latency_stats: no times to summarise.")
    ordered = sorted(times_ms)
    n = len(ordered)
    return {
        "median_ms": (ordered[(n - 1) // 2] + ordered[n // 2]) / 2,
        # nearest rank: the smallest time >= 90 % of the times, ceil(0.9 n) in integers (0.9 * n is inexact)
        "p90_ms": ordered[-(-9 * n // 10) - 1],
        "mean_ms": sum(ordered) / n,
    }


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
    with eval_mode(model), torch.inference_mode():
        times_ms = time_calls(
            lambda: model(x), warmup=warmup, min_repeats=repeats, max_repeats=repeats, device=x.device
        )
    return latency_stats(times_ms)
