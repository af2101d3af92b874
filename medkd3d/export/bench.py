"""Deployment benchmark: every bundle's model on every available runtime, in one run, with ratios.

For each bundle the network is exported (TorchScript and ONNX with their parity checks; TensorRT engines when
a GPU and ``tensorrt`` are present) and measured on each runtime in a fresh subprocess
(:mod:`medkd3d.export.bench_worker`: batch-1 latency, subject latency, throughput, peak memory); parameters and
GFLOPs come from :mod:`medkd3d.networks.profile`, per network input and per subject.

Ratios measured in the same run (:mod:`medkd3d.export.bench_report`): each student against its teacher (the
teacher bundle named by the student's ``train.json``, :func:`medkd3d.bundles.teacher_of`), ONNX Runtime and
TorchScript against eager, TensorRT against eager on the GPU. Results are written as markdown and CSV with the machine's description, plus whatever
targets the caller states (``benchmarks/bench_deploy.py`` states the project's; ``medkd3d bench`` states none).
Weights are random by default (speed does not depend on the weight values), so a run never depends on what a user
trained into ``bundles/*/models``; ``--weights checkpoint`` measures each bundle's trained ``models/model.pt``
instead (an error where it is missing).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medkd3d.export.bench_report import Target, write_results
from medkd3d.export.bench_worker import BenchSettings, WorkerSpec, load_bench_bundle, run_in_subprocess
from medkd3d.utils import usable_cpus

__all__ = [
    "RUNTIMES",
    "SIZES",
    "WEIGHTS",
    "BenchSettings",
    "add_arguments",
    "machine_info",
    "main",
    "run_benchmark",
    "run_from_args",
    "settings_from_args",
]

logger = logging.getLogger(__name__)

#: Runtimes the benchmark knows; ``tensorrt-*`` need a GPU and the ``tensorrt`` package.
RUNTIMES: tuple[str, ...] = ("eager", "torchscript", "onnxruntime", "tensorrt-fp32", "tensorrt-fp16", "tensorrt-int8")
_ARTEFACT_OF = {"torchscript": "model.ts", "onnxruntime": "model.onnx"}
#: Where the benchmarked weights come from: fresh random ones, or each bundle's trained checkpoint.
WEIGHTS: tuple[str, ...] = ("random", "checkpoint")
#: Input sizes: the bundles' own, or the registry's tiny models at 32^3 (smoke runs).
SIZES: tuple[str, ...] = ("default", "tiny")


# --------------------------------------------------------------------------------------------------- machine
def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Hardware and software the benchmark runs on.

    Args:
        threads: the intra-op threads of the run (default: PyTorch's).

    Returns:
        ``platform``, ``python``, ``cpu``, CPU counts, ``threads``, ``torch``, memory, load average and, where
        present, ``onnxruntime``, ``gpu``, ``cuda`` and ``tensorrt`` versions.
    """
    import torch

    from medkd3d.export.runtime import has_ort, ort
    from medkd3d.export.tensorrt import tensorrt_status, trt

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
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
    if has_ort:
        info["onnxruntime"] = ort.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    if tensorrt_status()[0]:
        info["tensorrt"] = trt.__version__
    return info


# ---------------------------------------------------------------------------------------------------- bundles
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


@dataclass(frozen=True)
class _BundleJob:
    """What every bundle of a run shares: the runtimes, settings, data and weights."""

    runtimes: Sequence[str]
    settings: BenchSettings
    scratch: Path
    size: str
    data: str | None
    weights: str


def _export_artefacts(bundle: Any, job: _BundleJob) -> tuple[dict[str, Any], dict[str, Path]]:
    """Export the bundle's model for the job's runtimes (parity-checked) and build its TensorRT engines.

    Returns:
        The export facts (``export.json``: ``input_shape``, ``inputs_per_subject``...) and ``{runtime: artefact}``.
    """
    from medkd3d.export.exporter import export_model

    out = job.scratch / bundle.name
    formats = [f for f, r in (("torchscript", "torchscript"), ("onnx", "onnxruntime")) if r in job.runtimes]
    if any(r.startswith("tensorrt") for r in job.runtimes):
        formats.append("onnx")
    export_model(bundle, out, formats=formats or ["onnx"], parity_data=job.data, num_parity_subjects=1)
    info = json.loads((out / "export.json").read_text())
    artefacts = {r: out / name for r, name in _ARTEFACT_OF.items()}
    for runtime in job.runtimes:
        if runtime.startswith("tensorrt"):
            artefacts[runtime] = _build_engine(
                bundle, out, precision=runtime.split("-")[1], opt_batch=int(info["inputs_per_subject"]),
                batch=job.settings.batch, data=job.data,
            )  # fmt: skip
    return info, artefacts


def _build_engine(bundle: Any, out: Path, *, precision: str, opt_batch: int, batch: int, data: str | None) -> Path:
    """A TensorRT engine of ``precision`` from ``out/model.onnx`` (INT8 calibrated on ``data`` or synthetic subjects)."""
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


def _bundle_rows(bundle_root: Path, job: _BundleJob) -> list[dict[str, Any]]:
    """Export one bundle and measure it on every runtime of the job, one worker process each."""
    from medkd3d.bundles import bundle_parser, default_checkpoint, teacher_of, tiny_overrides
    from medkd3d.networks.profile import count_gflops, count_parameters

    overrides = tiny_overrides(bundle_root) if job.size == "tiny" else {}
    checkpoint = None
    if job.weights == "checkpoint":  # the one the bundle's inference config points at (models/model.pt)
        checkpoint = default_checkpoint(bundle_parser(bundle_root.resolve(), overrides, "inference.json"))
    bundle = load_bench_bundle(bundle_root, overrides, checkpoint)
    info, artefacts = _export_artefacts(bundle, job)
    input_shape, subject_batch = tuple(info["input_shape"]), int(info["inputs_per_subject"])
    params = count_parameters(bundle.network)
    gflops = count_gflops(bundle.network, input_shape)
    teacher = teacher_of(bundle_root) or ""
    rows = []
    for runtime in job.runtimes:
        spec = WorkerSpec(
            runtime=runtime,
            bundle_root=str(bundle_root),
            input_shape=input_shape,
            subject_batch=subject_batch,
            settings=job.settings,
            overrides=overrides,
            checkpoint=str(bundle.checkpoint) if bundle.checkpoint else None,
            artefact=str(artefacts.get(runtime, "")),
        )
        logger.info("Benchmarking %s on %s...", bundle.name, runtime)
        measured = run_in_subprocess(spec)
        rows.append(
            {
                "bundle": bundle.name,
                "model": str(bundle.deployment.inference.get("network_def", {}).get("name", "")),
                "teacher": teacher,
                "runtime": runtime,
                "device": job.settings.device,
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


# ------------------------------------------------------------------------------------------------ benchmark
def run_benchmark(
    bundles: Sequence[str | os.PathLike],
    *,
    runtimes: Sequence[str] = RUNTIMES,
    out_dir: str | os.PathLike = "benchmarks/results",
    settings: BenchSettings | None = None,
    size: str = "default",
    data: str | None = None,
    stem: str | None = None,
    weights: str = "random",
    targets: Sequence[Target] = (),
) -> tuple[list[dict[str, Any]], Path, Path]:
    """Benchmark every bundle on every available runtime and write the markdown and CSV results.

    Args:
        bundles: bundle directories.
        runtimes: subset of :data:`RUNTIMES`; unavailable ones are skipped with a log message.
        out_dir: where ``<stem>.md`` and ``<stem>.csv`` go.
        settings: device, threads, repeats and throughput batch (default: :class:`BenchSettings`'s defaults).
        size: ``"default"`` (the bundles' input size) or ``"tiny"`` (registry tiny models at 32^3, smoke runs).
        data: datalist or dataset folder for the parity checks, shapes and INT8 calibration (default: synthetic).
        stem: results file name without suffix (default ``deploy_<device>``).
        weights: ``"random"`` (default: the bundles' checkpoints are never read) or ``"checkpoint"`` (each
            bundle's ``ckpt_path``, ``models/model.pt``, trained with the same ``size``).
        targets: goals the report checks against the run's ratios (the caller's; none by default).

    Returns:
        The rows and the markdown and CSV paths.

    Raises:
        ValueError: for an unknown ``size``, runtime or ``weights``.
        FileNotFoundError: with ``weights="checkpoint"``, if a bundle has no checkpoint.
    """
    settings = settings or BenchSettings()
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}.")
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}.")
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        raise ValueError(f"Unknown runtime(s) {unknown}; choose from {', '.join(RUNTIMES)}.")
    machine = machine_info(settings.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="medkd3d-bench-") as scratch:
        job = _BundleJob(_available_runtimes(runtimes, settings.device), settings, Path(scratch), size, data, weights)
        for bundle_root in bundles:
            rows += _bundle_rows(Path(bundle_root), job)
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    md, csv_path = write_results(
        rows,
        machine=machine,
        out_dir=out_dir,
        stem=stem or f"deploy_{settings.device.split(':')[0]}",
        settings=settings,
        targets=targets,
    )
    return rows, md, csv_path


# ---------------------------------------------------------------------------------------------------- command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medkd3d bench`` and ``benchmarks/bench_deploy.py``."""
    defaults = BenchSettings()
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
    parser.add_argument("--device", default=defaults.device, help="cpu or cuda (default: cpu)")
    parser.add_argument("--size", default="default", choices=SIZES, help="input size (default: the bundles')")
    parser.add_argument(
        "--weights",
        default="random",
        choices=WEIGHTS,
        help="random (default: never reads bundles/*/models, speed does not depend on the weights) or checkpoint "
        "(each bundle's trained models/model.pt, trained at the same --size)",
    )
    parser.add_argument(
        "--batch", type=int, default=defaults.batch, help="batch size of the throughput measurement (default: 4)"
    )
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--min-repeats", type=int, default=defaults.min_repeats)
    parser.add_argument("--max-repeats", type=int, default=defaults.max_repeats)
    parser.add_argument(
        "--max-seconds", type=float, default=defaults.max_seconds, help="timed work per measurement before stopping"
    )
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: one per core)")
    parser.add_argument("--data", default=None, help="datalist or dataset folder (default: synthetic subjects)")
    parser.add_argument("--out", default="benchmarks/results", help="results directory (default: benchmarks/results)")
    parser.add_argument("--stem", default=None, help="results file name without suffix (default: deploy_<device>)")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """The measurement settings of parsed :func:`add_arguments` options."""
    return BenchSettings(
        device=args.device,
        threads=args.threads,
        batch=args.batch,
        warmup=args.warmup,
        min_repeats=args.min_repeats,
        max_repeats=args.max_repeats,
        max_seconds=args.max_seconds,
    )


def run_from_args(args: argparse.Namespace, targets: Sequence[Target] = ()) -> int:
    """Run the benchmark from parsed :func:`add_arguments` options and print where the results went.

    Args:
        args: the parsed options.
        targets: goals the report checks (``benchmarks/bench_deploy.py`` passes the project's).

    Returns:
        The exit code: 0, 1 if a measurement failed, 2 if no bundle was found.
    """
    bundles = args.bundles or sorted(str(p.parent.parent) for p in Path("bundles").glob("*/configs/inference.json"))
    if not bundles:
        print("No bundles found: run from the repository root or pass --bundles.", file=sys.stderr)
        return 2
    rows, md, csv_path = run_benchmark(
        bundles,
        runtimes=args.runtimes,
        out_dir=args.out,
        settings=settings_from_args(args),
        size=args.size,
        data=args.data,
        stem=args.stem,
        weights=args.weights,
        targets=targets,
    )
    print(md.read_text())
    print(f"Wrote {md} and {csv_path}.")
    return 1 if any("error" in r for r in rows) else 0


def main(
    argv: Sequence[str] | None = None, *, targets: Sequence[Target] = (), prog: str = "python -m medkd3d.export.bench"
) -> int:
    """Entry point of ``python -m medkd3d.export.bench`` and ``benchmarks/bench_deploy.py``.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).
        targets: goals the report checks.
        prog: the program name in ``--help``.

    Returns:
        The exit code of :func:`run_from_args`.
    """
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_from_args(args, targets)


if __name__ == "__main__":
    sys.exit(main())
