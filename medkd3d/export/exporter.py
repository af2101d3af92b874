"""Export a trained bundle to TorchScript, ONNX and TensorRT, each artefact checked against eager PyTorch.

:func:`export_bundle` is what ``medkd3d export`` runs. For every format it writes the artefact under a temporary
name in the output directory, loads it with its runtime (TorchScript and ONNX on the CPU, where the eager reference
runs; a TensorRT engine on its GPU), compares it with the eager network on seeded random inputs and on real
subjects after the bundle's preprocessing (:mod:`medkd3d.export.parity`), writes the report as
``<artefact>.parity.json``, and renames the artefact into place only when the check passes. On a failure the
artefact (and any older one of the same name) is removed and :class:`ParityError` is raised.

The output directory also receives the deployment documents (``metadata.json``, ``inference.json``,
``export.json``, see :mod:`medkd3d.export.deployment`), and for TensorRT the per-layer precision report
``model.engine.layers.json`` and, for INT8, ``calibration.cache``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medkd3d.export.backends import BackendUnavailableError
from medkd3d.export.bundle import BundleModel, load_bundle
from medkd3d.export.deployment import DeploymentConfig
from medkd3d.export.inputs import CalibrationBatches, load_records, network_inputs, synthetic_records
from medkd3d.export.onnx import DEFAULT_OPSET, export_onnx
from medkd3d.export.parity import PRECISION_TOLERANCES, ParityError, ParityReport, ParityTolerance, check_parity
from medkd3d.export.runtime import OnnxRuntime, load_runtime
from medkd3d.export.tensorrt import PRECISIONS, build_engine, engine_layer_report, tensorrt_status
from medkd3d.export.torchscript import export_torchscript
from medkd3d.utils import atomic_write_text, remove_stale_temp_files

__all__ = [
    "ARTEFACT_NAMES",
    "FORMATS",
    "ExportResult",
    "export_bundle",
    "export_engine_from_onnx",
    "export_model",
]

logger = logging.getLogger(__name__)

#: Export formats, in the order they are produced (TensorRT engines are built from the ONNX file).
FORMATS: tuple[str, ...] = ("torchscript", "onnx", "tensorrt")
#: File name of each format's artefact in the output directory.
ARTEFACT_NAMES: dict[str, str] = {"torchscript": "model.ts", "onnx": "model.onnx", "tensorrt": "model.engine"}
_BACKEND_OF_FORMAT = {"torchscript": "torchscript", "onnx": "onnxruntime", "tensorrt": "tensorrt"}


@dataclass
class ExportResult:
    """One checked artefact.

    Args:
        format: ``"torchscript"``, ``"onnx"`` or ``"tensorrt"``.
        path: the artefact.
        parity: its parity report (also written as ``<artefact>.parity.json``).
        files: further files written for it (layer report, calibration cache).
    """

    format: str
    path: Path
    parity: ParityReport
    files: list[Path] = field(default_factory=list)


@dataclass
class _ParityInputs:
    """Input batches per group, the reference model's logits on them, and where the real ones came from."""

    groups: dict[str, list[np.ndarray]]
    expected: dict[str, list[np.ndarray]]
    notes: list[str]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.groups["random"][0].shape[1:])

    @property
    def subject_batch(self) -> int:
        """Network inputs per subject (1 for a 3D network, the number of slice stacks for a 2.5D one)."""
        return max(b.shape[0] for b in self.groups["real"]) if self.groups["real"] else 1


def _real_records(
    data: str | os.PathLike | None, count: int, scratch: Path, bundle: BundleModel | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Up to ``count`` subjects for the parity check, and a note saying where they came from: ``data``, else the
    bundle's ``dataset_dir`` when it exists, else two generated synthetic subjects."""
    if data is not None:
        records = load_records(data)[:count]
        return records, f"real inputs: {len(records)} subjects from {data}"
    dataset_dir = bundle.dataset_dir() if bundle is not None else None
    if dataset_dir is not None:
        try:
            records = load_records(dataset_dir)[:count]
            return records, f"real inputs: {len(records)} subjects from the bundle's dataset_dir {dataset_dir}"
        except (OSError, ValueError) as error:
            logger.warning("Cannot read the bundle's dataset_dir %s (%s).", dataset_dir, error)
    logger.warning(
        "No data for the parity check (pass --data datalist.json): checking on 2 generated synthetic subjects."
    )
    return synthetic_records(scratch), "real inputs: 2 generated synthetic BraTS subjects (no --data given)"


def _parity_inputs(
    deployment: DeploymentConfig,
    reference: Callable[[np.ndarray], np.ndarray],
    data: str | os.PathLike | None,
    count: int,
    seed: int,
    bundle: BundleModel | None = None,
) -> _ParityInputs:
    """Random and real network inputs and the reference model's logits on them."""
    preprocessing, inferer = deployment.build_preprocessing(), deployment.build_inferer()
    with tempfile.TemporaryDirectory(prefix="medkd3d-parity-") as scratch:
        records, note = _real_records(data, count, Path(scratch), bundle)
        real = [network_inputs(r, preprocessing, inferer, len(deployment.class_names)) for r in records]
    rng = np.random.default_rng(seed)
    # Two batch sizes: the export traces the first, the second checks the dynamic batch axis.
    random = [rng.standard_normal((n, *real[0].shape[1:]), dtype=np.float32) for n in (2, 1)]
    groups = {"random": random, "real": real}
    expected = {g: [reference(b) for b in batches] for g, batches in groups.items()}
    return _ParityInputs(groups=groups, expected=expected, notes=[note])


def _tolerance(precision: str, atol: float | None, min_agreement: float | None) -> ParityTolerance:
    """The default tolerance of ``precision`` with the user's overrides."""
    default = PRECISION_TOLERANCES[precision]
    return dataclasses.replace(
        default,
        max_abs_diff=default.max_abs_diff if atol is None else atol,
        min_agreement=default.min_agreement if min_agreement is None else min_agreement,
    )


def _partial_path(final: Path) -> Path:
    """Where this process writes ``final`` before checking it; stale partials of killed exports are removed."""
    remove_stale_temp_files(final)
    return final.with_name(f".{final.stem}.partial-{os.getpid()}{final.suffix}")


def _finalize(partial: Path, final: Path, report: ParityReport) -> None:
    """Keep the artefact when its parity passed; otherwise remove it (and any older one) and raise."""
    report.write(final.with_name(f"{final.name}.parity.json"))
    logger.debug("%s", report.summary())
    if report.passed:
        os.replace(partial, final)
        return
    partial.unlink(missing_ok=True)
    if final.exists():
        logger.warning("Removing %s from an earlier export: it no longer matches this bundle and checkpoint.", final)
        final.unlink()
    raise ParityError(report)


@dataclass
class _TensorRTOptions:
    precision: str = "fp16"
    calib_data: str | os.PathLike | None = None
    calib_batches: int | None = None
    max_batch: int = 8


def _export_checked(
    out: Path,
    formats: Sequence[str],
    exporters: Mapping[str, Callable[[Path], Any]],
    inputs: _ParityInputs,
    deployment: DeploymentConfig,
    trt: _TensorRTOptions,
    atol: float | None,
    min_agreement: float | None,
    onnx_path: Path | None = None,
) -> dict[str, ExportResult]:
    """Write each format to a temporary name, check its parity, keep it only when it passes."""
    results: dict[str, ExportResult] = {}
    for fmt in formats:
        final = out / ARTEFACT_NAMES[fmt]
        partial = _partial_path(final)
        precision = trt.precision if fmt == "tensorrt" else "fp32"
        files: list[Path] = []
        try:
            if fmt == "tensorrt":
                source = results["onnx"].path if "onnx" in results else onnx_path
                files = _build_tensorrt(source, partial, out, inputs.subject_batch, trt, deployment)
            else:
                exporters[fmt](partial)
            # The float32 formats are checked on the CPU, where the eager reference ran, so that the check measures
            # the export. On a GPU the same artefact differs from the CPU by the device's float32 kernels: up to
            # 0.0026 on random inputs on an H200 (cuDNN without TF32), against at most 8e-6 for ONNX Runtime on the
            # CPU, enough to fail an intact HDKD export (benchmarks/results/main_job_seeds.md). TensorRT runs on GPUs
            # only.
            device = "auto" if fmt == "tensorrt" else "cpu"
            runtime = load_runtime(partial, backend=_BACKEND_OF_FORMAT[fmt], device=device)
            report = check_parity(
                runtime, inputs.groups, inputs.expected, _tolerance(precision, atol, min_agreement),
                artefact=final.name, backend=runtime.description, precision=precision, notes=inputs.notes,
            )  # fmt: skip
            del runtime  # release the file (and GPU memory) before renaming it
            _finalize(partial, final, report)
        finally:
            partial.unlink(missing_ok=True)
        if fmt == "tensorrt":
            files += _write_layer_report(final, trt.precision, inputs.subject_batch)
        results[fmt] = ExportResult(fmt, final, report, files)
        deployment.write(out)  # after the first valid artefact, so a directory never holds configs alone
        logger.info("Exported %s (parity passed).", final)
    return results


def export_model(
    bundle: BundleModel,
    out_dir: str | os.PathLike,
    formats: Sequence[str] = ("torchscript", "onnx"),
    parity_data: str | os.PathLike | None = None,
    num_parity_subjects: int = 2,
    atol: float | None = None,
    min_agreement: float | None = None,
    precision: str = "fp16",
    calib_data: str | os.PathLike | None = None,
    calib_batches: int | None = None,
    max_batch: int = 8,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = True,
    seed: int = 0,
) -> dict[str, ExportResult]:
    """Export a loaded bundle model (see :func:`export_bundle` for the arguments)."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"Unknown export format(s) {unknown}; choose from {', '.join(FORMATS)}.")
    formats = [f for f in FORMATS if f in formats or (f == "onnx" and "tensorrt" in formats)]
    if "tensorrt" in formats:
        _require_tensorrt(precision, calib_data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    deployment = bundle.deployment

    def eager(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return bundle.network(torch.from_numpy(batch)).numpy()

    data = parity_data if parity_data is not None else calib_data
    inputs = _parity_inputs(deployment, eager, data, num_parity_subjects, seed, bundle)
    deployment.export_info.update(
        {
            "input_name": "image",
            "output_name": "pred",
            "input_shape": list(inputs.input_shape),
            "inputs_per_subject": inputs.subject_batch,
            "opset": opset,
            "medkd3d_version": _medkd3d_version(),
            "torch_version": torch.__version__,
        }
    )
    example = torch.from_numpy(inputs.groups["random"][0])
    exporters = {
        "torchscript": lambda path: export_torchscript(bundle.network, example, path, deployment),
        "onnx": lambda path: export_onnx(bundle.network, example, path, deployment, opset=opset, dynamo=dynamo),
    }
    trt = _TensorRTOptions(precision, calib_data, calib_batches, max_batch)
    return _export_checked(out, formats, exporters, inputs, deployment, trt, atol, min_agreement)


def export_engine_from_onnx(
    onnx_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    precision: str = "fp16",
    calib_data: str | os.PathLike | None = None,
    calib_batches: int | None = None,
    max_batch: int = 8,
    parity_data: str | os.PathLike | None = None,
    num_parity_subjects: int = 2,
    atol: float | None = None,
    min_agreement: float | None = None,
    seed: int = 0,
) -> dict[str, ExportResult]:
    """Build a checked TensorRT engine from an exported ONNX file alone - the on-device path (e.g. a Jetson).

    Needs neither the bundle nor the checkpoint: the preprocessing comes from the ONNX file's metadata (or the
    configs beside it), and the engine's parity reference is ONNX Runtime on the CPU.

    Args:
        onnx_path: a ``model.onnx`` written by :func:`export_bundle`.
        out_dir: output directory; receives ``model.engine``, its reports, the configs and a copy of the ONNX.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        calib_data: INT8 calibration datalist or dataset folder.
        calib_batches: limit on the calibration batches.
        max_batch: largest batch of the engine's profile.
        parity_data: subjects for the parity check (default: ``calib_data``, else generated synthetic subjects).
        num_parity_subjects: real subjects in the parity check.
        atol: overrides the precision's logit tolerance.
        min_agreement: overrides the precision's class-agreement tolerance.
        seed: seed of the random parity inputs.

    Returns:
        ``{"tensorrt": ExportResult}``.

    Raises:
        ParityError: if the engine is out of tolerance (it is not kept).
    """
    _require_tensorrt(precision, calib_data)
    onnx_path = Path(onnx_path)
    deployment = DeploymentConfig.for_artefact(onnx_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = parity_data if parity_data is not None else calib_data
    inputs = _parity_inputs(deployment, OnnxRuntime(onnx_path, device="cpu"), data, num_parity_subjects, seed)
    inputs.notes.append(f"reference: ONNX Runtime (CPU) on {onnx_path}, not eager PyTorch")
    target = out / ARTEFACT_NAMES["onnx"]
    if target.resolve() != onnx_path.resolve():
        partial = _partial_path(target)
        shutil.copyfile(onnx_path, partial)
        os.replace(partial, target)
    trt = _TensorRTOptions(precision, calib_data, calib_batches, max_batch)
    return _export_checked(out, ["tensorrt"], {}, inputs, deployment, trt, atol, min_agreement, onnx_path=target)


def _require_tensorrt(precision: str, calib_data: str | os.PathLike | None) -> None:
    """Fail before any work when the TensorRT build cannot happen here."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown TensorRT precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if precision == "int8" and calib_data is None:
        raise ValueError("--precision int8 needs --calib-data datalist.json (preprocessed subjects to calibrate on).")
    available, reason = tensorrt_status()
    if not available:
        raise BackendUnavailableError(
            f"Cannot build a TensorRT engine here: {reason}. Export ONNX here and build the engine on the target "
            "device (`medkd3d export --onnx model.onnx --formats tensorrt`, see docs/jetson.md)."
        )


def _build_tensorrt(
    onnx_path: Path, engine_path: Path, out: Path, opt_batch: int, trt: _TensorRTOptions, deployment: DeploymentConfig
) -> list[Path]:
    calibration = cache = None
    if trt.precision == "int8":
        cache = out / "calibration.cache"
        cache.unlink(missing_ok=True)  # a cache from another checkpoint would silently skip calibration
        calibration = CalibrationBatches.from_datalist(
            trt.calib_data, deployment, batch_size=opt_batch, max_batches=trt.calib_batches
        )
    build_engine(
        onnx_path, engine_path, precision=trt.precision, opt_batch=opt_batch, max_batch=max(opt_batch, trt.max_batch),
        calibration=calibration, calibration_cache=cache,
    )  # fmt: skip
    return [cache] if cache is not None and cache.is_file() else []


def _write_layer_report(engine: Path, precision: str, batch: int) -> list[Path]:
    report = engine_layer_report(engine, precision, batch=batch)
    path = atomic_write_text(engine.with_name(f"{engine.name}.layers.json"), json.dumps(report, indent=2))
    logger.info(
        "TensorRT %s layer precisions: %s. %s", precision, report["compute_layer_counts"], " ".join(report["notes"])
    )
    return [path]


def _medkd3d_version() -> str:
    from medkd3d import __version__

    return __version__


def export_bundle(
    bundle_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    formats: Sequence[str] = ("torchscript", "onnx"),
    checkpoint: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, ExportResult]:
    """Export a trained bundle model, checking every artefact against the eager network.

    Args:
        bundle_root: the bundle directory, e.g. ``bundles/brats_student_effnet3d``.
        out_dir: output directory (one per bundle: the deployment documents are shared by its artefacts).
        formats: any of :data:`FORMATS`; ``"tensorrt"`` also exports ONNX (the engine is built from it).
        checkpoint: trained weights; the bundle's ``models/model.pt`` by default.
        overrides: the config overrides the model was trained with, e.g. ``{"spatial_size": [64, 64, 64]}``.
        kwargs: options of the export and its parity check:
            ``parity_data`` (datalist JSON or dataset folder; default: ``calib_data``, else the bundle's
            ``dataset_dir`` when it exists, else two generated synthetic subjects), ``num_parity_subjects`` (2), ``atol`` and
            ``min_agreement`` (override the per-precision :data:`PRECISION_TOLERANCES`),
            ``precision`` of the TensorRT engine (``"fp16"``), ``calib_data`` (INT8 calibration datalist),
            ``calib_batches`` (limit), ``max_batch`` (8, TensorRT profile), ``opset`` (18), ``dynamo`` (True),
            ``seed`` (0). The input shape is what the bundle's preprocessing produces.

    Returns:
        ``{format: ExportResult}``.

    Raises:
        ParityError: if an artefact is out of tolerance (it is not kept).
        FileNotFoundError: if the bundle or the checkpoint is missing.
    """
    bundle = load_bundle(bundle_root, checkpoint=checkpoint, overrides=overrides)
    return export_model(bundle, out_dir, formats, **kwargs)
