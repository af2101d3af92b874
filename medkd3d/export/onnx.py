"""ONNX export, the primary deployment format: opset 18, a dynamic batch axis, input ``image``, output ``pred``.

The bundle's documents (see :mod:`medkd3d.export.deployment`) are stored in the model's ``metadata_props``
under their file names (:mod:`medkd3d.export.embedded`), so an ``.onnx`` file copied alone to a device still
knows its preprocessing. Without the ``onnx`` package :func:`export_onnx` raises an ``OptionalImportError`` that
says what to install, before any export work.

Export goes through the ``torch.export``-based exporter (PyTorch's default since 2.9). A network that
``torch.export`` cannot capture falls back, with a warning, to the TorchScript-based exporter, which PyTorch
deprecates but still ships.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from medkd3d.export.deployment import DeploymentConfig
from medkd3d.export.embedded import require_onnx, write_onnx_metadata

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "export_onnx"]

logger = logging.getLogger(__name__)

#: The opset medkd3d exports (TensorRT 10.3 on JetPack 6 parses opsets up to 20).
DEFAULT_OPSET = 18
#: The oldest opset the networks are guaranteed to export to.
MIN_OPSET = 17


@contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Raise the given loggers to WARNING for a while (onnxscript logs every optimisation pass at INFO)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(
    network: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike,
    deployment: DeploymentConfig,
    opset: int = DEFAULT_OPSET,
    dynamo: bool = True,
) -> Path:
    """Export ``network`` to one self-contained ONNX file with a dynamic batch axis and the bundle's metadata.

    Args:
        network: the eval-mode network, prepared for export.
        example_input: an input batch ``[B, *input_shape]``; ``B >= 2`` keeps ``torch.export`` from specialising
            the batch size.
        path: destination file; written as is, callers handle temporary names.
        deployment: the documents to store in ``metadata_props``; its input and output names name the graph's.
        opset: ONNX opset, at least :data:`MIN_OPSET`.
        dynamo: use the ``torch.export``-based exporter (falls back to the TorchScript-based one on failure);
            ``False`` uses the TorchScript-based exporter directly.

    Returns:
        ``path``.

    Raises:
        ValueError: if ``opset < MIN_OPSET`` or the example batch has fewer than 2 samples.
        OptionalImportError: without the ``onnx`` package.
    """
    require_onnx("ONNX export")
    if opset < MIN_OPSET:
        raise ValueError(f"ONNX export needs opset >= {MIN_OPSET} (got {opset}); pass --opset {DEFAULT_OPSET}.")
    if example_input.shape[0] < 2:
        raise ValueError(
            f"The example input needs a batch of at least 2 to export a dynamic batch axis, got {tuple(example_input.shape)}."
        )
    path = Path(path)
    names = {"input_names": [deployment.input_name], "output_names": [deployment.output_name]}
    with torch.no_grad(), warnings.catch_warnings(), _quiet_loggers("onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore", DeprecationWarning)
        exported = False
        if dynamo:
            try:
                batch = torch.export.Dim("batch", min=1)
                torch.onnx.export(
                    network, (example_input,), str(path), dynamo=True, dynamic_shapes=({0: batch},), verbose=False,
                    opset_version=opset, external_data=False, **names,
                )  # fmt: skip
                exported = True
            except Exception as error:  # torch.export raises many error types for code it cannot capture
                logger.warning(
                    "torch.export could not capture %s (%s: %s); using the TorchScript-based ONNX exporter instead.",
                    type(network).__name__, type(error).__name__, str(error).splitlines()[0] if str(error) else "",
                )  # fmt: skip
        if not exported:
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)  # informational
            axes = {deployment.input_name: {0: "batch"}, deployment.output_name: {0: "batch"}}
            torch.onnx.export(
                network, (example_input,), str(path), dynamo=False, dynamic_axes=axes, opset_version=opset, **names
            )
    doc_string = str(deployment.metadata.get("name") or deployment.metadata.get("description") or "")
    write_onnx_metadata(path, deployment.to_json_files(), doc_string)
    return path
