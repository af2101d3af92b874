"""One inference interface over TensorRT engines, ONNX Runtime and TorchScript.

:func:`load_runtime` returns a :class:`~medkd3d.export.backends.Runtime`: ``runtime(batch) -> logits`` on float32
numpy arrays.
With ``backend="auto"`` it picks, among the artefacts it is given (a file, or an export directory), the first
usable in the order TensorRT engine > ONNX Runtime (CUDA provider, then CPU) > TorchScript; a forced backend
that cannot run here raises an error saying why.

:func:`load_predictor` adds the bundle's own preprocessing and inferer, read from the configuration exported
with the model (:class:`~medkd3d.export.deployment.DeploymentConfig`), so deployed predictions equal the
bundle's ``inference.json`` predictions.

``onnxruntime`` is imported through :func:`monai.utils.optional_import` (``tensorrt`` too, in
:mod:`medkd3d.export.tensorrt`): without it this module still imports, :func:`backend_status` says why the backend
cannot run, ``backend="auto"`` skips it and a forced ONNX Runtime raises :class:`BackendUnavailableError` saying
what to install.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import optional_import

from medkd3d.export.backends import (
    BACKEND_SUFFIXES,
    BACKENDS,
    BackendUnavailableError,
    Runtime,
    backend_of,
    cuda_requested,
)
from medkd3d.export.deployment import CONFIG_FILES, DeploymentConfig
from medkd3d.export.embedded import ONNX_INSTALL_HINT
from medkd3d.export.inputs import preprocess_image
from medkd3d.export.tensorrt import TensorRTRuntime, tensorrt_status

ort, has_ort = optional_import("onnxruntime")

__all__ = [
    "OnnxRuntime",
    "Predictor",
    "TorchScriptRuntime",
    "backend_status",
    "find_artefacts",
    "load_predictor",
    "load_runtime",
    "onnxruntime_status",
    "predictions_csv",
]

logger = logging.getLogger(__name__)


def onnxruntime_status() -> tuple[bool, str]:
    """Whether ONNX Runtime is installed, and why not.

    Returns:
        ``(available, reason)``; ``reason`` is empty when available.
    """
    if not has_ort:
        return False, f"onnxruntime is not installed ({ONNX_INSTALL_HINT})"
    return True, ""


def backend_status(backend: str, device: str = "auto") -> tuple[bool, str]:
    """Whether ``backend`` can run on ``device`` here, and why not.

    Args:
        backend: one of :data:`~medkd3d.export.backends.BACKENDS`.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.

    Returns:
        ``(available, reason)``; ``reason`` is empty when available.

    Raises:
        ValueError: for an unknown backend.
    """
    if backend == "tensorrt":
        if device == "cpu":
            return False, "TensorRT runs on NVIDIA GPUs only and device='cpu' was requested"
        return tensorrt_status()
    if backend == "onnxruntime":
        return onnxruntime_status()
    if backend == "torchscript":
        if cuda_requested(device) and device != "auto" and not torch.cuda.is_available():
            return False, f"device {device!r} was requested but PyTorch sees no CUDA device"
        return True, ""
    raise ValueError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)} or 'auto'.")


class OnnxRuntime(Runtime):
    """ONNX Runtime session, CUDA provider first when a GPU is requested and available, CPU otherwise.

    Args:
        path: the ``.onnx`` file.
        device: ``"auto"`` (CUDA provider when onnxruntime has it and a GPU is present), ``"cpu"`` or ``"cuda[:N]"``.
        threads: intra-op threads of the CPU provider; ``None`` lets ONNX Runtime use one per physical core.
        optimization: graph optimisation level, ``"all"`` (default: constant folding, node fusions, layout
            optimisations), ``"extended"``, ``"basic"`` or ``"disable"``.
    """

    backend = "onnxruntime"

    def __init__(
        self, path: str | os.PathLike, device: str = "auto", threads: int | None = None, optimization: str = "all"
    ) -> None:
        available, reason = onnxruntime_status()
        if not available:
            raise BackendUnavailableError(f"{path} cannot be run with ONNX Runtime: {reason}.")
        super().__init__(path, device)
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[optimization]
        if threads:
            options.intra_op_num_threads = int(threads)
        providers: list[Any] = ["CPUExecutionProvider"]
        if cuda_requested(device):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                index = int(device.split(":")[1]) if ":" in device else 0
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
            elif device != "auto":
                raise BackendUnavailableError(
                    f"{path}: device {device!r} needs onnxruntime's CUDAExecutionProvider, which this onnxruntime "
                    f"lacks (providers: {ort.get_available_providers()}); install onnxruntime-gpu or use device='cpu'."
                )
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    @property
    def description(self) -> str:
        return f"onnxruntime ({self.session.get_providers()[0]})"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}
        return self.session.run([self.output_name], feed)[0]


class TorchScriptRuntime(Runtime):
    """A TorchScript module (e.g. MONAI ``ckpt_export``'s ``model.ts``) run under ``torch.inference_mode``.

    Args:
        path: the ``.ts`` file.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda[:N]"``.
    """

    backend = "torchscript"

    def __init__(self, path: str | os.PathLike, device: str = "auto") -> None:
        super().__init__(path, device)
        self.torch_device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
        with warnings.catch_warnings():  # torch.jit is deprecated upstream; medkd3d keeps it for MONAI's model.ts
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(str(path), map_location=self.torch_device).eval()

    @property
    def description(self) -> str:
        return f"torchscript ({self.torch_device})"

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.torch_device)
            return self.module(x).float().cpu().numpy()


def _runtime_class(backend: str) -> Callable[..., Runtime]:
    return {"tensorrt": TensorRTRuntime, "onnxruntime": OnnxRuntime, "torchscript": TorchScriptRuntime}[backend]


def find_artefacts(path: str | os.PathLike) -> dict[str, Path]:
    """The artefact of each backend at ``path``: the file itself and its same-stem siblings, or in a directory
    the files named ``model.*`` (else the only file of each kind).

    Args:
        path: an artefact file or an export directory.

    Returns:
        ``{backend: file}`` for the backends with an artefact.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; pass an exported model file or the `medkd3d export --out` directory."
        )
    found: dict[str, Path] = {}
    if path.is_file():
        backend = backend_of(path)
        if backend is None:
            raise ValueError(
                f"{path}: unknown model file type {path.suffix!r}; expected one of "
                f"{', '.join(s for suffixes in BACKEND_SUFFIXES.values() for s in suffixes)}."
            )
        found[backend] = path
        siblings = [p for p in path.parent.glob(f"{path.stem}.*") if p.is_file()]
    else:
        siblings = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        preferred = [p for p in siblings if p.stem == "model"]
        siblings = preferred + [p for p in siblings if p.stem != "model"]
    for sibling in siblings:
        backend = backend_of(sibling)
        if backend is not None:
            found.setdefault(backend, sibling)
    return found


def load_runtime(path: str | os.PathLike, backend: str = "auto", device: str = "auto", **kwargs: Any) -> Runtime:
    """Load an exported model for inference.

    Args:
        path: an artefact (``.engine``/``.plan``, ``.onnx``, ``.ts``) or an export directory.
        backend: ``"auto"`` or one of :data:`BACKENDS`. With ``"auto"``, a given file is used when its backend can
            run here and loads it, otherwise (and for a directory) the first artefact that does, in the order of
            :data:`BACKENDS`.
            A forced backend uses the artefact of that kind at ``path`` (the file, or its same-stem sibling).
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        kwargs: backend options, e.g. ``threads`` for ONNX Runtime.

    Returns:
        The runtime.

    Raises:
        BackendUnavailableError: if the forced backend cannot run here or has no artefact, or if no artefact at
            ``path`` can run here.
    """
    artefacts = find_artefacts(path)
    if backend != "auto":
        available, reason = backend_status(backend, device)
        if not available:
            raise BackendUnavailableError(
                f"Backend {backend!r} was requested for {path} but cannot run here: {reason}. "
                "Use --backend auto (or another backend)."
            )
        if backend not in artefacts:
            raise BackendUnavailableError(
                f"No {backend} artefact ({'/'.join(BACKEND_SUFFIXES[backend])}) at {path}; export one with "
                f"`medkd3d export --formats {'onnx' if backend == 'onnxruntime' else backend}`."
            )
        return _runtime_class(backend)(artefacts[backend], device=device, **_options(backend, kwargs))

    given = backend_of(Path(path)) if Path(path).is_file() else None
    order = ([given] if given else []) + [b for b in BACKENDS if b != given]
    skipped = []
    for candidate in order:
        if candidate not in artefacts:
            continue
        available, reason = backend_status(candidate, device)
        if available:
            try:
                runtime = _runtime_class(candidate)(artefacts[candidate], device=device, **_options(candidate, kwargs))
            except Exception as error:  # e.g. an engine built by another TensorRT version: try the next artefact
                reason = f"{type(error).__name__}: {error}"
            else:
                if skipped:
                    logger.warning("Using %s for %s; skipped %s.", candidate, path, "; ".join(skipped))
                return runtime
        skipped.append(f"{artefacts[candidate].name} ({reason})")
    raise BackendUnavailableError(f"No artefact at {path} can run here: {'; '.join(skipped) or 'none found'}.")


def _options(backend: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that apply to ``backend`` (``threads`` and ``optimization`` are ONNX Runtime's)."""
    return dict(options) if backend == "onnxruntime" else {}


class Predictor:
    """Subject-level class probabilities from an exported model, with the bundle's preprocessing and inferer.

    Equivalent to the bundle's ``inference.json``: ``preprocessing`` -> ``inferer`` -> softmax.

    Args:
        runtime: the exported model.
        deployment: the configuration exported with it.
    """

    def __init__(self, runtime: Runtime, deployment: DeploymentConfig) -> None:
        # preprocessing and inferer are rebuilt from the validated declarative document, never evaluated
        self.runtime = runtime
        self.deployment = deployment
        self.class_names = deployment.class_names
        self.preprocessing = deployment.build_preprocessing()
        self.inferer = deployment.build_inferer()

    def logits(self, record: Mapping[str, Any]) -> np.ndarray:
        """Logits ``[num_classes]`` of one datalist record (a subject)."""
        image = preprocess_image(record, self.preprocessing)
        with torch.no_grad():
            return self.inferer(image.unsqueeze(0), self.runtime.as_torch())[0].float().numpy()

    def predict(self, record: Mapping[str, Any]) -> np.ndarray:
        """Class probabilities ``[num_classes]`` (softmax of the logits, as the bundle's postprocessing)."""
        return torch.softmax(torch.from_numpy(self.logits(record)), dim=0).numpy()

    def predict_records(self, records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One row per subject: ``subject``, ``probabilities``, ``predicted`` and ``label`` (class names)."""
        rows = []
        for record in records:
            probabilities = self.predict(record)
            label = record.get("label")
            rows.append(
                {
                    "subject": record.get("subject", ""),
                    "probabilities": probabilities,
                    "predicted": self.class_names[int(np.argmax(probabilities))],
                    "label": self.class_names[int(label)] if label is not None and int(label) >= 0 else "",
                }
            )
        return rows


def load_predictor(path: str | os.PathLike, backend: str = "auto", device: str = "auto", **kwargs: Any) -> Predictor:
    """Load an exported model and its bundle preprocessing (see :func:`load_runtime` for the arguments).

    Raises:
        ValueError: if the exported configuration is neither beside the artefact nor embedded in it.
        UnsafeArtefactError: (a ``ValueError``) if it is not plain, allow-listed data; nothing from it is run.
    """
    # Validate the exported configuration before any model file is deserialised: a refused artefact loads nothing.
    given = Path(path)
    if given.is_file():
        DeploymentConfig.for_artefact(given)
    elif all((given / name).is_file() for name in CONFIG_FILES):
        DeploymentConfig.read_directory(given)
    runtime = load_runtime(path, backend=backend, device=device, **kwargs)
    logger.info("Loaded %s with %s.", runtime.path, runtime.description)
    return Predictor(runtime, DeploymentConfig.for_artefact(runtime.path))


def predictions_csv(rows: Sequence[Mapping[str, Any]], class_names: Sequence[str]) -> str:
    """CSV text in the bundles' format (``ClassProbabilityWriter``): ``subject``, ``prob_<class>``..., ``predicted``, ``label``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["subject", *(f"prob_{name}" for name in class_names), "predicted", "label"])
    for row in rows:
        writer.writerow([row["subject"], *(f"{p:.6f}" for p in row["probabilities"]), row["predicted"], row["label"]])
    return buffer.getvalue()
