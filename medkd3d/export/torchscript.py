"""TorchScript export in the layout of MONAI's ``ckpt_export``.

TorchScript is deprecated upstream; medkd3d keeps it because MONAI bundles (``ckpt_export``, ``model.ts``) and
their users still rely on it. ONNX is the primary deployment format (see :mod:`medkd3d.export.onnx`).

The traced module is saved with :func:`monai.data.save_net_with_metadata` exactly as ``ckpt_export`` does: the
bundle metadata as the ``metadata.json`` extra file, each config as ``<name>.json`` (here ``inference.json``),
plus ``export.json`` (see :mod:`medkd3d.export.deployment`). ``monai.data.load_net_with_metadata`` reads it back;
:func:`medkd3d.export.embedded.read_torchscript_extra_files` reads the documents without loading the module.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from medkd3d.export.deployment import METADATA_FILE, DeploymentConfig

__all__ = ["export_torchscript"]


def export_torchscript(
    network: nn.Module, example_input: torch.Tensor, path: str | os.PathLike, deployment: DeploymentConfig
) -> Path:
    """Trace ``network`` and save it with the bundle's metadata and configs embedded.

    Args:
        network: the eval-mode network, prepared for export (e.g. EfficientNet's plain swish).
        example_input: an input batch ``[B, *input_shape]`` for tracing.
        path: destination file (``.ts``); written as is, callers handle temporary names.
        deployment: the documents to embed.

    Returns:
        ``path``.
    """
    from monai.data import save_net_with_metadata

    files = deployment.to_json_files()
    with torch.no_grad(), warnings.catch_warnings():
        # jit.trace/jit.save are deprecated upstream (kept for MONAI compatibility) and warn on every call.
        warnings.simplefilter("ignore", FutureWarning)
        # check_trace re-runs the model on the example; the parity check that follows every export does more.
        traced = torch.jit.trace(network, example_input, check_trace=False)
        save_net_with_metadata(
            traced,
            str(path),
            include_config_vals=False,
            append_timestamp=False,
            meta_values=json.loads(files.pop(METADATA_FILE)),
            more_extra_files={name: text.encode() for name, text in files.items()},
        )
    return Path(path)
