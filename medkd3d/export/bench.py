"""Deployment benchmark: every bundle's model on every available runtime, in one run, with ratios.

For each bundle the network is exported (TorchScript and ONNX with their parity checks; TensorRT engines when
a GPU and ``tensorrt`` are present) and measured on each runtime in a fresh subprocess, so that one runtime's
thread pools, allocator caches and peak memory do not leak into the next:

- latency at batch 1 (median and nearest-rank p90 over repeated calls after warm-up);
- subject latency: one subject's network inputs as one batch (the ``S`` slice stacks of a 2.5D bundle; the
  same as batch 1 for a 3D bundle) - the unit the bundle's inference predicts;
- throughput at a larger batch (samples per second);
- peak memory: the worker's peak resident set size (``VmHWM`` in ``/proc/self/status``, the same number as
  ``getrusage().ru_maxrss``) minus its resident size after imports and before loading the model. Python's
  ``tracemalloc`` cannot see PyTorch's or ONNX Runtime's native allocations, hence the subprocess. On a GPU, the
  device memory in use after the runs minus before loading (``torch.cuda.mem_get_info``, covering the PyTorch,
  ONNX Runtime and TensorRT allocators alike; allocator caches keep their peak, so this approximates the peak);
- parameters and GFLOPs (:mod:`medkd3d.networks.profile`), per network input and per subject.

Ratios measured in the same run: each student against its teacher (the teacher bundle named by the student's
``train.json``), ONNX Runtime and TorchScript against eager, TensorRT against eager on the GPU. Results are
written as markdown and CSV with the machine's description. Weights are random by default (speed does not depend
on the weight values), so a run never depends on what a user trained into ``bundles/*/models``;
``--weights checkpoint`` measures each bundle's trained ``models/model.pt`` instead (an error where it is missing).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RUNTIMES",
    "WEIGHTS",
    "add_arguments",
    "load_bench_bundle",
    "machine_info",
    "main",
    "run_benchmark",
    "teacher_of",
    "write_results",
]

logger = logging.getLogger(__name__)

#: Runtimes the benchmark knows; ``tensorrt-*`` need a GPU and the ``tensorrt`` package.
RUNTIMES: tuple[str, ...] = ("eager", "torchscript", "onnxruntime", "tensorrt-fp32", "tensorrt-fp16", "tensorrt-int8")
_ARTEFACT_OF = {"torchscript": "model.ts", "onnxruntime": "model.onnx"}
#: Where the benchmarked weights come from: fresh random ones, or each bundle's trained checkpoint.
WEIGHTS: tuple[str, ...] = ("random", "checkpoint")


# --------------------------------------------------------------------------------------------------- machine
def _proc_status_kb(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (Linux); 0 elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Hardware and software the benchmark ran on."""
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        meminfo = Path("/proc/meminfo").read_text().split()
        info["memory_gib"] = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20, 1)
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except (OSError, ValueError):
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    from medkd3d.export.tensorrt import tensorrt_status

    if tensorrt_status()[0]:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    return info


# ---------------------------------------------------------------------------------------------------- weights
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


def _default_checkpoint(bundle_root: Path, overrides: dict[str, Any]) -> Path:
    """The checkpoint a bundle's inference config points at (``ckpt_path``, ``models/model.pt`` by default)."""
    from medkd3d.export.bundle import bundle_parser

    parser = bundle_parser(bundle_root.resolve(), overrides, "inference.json")
    if "ckpt_path" in parser:
        return Path(str(parser.get_parsed_content("ckpt_path")))
    return bundle_root.resolve() / "models" / "model.pt"


# ---------------------------------------------------------------------------------------------------- worker
def _timed(run: Callable[[], Any], warmup: int, min_repeats: int, max_repeats: int, max_seconds: float) -> list[float]:
    """Milliseconds of ``run()`` calls: ``warmup`` untimed, then at least ``min_repeats`` and at most ``max_repeats``,
    stopping after ``max_seconds`` of timed calls."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    while len(times) < max_repeats and (len(times) < min_repeats or sum(times) / 1e3 < max_seconds):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)


def _median(sorted_ms: Sequence[float]) -> float:
    n = len(sorted_ms)
    return (sorted_ms[(n - 1) // 2] + sorted_ms[n // 2]) / 2


def _p90(sorted_ms: Sequence[float]) -> float:
    return sorted_ms[max(0, -(-9 * len(sorted_ms) // 10) - 1)]  # nearest rank


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one (bundle, runtime) pair; run in a fresh process by :func:`run_benchmark`.

    Args:
        spec: ``runtime``, ``device``, ``threads``, ``bundle_root``, ``overrides``, ``checkpoint``, ``artefact``,
            ``input_shape``, ``subject_batch``, ``batch``, ``warmup``, ``min_repeats``, ``max_repeats``,
            ``max_seconds``.

    Returns:
        Latencies (ms), throughput (samples/s) and memory (MB).
    """
    import torch

    threads = spec.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    device = spec["device"]
    cuda = device.startswith("cuda")
    runtime_name = spec["runtime"]
    gpu_before = torch.cuda.mem_get_info()[1] - torch.cuda.mem_get_info()[0] if cuda else 0
    rss_before = _proc_status_kb("VmRSS")

    if runtime_name == "eager":
        network = load_bench_bundle(spec["bundle_root"], spec["overrides"], spec.get("checkpoint")).network.to(device)

        def call(x: torch.Tensor) -> Any:
            with torch.inference_mode():
                return network(x)
    else:
        from medkd3d.export.runtime import load_runtime

        backend = "tensorrt" if runtime_name.startswith("tensorrt") else runtime_name
        options = {"threads": threads} if backend == "onnxruntime" else {}
        runtime = load_runtime(spec["artefact"], backend=backend, device=device, **options)
        if backend == "tensorrt":
            call = runtime.run_tensor  # CUDA tensors in and out, like eager on the GPU
        else:

            def call(x: torch.Tensor) -> Any:
                return runtime(x.cpu().numpy())

    def timed(batch: int, min_repeats: int, warmup: int) -> list[float]:
        x = torch.randn(batch, *spec["input_shape"], generator=torch.Generator().manual_seed(0)).to(device)

        def run() -> None:
            call(x)
            if cuda:
                torch.cuda.synchronize()

        return _timed(run, warmup, min_repeats, spec["max_repeats"], spec["max_seconds"])

    single = timed(1, spec["min_repeats"], spec["warmup"])
    # the kernels and allocator are warm now: one warm-up call per new batch size is enough
    subject = timed(spec["subject_batch"], spec["min_repeats"], 1) if spec["subject_batch"] > 1 else single
    large = timed(spec["batch"], max(2, spec["min_repeats"] // 2), 1)
    result = {
        "latency_median_ms": _median(single),
        "latency_p90_ms": _p90(single),
        "repeats": len(single),
        "subject_latency_ms": _median(subject),
        "throughput_per_s": spec["batch"] / (_median(large) / 1e3),
        "peak_rss_mb": (_proc_status_kb("VmHWM") - rss_before) / 1024,
    }
    if cuda:
        free, total = torch.cuda.mem_get_info()
        result["gpu_mem_mb"] = (total - free - gpu_before) / 2**20
    return result


def _run_in_subprocess(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "medkd3d.export.bench", "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker failed ({done.returncode}): {tail}"}
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------------------ benchmark
def teacher_of(bundle_root: str | os.PathLike) -> str | None:
    """Name of the teacher bundle a student bundle distils from (``teacher_bundle_root`` in its ``train.json``)."""
    from monai.bundle import ConfigParser

    train = Path(bundle_root) / "configs" / "train.json"
    if not train.is_file():
        return None
    parser = ConfigParser()
    parser.read_config(str(train))
    if "teacher_bundle_root" not in parser:
        return None
    parser["bundle_root"] = str(Path(bundle_root).resolve())
    return Path(str(parser.get_parsed_content("teacher_bundle_root"))).name


def _available_runtimes(requested: Sequence[str], device: str) -> list[str]:
    from medkd3d.export.runtime import backend_status

    chosen = []
    for runtime in requested:
        backend = "tensorrt" if runtime.startswith("tensorrt") else runtime
        available, reason = (True, "") if backend == "eager" else backend_status(backend, device)
        if available:
            chosen.append(runtime)
        else:
            logger.info("Skipping %s: %s.", runtime, reason)
    return chosen


def _bundle_rows(
    bundle_root: Path,
    runtimes: Sequence[str],
    scratch: Path,
    settings: dict[str, Any],
    overrides: dict[str, Any],
    data: str | None,
    weights: str = "random",
) -> list[dict[str, Any]]:
    from medkd3d.export.exporter import export_model
    from medkd3d.networks.profile import count_gflops, count_parameters

    checkpoint = _default_checkpoint(bundle_root, overrides) if weights == "checkpoint" else None
    bundle = load_bench_bundle(bundle_root, overrides, checkpoint)
    out = scratch / bundle.name
    formats = [f for f, r in (("torchscript", "torchscript"), ("onnx", "onnxruntime")) if r in runtimes]
    if any(r.startswith("tensorrt") for r in runtimes):
        formats.append("onnx")
    export_model(bundle, out, formats=formats or ["onnx"], parity_data=data, num_parity_subjects=1)
    info = json.loads((out / "export.json").read_text())
    input_shape, subject_batch = info["input_shape"], info["inputs_per_subject"]
    artefacts = {r: out / name for r, name in _ARTEFACT_OF.items()}
    for runtime in runtimes:
        if runtime.startswith("tensorrt"):
            artefacts[runtime] = _benchmark_engine(
                out, runtime.split("-")[1], subject_batch, settings["batch"], data, bundle
            )
    params = count_parameters(bundle.network)
    gflops = count_gflops(bundle.network, input_shape)
    teacher = teacher_of(bundle_root) or ""
    rows = []
    for runtime in runtimes:
        spec = {
            **settings,
            "runtime": runtime,
            "bundle_root": str(bundle_root),
            "overrides": overrides,
            "checkpoint": str(bundle.checkpoint) if bundle.checkpoint else None,
            "artefact": str(artefacts.get(runtime, "")),
            "input_shape": input_shape,
            "subject_batch": subject_batch,
        }
        logger.info("Benchmarking %s on %s...", bundle.name, runtime)
        measured = _run_in_subprocess(spec, timeout=settings["timeout"])
        rows.append(
            {
                "bundle": bundle.name,
                "model": str(bundle.deployment.inference.get("network_def", {}).get("name", "")),
                "teacher": teacher,
                "runtime": runtime,
                "device": settings["device"],
                "input_shape": "x".join(map(str, input_shape)),
                "subject_batch": subject_batch,
                "params_m": params / 1e6,
                "gflops": gflops,
                "subject_gflops": gflops * subject_batch,
                "weights": "checkpoint" if bundle.checkpoint else "random",
                **measured,
            }
        )
        logger.info(
            "%s", {k: v for k, v in rows[-1].items() if k in ("bundle", "runtime", "latency_median_ms", "error")}
        )
    return rows


def _benchmark_engine(out: Path, precision: str, opt_batch: int, batch: int, data: str | None, bundle: Any) -> Path:
    from medkd3d.export.inputs import CalibrationBatches, load_records, synthetic_records
    from medkd3d.export.tensorrt import build_engine

    engine = out / f"model_{precision}.engine"
    calibration = None
    if precision == "int8":
        records = load_records(data) if data else synthetic_records(out / "calibration-subjects")
        d = bundle.deployment
        calibration = CalibrationBatches(
            records, d.build_preprocessing(), d.build_inferer(), len(d.class_names), opt_batch
        )
    build_engine(out / "model.onnx", engine, precision=precision, opt_batch=opt_batch, max_batch=max(opt_batch, batch),
                 calibration=calibration, calibration_cache=out / f"calibration_{precision}.cache")  # fmt: skip
    return engine


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def compute_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ratios between rows of the same run.

    - ``speedup vs teacher``: teacher latency / student latency, same runtime, per network input (batch 1) and
      per subject;
    - ``latency vs eager``: runtime latency / eager latency of the same bundle (below 1 is faster).
    """
    by_key = {(r["bundle"], r["runtime"]): r for r in rows if "error" not in r}
    ratios = []
    for (bundle, runtime), row in by_key.items():
        teacher = by_key.get((row["teacher"], runtime))
        if teacher is not None:
            ratios.append({
                "bundle": bundle, "runtime": runtime, "ratio": "speedup vs teacher " + row["teacher"],
                "per_input": _ratio(teacher["latency_median_ms"], row["latency_median_ms"]),
                "per_subject": _ratio(teacher["subject_latency_ms"], row["subject_latency_ms"]),
            })  # fmt: skip
        eager = by_key.get((bundle, "eager"))
        if runtime != "eager" and eager is not None:
            ratios.append({
                "bundle": bundle, "runtime": runtime, "ratio": "latency vs eager",
                "per_input": _ratio(row["latency_median_ms"], eager["latency_median_ms"]),
                "per_subject": _ratio(row["subject_latency_ms"], eager["subject_latency_ms"]),
            })  # fmt: skip
    return ratios


_COLUMNS = (
    ("bundle", "bundle", "{}"), ("runtime", "runtime", "{}"), ("input_shape", "input", "{}"),
    ("params_m", "params (M)", "{:.2f}"), ("gflops", "GFLOPs/input", "{:.2f}"),
    ("subject_gflops", "GFLOPs/subject", "{:.2f}"), ("latency_median_ms", "latency median (ms)", "{:.1f}"),
    ("latency_p90_ms", "latency p90 (ms)", "{:.1f}"), ("subject_latency_ms", "subject latency (ms)", "{:.1f}"),
    ("throughput_per_s", "throughput (/s)", "{:.2f}"), ("peak_rss_mb", "peak RSS (MB)", "{:.0f}"),
    ("gpu_mem_mb", "GPU mem (MB)", "{:.0f}"),
)  # fmt: skip


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    return "" if value is None else fmt.format(value)


def write_results(
    rows: Sequence[dict[str, Any]],
    machine: dict[str, Any],
    out_dir: str | os.PathLike,
    stem: str,
    settings: dict[str, Any],
    targets: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write ``<stem>.md`` (machine, results, ratios, targets) and ``<stem>.csv`` (one row per measurement).

    Returns:
        The markdown and CSV paths.
    """
    from medkd3d.utils import atomic_write_text

    ratios = compute_ratios(rows)
    columns = [c for c in _COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    lines = [f"# Deployment benchmark ({settings['device']})", "", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    lines += [
        "",
        f"Settings: batch-1 latency over {settings['min_repeats']}-{settings['max_repeats']} calls after "
        f"{settings['warmup']} warm-up calls (at most {settings['max_seconds']} s each), throughput at batch "
        f"{settings['batch']}, {settings.get('threads') or 'default'} threads, each runtime in a fresh process.",
        "",
        "## Results",
        "",
        "| " + " | ".join(c[1] for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['bundle']} | {row['runtime']} | failed: {row['error']} |")
        else:
            lines.append("| " + " | ".join(_cell(row, key, fmt) for key, _, fmt in columns) + " |")
    lines += [
        "",
        "## Ratios (same run)",
        "",
        "| bundle | runtime | ratio | per input | per subject |",
        "|---|---|---|---|---|",
    ]
    for r in ratios:
        lines.append(
            f"| {r['bundle']} | {r['runtime']} | {r['ratio']} | {_cell(r, 'per_input', '{:.2f}')} | "
            f"{_cell(r, 'per_subject', '{:.2f}')} |"
        )
    if targets:
        lines += ["", "## Targets", "", *targets]
    md = atomic_write_text(Path(out_dir) / f"{stem}.md", "\n".join(lines) + "\n")

    buffer = io.StringIO()
    keys = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buffer, fieldnames=[*keys, *(f"machine_{k}" for k in machine)], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, **{f"machine_{k}": v for k, v in machine.items()}})
    return md, atomic_write_text(Path(out_dir) / f"{stem}.csv", buffer.getvalue())


#: (student bundle, runtime, ratio name, field, comparison, threshold, description) of the issue's targets.
_TARGETS = (
    ("brats_student_effnet3d", "onnxruntime", "latency vs eager", "per_input", "<=", 0.6, "ONNX Runtime <= 0.6x eager latency, 3D student"),
    ("brats_student_effnet3d", "eager", "speedup vs teacher", "per_subject", ">=", 10.0, "3D student >= 10x faster than the teacher"),
    ("brats_student_effnet25d", "eager", "speedup vs teacher", "per_subject", ">=", 30.0, "2.5D student >= 30x faster than the teacher (per subject)"),
    ("brats_student_effnet25d", "eager", "speedup vs teacher", "per_input", ">=", 30.0, "2.5D student >= 30x faster than the teacher (per slice-stack input)"),
    ("brats_student_effnet3d", "tensorrt-fp16", "latency vs eager", "per_input", "<=", 1 / 3, "TensorRT FP16 >= 3x faster than eager (GPU), 3D student"),
)  # fmt: skip


def check_targets(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One markdown line per applicable target of the issue: measured value and MET / MISSED."""
    lines = []
    for bundle, runtime, ratio, field, comparison, threshold, description in _TARGETS:
        match = [
            r
            for r in compute_ratios(rows)
            if r["bundle"] == bundle and r["runtime"] == runtime and r["ratio"].startswith(ratio)
        ]
        if not match or match[0][field] is None:
            continue
        value = match[0][field]
        met = value <= threshold if comparison == "<=" else value >= threshold
        lines.append(
            f"- {description}: measured {value:.2f} ({comparison} {threshold:.2f}) - {'MET' if met else 'MISSED'}"
        )
    return lines


def run_benchmark(
    bundles: Sequence[str | os.PathLike],
    runtimes: Sequence[str] = RUNTIMES,
    out_dir: str | os.PathLike = "benchmarks/results",
    device: str = "cpu",
    size: str = "default",
    batch: int = 4,
    warmup: int = 2,
    min_repeats: int = 5,
    max_repeats: int = 20,
    max_seconds: float = 30.0,
    threads: int | None = None,
    data: str | None = None,
    stem: str | None = None,
    timeout: float = 1800.0,
    weights: str = "random",
) -> tuple[list[dict[str, Any]], Path, Path]:
    """Benchmark every bundle on every available runtime and write the markdown and CSV results.

    Args:
        bundles: bundle directories.
        runtimes: subset of :data:`RUNTIMES`; unavailable ones are skipped with a log message.
        out_dir: where ``<stem>.md`` and ``<stem>.csv`` go.
        device: ``"cpu"`` or ``"cuda"``.
        size: ``"default"`` (the bundles' input size) or ``"tiny"`` (registry tiny models at 32^3, smoke runs).
        batch: batch size of the throughput measurement.
        warmup: untimed calls before each measurement.
        min_repeats: timed calls at least.
        max_repeats: timed calls at most.
        max_seconds: stop repeating after this much timed work (beyond ``min_repeats``).
        threads: intra-op threads for PyTorch and ONNX Runtime (default: their own, one per core).
        data: datalist or dataset folder for the parity checks, shapes and INT8 calibration (default: synthetic).
        stem: results file name without suffix (default ``deploy_<device>``).
        timeout: seconds allowed per measurement subprocess.
        weights: ``"random"`` (default: the bundles' checkpoints are never read) or ``"checkpoint"`` (each
            bundle's ``ckpt_path``, ``models/model.pt``, trained with the same ``size``).

    Returns:
        The rows and the markdown and CSV paths.

    Raises:
        ValueError: for an unknown ``size``, runtime or ``weights``.
        FileNotFoundError: with ``weights="checkpoint"``, if a bundle has no checkpoint.
    """
    from medkd3d.export.bundle import tiny_overrides

    if size not in ("default", "tiny"):
        raise ValueError(f"size must be 'default' or 'tiny', got {size!r}.")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}.")
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        raise ValueError(f"Unknown runtime(s) {unknown}; choose from {', '.join(RUNTIMES)}.")
    runtimes = _available_runtimes(runtimes, device)
    settings = {
        "device": device, "threads": threads, "batch": batch, "warmup": warmup, "min_repeats": min_repeats,
        "max_repeats": max_repeats, "max_seconds": max_seconds, "timeout": timeout,
    }  # fmt: skip
    machine = machine_info(threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medkd3d-bench-") as scratch:
        for bundle_root in bundles:
            overrides = tiny_overrides(bundle_root) if size == "tiny" else {}
            rows += _bundle_rows(Path(bundle_root), runtimes, Path(scratch), settings, overrides, data, weights)
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    md, csv_path = write_results(
        rows, machine, out_dir, stem or f"deploy_{device.split(':')[0]}", settings, check_targets(rows)
    )
    return rows, md, csv_path


# ---------------------------------------------------------------------------------------------------- command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medkd3d bench`` and ``benchmarks/bench_deploy.py``."""
    parser.add_argument(
        "--bundles",
        nargs="+",
        default=None,
        metavar="DIR",
        help="bundle directories (default: every bundle under ./bundles)",
    )
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=list(RUNTIMES),
        choices=RUNTIMES,
        metavar="RUNTIME",
        help=f"runtimes to measure, from {', '.join(RUNTIMES)} (unavailable ones are skipped)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument(
        "--size", default="default", choices=("default", "tiny"), help="input size (default: the bundles')"
    )
    parser.add_argument(
        "--weights",
        default="random",
        choices=WEIGHTS,
        help="random (default: never reads bundles/*/models, speed does not depend on the weights) or checkpoint "
        "(each bundle's trained models/model.pt, trained at the same --size)",
    )
    parser.add_argument("--batch", type=int, default=4, help="batch size of the throughput measurement (default: 4)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--min-repeats", type=int, default=5)
    parser.add_argument("--max-repeats", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=30.0, help="timed work per measurement before stopping")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: one per core)")
    parser.add_argument("--data", default=None, help="datalist or dataset folder (default: synthetic subjects)")
    parser.add_argument("--out", default="benchmarks/results", help="results directory (default: benchmarks/results)")
    parser.add_argument("--stem", default=None, help="results file name without suffix (default: deploy_<device>)")


def run_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed :func:`add_arguments` options and print where the results went."""
    bundles = args.bundles or sorted(str(p.parent.parent) for p in Path("bundles").glob("*/configs/inference.json"))
    if not bundles:
        print("No bundles found: run from the repository root or pass --bundles.", file=sys.stderr)
        return 2
    rows, md, csv_path = run_benchmark(
        bundles, args.runtimes, args.out, args.device, args.size, args.batch, args.warmup, args.min_repeats,
        args.max_repeats, args.max_seconds, args.threads, args.data, args.stem, weights=args.weights,
    )  # fmt: skip
    print(md.read_text())
    print(f"Wrote {md} and {csv_path}.")
    return 1 if any("error" in r for r in rows) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m medkd3d.export.bench`` (the benchmark, or one ``--worker`` measurement)."""
    parser = argparse.ArgumentParser(prog="python -m medkd3d.export.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.worker is not None:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
