"""TensorRT engines from the exported ONNX: FP32, FP16 and INT8 (entropy calibration), dynamic batch.

Engines are specific to the GPU and the TensorRT version that built them, so they are built on the target
device (a Jetson builds its own, see ``docs/jetson.md``); the ONNX file is the portable artefact.

- :func:`build_engine` parses the ONNX with ``trt.OnnxParser`` and builds a serialized engine with one
  optimisation profile over the batch axis. FP32 disables TF32 (on by default in TensorRT for Ampere and later),
  so an FP32 engine matches eager FP32. INT8 also enables FP16, so layers without INT8 kernels fall back to FP16
  rather than FP32 - notably depthwise (grouped) 3D convolutions, the core of EfficientNet's MBConv blocks, which
  TensorRT keeps in FP16 under INT8.
- INT8 calibration uses ``IInt8EntropyCalibrator2`` fed by :class:`~medkd3d.export.inputs.CalibrationBatches`
  (preprocessed subjects of a calibration datalist); the calibration cache is saved for rebuilds (``trtexec
  --int8 --calib=...``). TensorRT calibrates with the profile's ``opt`` shape, so the calibration batch size is
  the ``opt`` batch. (TensorRT 10 marks implicit calibration deprecated in favour of explicit Q/DQ models; it
  still works in 10.x, including JetPack 6's 10.3.)
- :func:`engine_layer_report` asks the engine inspector (built with detailed profiling verbosity) which
  precision every layer runs in; :func:`summarize_layer_precisions` condenses it.
- :class:`TensorRTRuntime` runs an engine with PyTorch CUDA tensors as I/O buffers (no pycuda needed).

``tensorrt`` is imported lazily through :func:`monai.utils.optional_import`; without it (or without CUDA)
:func:`tensorrt_status` says why and everything else raises a clear error.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import optional_import

from medkd3d.export.backends import BackendUnavailableError, Runtime

trt, _has_trt = optional_import("tensorrt")

__all__ = [
    "PRECISIONS",
    "TensorRTRuntime",
    "build_engine",
    "engine_layer_report",
    "layer_precision",
    "make_entropy_calibrator",
    "summarize_layer_precisions",
    "tensorrt_status",
]

logger = logging.getLogger(__name__)

#: Engine precisions :func:`build_engine` accepts.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


def tensorrt_status() -> tuple[bool, str]:
    """Whether TensorRT engines can be built and run here, and why not.

    Returns:
        ``(available, reason)``; ``reason`` is empty when available.
    """
    if not _has_trt:
        return False, "the tensorrt package is not installed (pip install 'medkd3d[tensorrt]'; JetPack ships it)"
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible to PyTorch"
    return True, ""


def _require_tensorrt() -> None:
    available, reason = tensorrt_status()
    if not available:
        raise BackendUnavailableError(f"TensorRT is not available: {reason}.")


def _logger() -> Any:
    return trt.Logger(trt.Logger.WARNING)


def make_entropy_calibrator(batches: Iterable[np.ndarray], batch_size: int, cache_file: str | os.PathLike) -> Any:
    """An ``IInt8EntropyCalibrator2`` that copies each batch of ``batches`` to the GPU.

    Args:
        batches: float32 arrays ``[batch_size, *input_shape]`` (e.g. :class:`~medkd3d.export.inputs.CalibrationBatches`).
        batch_size: the batch size every array has.
        cache_file: where TensorRT's calibration cache is written; an existing cache is used instead of the data.

    Returns:
        The calibrator, for ``IBuilderConfig.int8_calibrator``.

    Raises:
        BackendUnavailableError: without TensorRT or CUDA.
    """
    _require_tensorrt()
    cache_path = Path(cache_file)

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 base classes need the explicit call
            self._batches = iter(batches)
            self._device_batch: torch.Tensor | None = None  # kept alive until TensorRT asks for the next batch
            self.num_batches = 0

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            if batch.shape[0] != batch_size:
                raise ValueError(f"Calibration batch of {batch.shape[0]} samples, expected {batch_size}.")
            self._device_batch = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).cuda()
            self.num_batches += 1
            return [int(self._device_batch.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            partial = cache_path.with_name(f".{cache_path.name}.partial-{os.getpid()}")
            partial.write_bytes(bytes(cache))
            os.replace(partial, cache_path)
            logger.info("Saved the INT8 calibration cache to %s.", cache_path)

    return EntropyCalibrator()


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    precision: str = "fp16",
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 8,
    calibration: Iterable[np.ndarray] | None = None,
    calibration_cache: str | os.PathLike | None = None,
    workspace_gib: float = 4.0,
) -> Path:
    """Build a serialized TensorRT engine from an ONNX file.

    Args:
        onnx_path: the exported ONNX (dynamic batch axis on its single input).
        engine_path: destination of the serialized engine; written as is, callers handle temporary names.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"`` (INT8 with FP16 fallback).
        min_batch: smallest batch of the optimisation profile.
        opt_batch: batch TensorRT tunes kernels for (and calibrates with).
        max_batch: largest batch of the optimisation profile.
        calibration: INT8 calibration batches of ``opt_batch`` samples; required for INT8 unless
            ``calibration_cache`` exists.
        calibration_cache: INT8 calibration cache file (read when present, written after calibrating).
        workspace_gib: workspace memory limit of the builder.

    Returns:
        ``engine_path``.

    Raises:
        BackendUnavailableError: without TensorRT or CUDA.
        ValueError: for an unknown precision, inconsistent batch sizes or INT8 without calibration data.
        RuntimeError: if TensorRT cannot parse the ONNX or build the engine (its messages included).
    """
    _require_tensorrt()
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown TensorRT precision {precision!r}; choose one of {', '.join(PRECISIONS)}.")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ValueError(f"Need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}.")
    cache_exists = calibration_cache is not None and Path(calibration_cache).is_file()
    if precision == "int8" and calibration is None and not cache_exists:
        raise ValueError(
            "INT8 needs calibration data: pass --calib-data datalist.json (or an existing calibration cache)."
        )

    trt_logger = _logger()
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    if network.num_inputs != 1:
        raise ValueError(f"{onnx_path}: expected one input, found {network.num_inputs}.")
    model_input = network.get_input(0)
    sample_shape = tuple(model_input.shape)[1:]

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer precisions in the inspector
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    else:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(
        model_input.name, (min_batch, *sample_shape), (opt_batch, *sample_shape), (max_batch, *sample_shape)
    )
    config.add_optimization_profile(profile)
    calibrator = None
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        cache = calibration_cache or Path(engine_path).with_suffix(".calibration.cache")
        calibrator = make_entropy_calibrator(calibration or (), opt_batch, cache)
        config.int8_calibrator = calibrator
        config.set_calibration_profile(profile)

    logger.info(
        "Building a TensorRT %s engine from %s (batch %d..%d, opt %d); this takes minutes.",
        precision, onnx_path, min_batch, max_batch, opt_batch,
    )  # fmt: skip
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}; see the TensorRT log above.")
    if calibrator is not None:
        logger.info("INT8 calibration used %d batches of %d.", calibrator.num_batches, opt_batch)
    Path(engine_path).write_bytes(bytes(serialized))
    return Path(engine_path)


def layer_precision(data_format: str) -> str:
    """The precision named by an engine-inspector ``Format/Datatype`` string (e.g. ``"Row major linear FP16
    format"``, ``"Thirty-two wide channel vectorized row major Int8 format"``, ``"Float"``, ``"Half"``).

    Returns:
        ``"int8"``, ``"fp8"``, ``"fp16"``, ``"bf16"``, ``"fp32"``, ``"int32"``, ``"bool"`` or ``"unknown"``.
    """
    text = data_format.lower()
    for token, name in (
        ("int8", "int8"), ("fp8", "fp8"), ("fp16", "fp16"), ("half", "fp16"), ("bf16", "bf16"),
        ("fp32", "fp32"), ("float", "fp32"), ("int32", "int32"), ("int64", "int64"), ("bool", "bool"),
    ):  # fmt: skip
        if token in text:
            return name
    return "unknown"


#: Inspector layer types that only move or relabel data; they are listed but not counted as compute.
_DATA_MOVEMENT_LAYERS = {"Reformat", "NoOp", "Shuffle", "Constant", "Identity", "Cast"}


def summarize_layer_precisions(engine_information: Mapping[str, Any], precision: str) -> dict[str, Any]:
    """Condense the engine inspector's JSON into per-layer precisions, counts and the depthwise-convolution note.

    A layer's precision is that of its first input (the format its kernel reads; an INT8 convolution reads
    INT8), or of its first output for layers without inputs.

    Args:
        engine_information: parsed ``get_engine_information(LayerInformationFormat.JSON)`` of an engine built
            with ``ProfilingVerbosity.DETAILED`` (layer names alone, from other verbosities, give ``"unknown"``).
        precision: the precision the engine was built for.

    Returns:
        ``{"precision", "layers": [...], "compute_layer_counts": {precision: n}, "depthwise_convolutions":
        {precision: n}, "notes": [...]}``.
    """
    layers = []
    counts: dict[str, int] = {}
    depthwise: dict[str, int] = {}
    for layer in engine_information.get("Layers", []):
        if not isinstance(layer, Mapping):  # LAYER_NAMES_ONLY verbosity gives bare names
            layer = {"Name": str(layer)}
        tensors = list(layer.get("Inputs") or []) or list(layer.get("Outputs") or [])
        layer_prec = layer_precision(str(tensors[0].get("Format/Datatype", ""))) if tensors else "unknown"
        groups = int(layer.get("Groups", 1) or 1)
        is_depthwise = (
            layer.get("ParameterType") == "Convolution" and groups > 1 and groups == layer.get("NbOutputMaps")
        )
        layer_type = str(layer.get("LayerType", "unknown"))
        layers.append(
            {"name": layer.get("Name", ""), "type": layer_type, "precision": layer_prec, "depthwise_conv": is_depthwise}
        )
        if layer_type not in _DATA_MOVEMENT_LAYERS:
            counts[layer_prec] = counts.get(layer_prec, 0) + 1
        if is_depthwise:
            depthwise[layer_prec] = depthwise.get(layer_prec, 0) + 1
    notes = []
    if precision == "int8" and depthwise:
        kept = sum(n for p, n in depthwise.items() if p != "int8")
        notes.append(
            f"{kept} of {sum(depthwise.values())} depthwise convolutions run outside INT8 "
            f"({', '.join(f'{n} {p}' for p, n in sorted(depthwise.items()))}): TensorRT has no INT8 kernels for "
            "depthwise (grouped) 3D convolutions and keeps them in FP16."
        )
    if "unknown" in counts:
        notes.append("Some layer precisions are unknown: build with ProfilingVerbosity.DETAILED to see them.")
    return {
        "precision": precision,
        "layers": layers,
        "compute_layer_counts": counts,
        "depthwise_convolutions": depthwise,
        "notes": notes,
    }


class TensorRTRuntime(Runtime):
    """A serialized TensorRT engine run with PyTorch CUDA tensors as input and output buffers.

    Batches larger than the engine profile's maximum are split into chunks.

    Args:
        path: the ``.engine``/``.plan`` file.
        device: ``"auto"``/``"cuda"`` (GPU 0) or ``"cuda:N"``.

    Raises:
        BackendUnavailableError: without TensorRT or CUDA, or for ``device="cpu"``.
        RuntimeError: if the engine cannot be deserialized (built by another TensorRT version or GPU).
    """

    backend = "tensorrt"

    def __init__(self, path: str | os.PathLike, device: str = "auto") -> None:
        _require_tensorrt()
        if device == "cpu":
            raise BackendUnavailableError(
                "TensorRT engines run on NVIDIA GPUs only; use device='cuda' or another backend."
            )
        super().__init__(path, device)
        self.torch_device = torch.device("cuda" if device == "auto" else device)
        torch.cuda.set_device(self.torch_device)
        self._runtime = trt.Runtime(_logger())
        self.engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise RuntimeError(
                f"{path} cannot be loaded by TensorRT {trt.__version__} on {torch.cuda.get_device_name(self.torch_device)}: "
                "engines only run on the GPU model and TensorRT version that built them. Rebuild it here from the ONNX "
                "(`medkd3d export --formats tensorrt` or trtexec)."
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.stream = torch.cuda.Stream(self.torch_device)

    @property
    def description(self) -> str:
        return f"tensorrt {trt.__version__} ({torch.cuda.get_device_name(self.torch_device)})"

    def run_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a float32 CUDA tensor batch, on the GPU (no host copies; used by the benchmark)."""
        if x.shape[0] > self.max_batch:
            return torch.cat([self.run_tensor(chunk) for chunk in x.split(self.max_batch)])
        x = x.contiguous()
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=torch.float32, device=x.device)
        self.context.set_tensor_address(self.input_name, int(x.data_ptr()))
        self.context.set_tensor_address(self.output_name, int(out.data_ptr()))
        self.stream.wait_stream(torch.cuda.current_stream(x.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to run {self.path} on a batch of shape {tuple(x.shape)}.")
        self.stream.synchronize()
        return out

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.torch_device)
        return self.run_tensor(x).cpu().numpy()


def engine_layer_report(path: str | os.PathLike, precision: str, batch: int = 1) -> dict[str, Any]:
    """Which precision every layer of an engine runs in (engine inspector, shapes set for ``batch``).

    Args:
        path: the serialized engine.
        precision: the precision it was built for (recorded, and used for the INT8 note).
        batch: batch size to resolve dynamic shapes with (formats show as N/A otherwise).

    Returns:
        See :func:`summarize_layer_precisions`.
    """
    runtime = TensorRTRuntime(path)
    sample_shape = tuple(runtime.engine.get_tensor_shape(runtime.input_name))[1:]
    runtime.context.set_input_shape(runtime.input_name, (batch, *sample_shape))
    inspector = runtime.engine.create_engine_inspector()
    inspector.execution_context = runtime.context
    information = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return summarize_layer_precisions(information, precision)
