"""The measuring half of the deployment benchmark (:mod:`medkd3d.export.bench`): one bundle on one runtime.

:func:`run_in_subprocess` runs :func:`run_worker` in a fresh Python process (``python -m
medkd3d.export.bench_worker SPEC``), so that one runtime's thread pools, allocator caches and peak memory do not
leak into the next measurement. The worker measures

- latency at batch 1 (median and nearest-rank p90 over repeated calls after warm-up,
  :func:`medkd3d.networks.profile.time_calls`);
- subject latency: one subject's network inputs as one batch (the ``S`` slice stacks of a 2.5D bundle; the same as
  batch 1 for a 3D bundle) - the unit the bundle's inference predicts;
- throughput at a larger batch (samples per second);
- peak memory: the process's peak resident set size (``VmHWM`` in ``/proc/self/status``, the same number as
  ``getrusage().ru_maxrss``) minus its resident size after imports and before loading the model. Python's
  ``tracemalloc`` cannot see PyTorch's or ONNX Runtime's native allocations, hence the subprocess. On a GPU, the
  device memory in use after the runs minus before loading (``torch.cuda.mem_get_info``, covering the PyTorch,
  ONNX Runtime and TensorRT allocators alike; allocator caches keep their peak, so this approximates the peak).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BenchSettings", "WorkerSpec", "load_bench_bundle", "main", "run_in_subprocess", "run_worker"]


@dataclass(frozen=True)
class BenchSettings:
    """How each (bundle, runtime) pair is measured.

    Args:
        device: ``"cpu"`` or ``"cuda[:N]"``.
        threads: intra-op threads for PyTorch and ONNX Runtime (``None``: their own default, one per core).
        batch: batch size of the throughput measurement.
        warmup: untimed calls before the batch-1 measurement.
        min_repeats: timed calls at least (at most ``max_repeats``).
        max_repeats: timed calls at most.
        max_seconds: stop repeating after this much timed work (beyond ``min_repeats``).
        timeout: seconds allowed per measurement subprocess.
    """

    device: str = "cpu"
    threads: int | None = None
    batch: int = 4
    warmup: int = 2
    min_repeats: int = 5
    max_repeats: int = 20
    max_seconds: float = 30.0
    timeout: float = 1800.0


@dataclass(frozen=True)
class WorkerSpec:
    """One measurement: a bundle's model on one runtime.

    Args:
        runtime: ``"eager"``, ``"torchscript"``, ``"onnxruntime"`` or ``"tensorrt-<precision>"``.
        bundle_root: the bundle directory (the eager runtime builds its network from it).
        input_shape: one network input without the batch dimension.
        subject_batch: network inputs per subject (slice stacks of a 2.5D bundle; 1 for a 3D bundle).
        settings: repeats, batch, threads and device.
        overrides: bundle config overrides (e.g. the tiny ones of ``--size tiny``).
        checkpoint: weights of the eager network; ``None`` keeps random weights.
        artefact: the exported file of a non-eager runtime.
    """

    runtime: str
    bundle_root: str
    input_shape: tuple[int, ...]
    subject_batch: int = 1
    settings: BenchSettings = field(default_factory=BenchSettings)
    overrides: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    artefact: str = ""

    def to_json(self) -> str:
        """The spec as JSON, the worker process's argument."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        """Rebuild a spec from :meth:`to_json`'s text."""
        values = json.loads(text)
        values["settings"] = BenchSettings(**values["settings"])
        values["input_shape"] = tuple(values["input_shape"])
        return cls(**values)


def load_bench_bundle(
    bundle_root: str | os.PathLike, overrides: dict[str, Any], checkpoint: str | os.PathLike | None
) -> Any:
    """A bundle's model for the benchmark: random weights unless ``checkpoint`` is given.

    Args:
        bundle_root: the bundle directory.
        overrides: config overrides (e.g. the tiny ones of ``--size tiny``).
        checkpoint: weights to load; ``None`` keeps random weights and never reads the bundle's own
            ``models/model.pt``, whatever the working tree holds.

    Returns:
        The :class:`~medkd3d.export.bundle.BundleModel`.

    Raises:
        FileNotFoundError: if ``checkpoint`` is given and missing.
        RuntimeError: if ``checkpoint`` does not fit the network.
    """
    from medkd3d.export.bundle import load_bundle

    return load_bundle(bundle_root, checkpoint=checkpoint, overrides=overrides, random_weights=checkpoint is None)


def _proc_status_kb(name: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (Linux); 0 elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _runtime_call(spec: WorkerSpec) -> Callable[[Any], Any]:
    """The call to time: a tensor batch in, the runtime's output out."""
    import torch

    device = spec.settings.device
    if spec.runtime == "eager":
        network = load_bench_bundle(spec.bundle_root, spec.overrides, spec.checkpoint).network.to(device)

        def eager(x: torch.Tensor) -> Any:
            with torch.inference_mode():
                return network(x)

        return eager
    from medkd3d.export.runtime import load_runtime

    backend = "tensorrt" if spec.runtime.startswith("tensorrt") else spec.runtime
    threads = spec.settings.threads
    options = {"threads": threads} if backend == "onnxruntime" else {}
    runtime = load_runtime(spec.artefact, backend=backend, device=device, **options)
    if backend == "tensorrt":
        return runtime.run_tensor  # CUDA tensors in and out, like eager on the GPU
    return lambda x: runtime(x.cpu().numpy())


def run_worker(spec: WorkerSpec) -> dict[str, Any]:
    """Measure one (bundle, runtime) pair; :func:`run_in_subprocess` runs it in a fresh process.

    Args:
        spec: what to measure and how.

    Returns:
        ``latency_median_ms``, ``latency_p90_ms``, ``repeats``, ``subject_latency_ms``, ``throughput_per_s``,
        ``peak_rss_mb`` and, on a GPU, ``gpu_mem_mb``.
    """
    import torch

    from medkd3d.networks.profile import latency_stats, time_calls

    settings = spec.settings
    if settings.threads:
        torch.set_num_threads(int(settings.threads))
    cuda = settings.device.startswith("cuda")
    gpu_before = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0] if cuda else 0
    rss_before = _proc_status_kb("VmRSS")
    call = _runtime_call(spec)

    def timed(batch: int, min_repeats: int, warmup: int) -> list[float]:
        x = torch.randn(batch, *spec.input_shape, generator=torch.Generator().manual_seed(0)).to(settings.device)
        return time_calls(
            lambda: call(x),
            warmup=warmup,
            # --max-repeats below --min-repeats caps the repeats, as in a quick smoke run
            min_repeats=min(min_repeats, settings.max_repeats),
            max_repeats=settings.max_repeats,
            max_seconds=settings.max_seconds,
            device=settings.device,
        )

    single = timed(1, settings.min_repeats, settings.warmup)
    # the kernels and allocator are warm now: one warm-up call per new batch size is enough
    subject = timed(spec.subject_batch, settings.min_repeats, 1) if spec.subject_batch > 1 else single
    large = timed(settings.batch, max(2, settings.min_repeats // 2), 1)
    single_stats = latency_stats(single)
    result = {
        "latency_median_ms": single_stats["median_ms"],
        "latency_p90_ms": single_stats["p90_ms"],
        "repeats": len(single),
        "subject_latency_ms": latency_stats(subject)["median_ms"],
        "throughput_per_s": settings.batch / (latency_stats(large)["median_ms"] / 1e3),
        "peak_rss_mb": (_proc_status_kb("VmHWM") - rss_before) / 1024,
    }
    if cuda:
        free, total = torch.cuda.mem_get_info()
        result["gpu_mem_mb"] = (total - free - gpu_before) / 2**20
    return result


def run_in_subprocess(spec: WorkerSpec) -> dict[str, Any]:
    """:func:`run_worker` in a fresh Python process.

    Args:
        spec: the measurement; ``spec.settings.timeout`` bounds the process.

    Returns:
        The worker's result, or ``{"error": ...}`` if it failed or timed out (never raised, so that one failed
        runtime does not end the benchmark).
    """
    timeout = spec.settings.timeout
    command = [sys.executable, "-m", "medkd3d.export.bench_worker", spec.to_json()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker failed ({done.returncode}): {tail}"}
    return json.loads(lines[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m medkd3d.export.bench_worker SPEC``: print one measurement as a JSON line."""
    parser = argparse.ArgumentParser(prog="python -m medkd3d.export.bench_worker", description=__doc__.split("\n")[0])
    parser.add_argument("spec", help="a WorkerSpec as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run_worker(WorkerSpec.from_json(args.spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
