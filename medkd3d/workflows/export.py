"""Export of trained bundle models, and loading them back for checks and profiling.

:data:`EXPORTERS` maps a format name to a function ``(bundle_root, ckpt_file, out_dir, input_shape, overrides)
-> Path``; ``medkd3d pipeline`` runs every registered exporter and reports the files. TorchScript goes through
MONAI's ``ckpt_export`` (the bundles' own export path). This is the extension point for the deployment formats:
decorate an ONNX (or TensorRT) exporter with ``@register_exporter("onnx")`` and import its module at the end of
this one; the pipeline then exports, reports and lists it next to TorchScript.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "EXPORTERS",
    "Exporter",
    "export_torchscript",
    "load_bundle_network",
    "prepare_for_export",
    "register_exporter",
    "torchscript_max_abs_diff",
]

logger = logging.getLogger(__name__)

Exporter = Callable[[str | os.PathLike, str | os.PathLike, str | os.PathLike, Sequence[int], Mapping[str, Any]], Path]

#: Export formats run by ``medkd3d pipeline``, in order: name -> exporter.
EXPORTERS: dict[str, Exporter] = {}


def register_exporter(name: str) -> Callable[[Exporter], Exporter]:
    """Decorator adding an exporter to :data:`EXPORTERS` under ``name`` (e.g. ``"onnx"``)."""

    def decorator(exporter: Exporter) -> Exporter:
        EXPORTERS[name] = exporter
        return exporter

    return decorator


def prepare_for_export(network: nn.Module) -> nn.Module:
    """Make a network export-safe (e.g. EfficientNet's plain swish instead of a custom autograd function).

    Bundles use it as ``network_export``, the network id of ``ckpt_export``; networks without a
    ``prepare_for_export`` method are returned unchanged.

    Args:
        network: a medkd3d network.

    Returns:
        The same network, modified in place.
    """
    prepare = getattr(network, "prepare_for_export", None)
    if callable(prepare):
        prepare()
    return network


def _bundle_parser(bundle_root: str | os.PathLike, config: str, overrides: Mapping[str, Any]) -> Any:
    from monai.bundle import ConfigParser

    configs = Path(bundle_root) / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / config))
    parser.read_meta(str(configs / "metadata.json"))
    parser.update({"bundle_root": str(bundle_root), **overrides})
    return parser


def load_bundle_network(
    bundle_root: str | os.PathLike,
    ckpt_file: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    config: str = "inference.json",
    net_id: str = "network_export",
) -> nn.Module:
    """Build a bundle's network from its config and load trained weights, on CPU, in eval mode.

    Args:
        bundle_root: the bundle directory.
        ckpt_file: checkpoint written by the bundle (its network's state dict).
        overrides: config overrides the model was trained with (e.g. ``spatial_size``, ``network_def#...``).
        config: config file defining ``net_id``.
        net_id: config id of the network.

    Returns:
        The network with the checkpoint's weights.
    """
    from medkd3d.engines import load_teacher_checkpoint

    network = _bundle_parser(bundle_root, config, dict(overrides or {})).get_parsed_content(net_id)
    load_teacher_checkpoint(network, ckpt_file)
    return network.cpu().eval()


@register_exporter("torchscript")
def export_torchscript(
    bundle_root: str | os.PathLike,
    ckpt_file: str | os.PathLike,
    out_dir: str | os.PathLike,
    input_shape: Sequence[int],
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Export a trained bundle model to TorchScript with MONAI's ``ckpt_export`` (traced, configs embedded).

    Equivalent to ``python -m monai.bundle ckpt_export network_export --use_trace True --input_shape ...``;
    the file is written under a temporary name and renamed, so a failed export leaves no partial ``model.ts``.

    Args:
        bundle_root: the bundle directory (its ``configs/inference.json`` defines the network).
        ckpt_file: the trained checkpoint.
        out_dir: directory of ``model.ts``.
        input_shape: example input shape with batch dimension, e.g. ``[1, 4, 128, 128, 128]``.
        overrides: the config overrides the model was trained with.

    Returns:
        The path of ``model.ts``.
    """
    from monai.bundle import ckpt_export

    configs = Path(bundle_root) / "configs"
    target = Path(out_dir) / "model.ts"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".model.partial-{os.getpid()}.ts")
    try:
        ckpt_export(
            net_id="network_export",
            filepath=str(partial),
            ckpt_file=str(ckpt_file),
            meta_file=str(configs / "metadata.json"),
            config_file=str(configs / "inference.json"),
            key_in_ckpt="model",
            use_trace=True,
            input_shape=list(input_shape),
            bundle_root=str(bundle_root),
            **dict(overrides or {}),
        )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    logger.info("Exported %s to %s.", ckpt_file, target)
    return target


def torchscript_max_abs_diff(
    torchscript_file: str | os.PathLike, network: nn.Module, input_shape: Sequence[int], seed: int = 0
) -> float:
    """Largest absolute difference between a TorchScript model's logits and the eager network's on one input.

    Args:
        torchscript_file: the exported ``model.ts``.
        network: the eager network with the same weights, in eval mode.
        input_shape: input shape with batch dimension.
        seed: seed of the random input.

    Returns:
        ``max |ts(x) - network(x)|``.
    """
    scripted = torch.jit.load(str(torchscript_file), map_location="cpu").eval()
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((scripted(x) - network(x)).abs().max())
