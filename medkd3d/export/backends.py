"""What every inference backend shares: the :class:`Runtime` interface, the error of an unavailable backend, and
the backends' names and artefact suffixes.

The backends themselves (:mod:`medkd3d.export.runtime` for ONNX Runtime and TorchScript,
:mod:`medkd3d.export.tensorrt` for TensorRT) build on this module, and :func:`medkd3d.export.runtime.load_runtime`
chooses among them; keeping the shared part here lets the runtime loader import the TensorRT backend without the
TensorRT backend importing the loader.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "BACKEND_SUFFIXES",
    "BackendUnavailableError",
    "Runtime",
    "backend_of",
    "cuda_requested",
]

#: Backends in the order ``backend="auto"`` tries them.
BACKENDS: tuple[str, ...] = ("tensorrt", "onnxruntime", "torchscript")
#: File suffixes of each backend's artefacts.
BACKEND_SUFFIXES: dict[str, tuple[str, ...]] = {
    "tensorrt": (".engine", ".plan"),
    "onnxruntime": (".onnx",),
    "torchscript": (".ts", ".pt"),
}


class BackendUnavailableError(RuntimeError):
    """A requested backend cannot run on this machine, or no artefact for it was found."""


def backend_of(path: Path) -> str | None:
    """The backend whose artefacts have ``path``'s suffix, or ``None``."""
    return next((b for b, suffixes in BACKEND_SUFFIXES.items() if path.suffix in suffixes), None)


def cuda_requested(device: str) -> bool:
    """Whether ``device`` (``"auto"``, ``"cpu"``, ``"cuda[:N]"``) asks for a GPU; ``"auto"`` does when one is visible."""
    if device == "auto":
        return torch.cuda.is_available()
    return device.startswith("cuda")


class Runtime(abc.ABC):
    """An exported model ready to run: ``runtime(batch) -> logits``.

    Args:
        path: the artefact.
        device: ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
    """

    backend: str = ""

    def __init__(self, path: str | os.PathLike, device: str = "auto") -> None:
        self.path = Path(path)
        self.device = device

    @abc.abstractmethod
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Logits ``[B, num_classes]`` float32 of a ``[B, *input_shape]`` float32 batch."""

    @property
    def description(self) -> str:
        """Backend and device, for logs and reports."""
        return f"{self.backend} ({self.device})"

    def as_torch(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The runtime as a tensor-to-tensor callable, the ``network`` argument of MONAI inferers."""

        def network(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            logits = self(x.detach().cpu().numpy())
            return torch.from_numpy(logits).to(x.device)

        return network
