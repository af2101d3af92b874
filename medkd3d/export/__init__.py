"""Export and deployment: TorchScript, ONNX and TensorRT artefacts checked against eager PyTorch, one runtime
interface over them with the bundles' own preprocessing, and deployment benchmarks.

- bundles: :func:`load_bundle` (network with trained weights + deployment configs, on the one bundle and
  checkpoint loader :mod:`medkd3d.bundles`), :func:`load_bundle_network`, :func:`bundle_parser`,
  :func:`prepare_for_export` (the bundles' ``network_export``, ``"_target_": "medkd3d.export.prepare_for_export"``);
- export: :func:`export_bundle` (``medkd3d export``), :func:`export_model` (a loaded bundle; ``medkd3d pipeline``),
  :func:`export_engine_from_onnx` (on-device TensorRT), :func:`export_onnx`, :func:`export_torchscript`,
  :func:`build_engine` (TensorRT FP32/FP16/INT8), :class:`CalibrationBatches`;
- parity: :func:`check_parity`, :class:`ParityTolerance`, :class:`ParityReport`, :class:`ParityError`;
- runtimes: :func:`load_runtime` (TensorRT > ONNX Runtime > TorchScript; the :class:`Runtime` interface they share
  is in :mod:`medkd3d.export.backends`), :func:`load_predictor`
  (``medkd3d infer``), :class:`DeploymentConfig` (the bundle configs exported with a model; its preprocessing
  is declarative data checked against an allow-list, never evaluated: :mod:`medkd3d.export.declarative`);
- embedded documents: :func:`read_onnx_metadata`, :func:`read_torchscript_extra_files`
  (:mod:`medkd3d.export.embedded`, the deployment documents inside artefact files);
- benchmarks: :mod:`medkd3d.export.bench` (``medkd3d bench``; its measuring worker
  :mod:`medkd3d.export.bench_worker` and report :mod:`medkd3d.export.bench_report`).

``onnx``, ``onnxruntime`` and ``tensorrt`` are optional (``pip install 'medkd3d[export]'``, ``'medkd3d[tensorrt]'``):
they are imported through :func:`monai.utils.optional_import`, so this package imports without them and a feature
that needs a missing one says what to install.
"""

from __future__ import annotations

from medkd3d.utils import lazy_exports

#: Public name -> submodule; loaded on first access (PEP 562) so ``medkd3d --help`` does not import torch.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        [
            "BundleModel",
            "bundle_parser",
            "load_bundle",
            "load_bundle_network",
            "prepare_for_export",
            "tiny_overrides",
        ],
        "bundle",
    ),
    **dict.fromkeys(["CONFIG_FILES", "DeploymentConfig"], "deployment"),
    **dict.fromkeys(["UnsafeArtefactError", "validate_document"], "declarative"),
    **dict.fromkeys(
        [
            "ARTEFACT_NAMES",
            "FORMATS",
            "ExportResult",
            "export_bundle",
            "export_engine_from_onnx",
            "export_model",
        ],
        "exporter",
    ),
    **dict.fromkeys(
        [
            "CalibrationBatches",
            "NetworkInputRecorder",
            "load_records",
            "network_inputs",
            "preprocess_image",
            "synthetic_records",
        ],
        "inputs",
    ),
    **dict.fromkeys(["DEFAULT_OPSET", "export_onnx"], "onnx"),
    **dict.fromkeys(["read_onnx_metadata", "read_torchscript_extra_files"], "embedded"),
    **dict.fromkeys(
        ["PRECISION_TOLERANCES", "ParityError", "ParityReport", "ParityTolerance", "check_parity", "compare_logits"],
        "parity",
    ),
    **dict.fromkeys(["BACKENDS", "BackendUnavailableError", "Runtime"], "backends"),
    **dict.fromkeys(
        [
            "OnnxRuntime",
            "Predictor",
            "TorchScriptRuntime",
            "backend_status",
            "find_artefacts",
            "load_predictor",
            "load_runtime",
            "predictions_csv",
        ],
        "runtime",
    ),
    **dict.fromkeys(
        ["TensorRTRuntime", "build_engine", "engine_layer_report", "summarize_layer_precisions", "tensorrt_status"],
        "tensorrt",
    ),
    **dict.fromkeys(["export_torchscript"], "torchscript"),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
