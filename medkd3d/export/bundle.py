"""A bundle's trained network and the configuration deployed with it: :func:`load_bundle` for the exporters.

Finding and parsing the bundle, locating, checking and loading its checkpoint and building the network the
checkpoint was trained as are :mod:`medkd3d.bundles`' job (:func:`medkd3d.bundles.build_bundle_network`); this
module adds what an export needs on top: the export-safe network (``network_export``, or ``network_def`` prepared
for export) and the declarative inference document (:func:`inference_document`) and metadata it ships with.

The checkpoint-configuration helpers (:func:`run_config`, which the bundles' ``checkpoint_config`` builds, and
:func:`attach_config`, :func:`read_checkpoint_config`, ...) and :func:`tiny_overrides` are :mod:`medkd3d.bundles`'
and re-exported here for the bundle configs and callers that name them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from medkd3d.bundles import (
    CONFIG_KEY,
    attach_config,
    build_bundle_network,
    bundle_parser,
    check_checkpoint_config,
    checkpoint_config,
    class_names_of,
    network_arguments,
    read_checkpoint_config,
    run_config,
    tiny_overrides,
)
from medkd3d.export.declarative import DOCUMENT_FORMAT, declare_component, validate_document
from medkd3d.export.deployment import DeploymentConfig

__all__ = [
    "CONFIG_KEY",
    "BundleModel",
    "attach_config",
    "bundle_parser",
    "check_checkpoint_config",
    "checkpoint_config",
    "inference_document",
    "load_bundle",
    "load_bundle_network",
    "network_arguments",
    "prepare_for_export",
    "read_checkpoint_config",
    "run_config",
    "tiny_overrides",
]

logger = logging.getLogger(__name__)


@dataclass
class BundleModel:
    """A bundle's network ready for export, and the configuration deployed with it.

    Args:
        root: bundle directory.
        network: the eval-mode CPU network with trained weights, prepared for export.
        deployment: metadata and the declarative inference document (:func:`inference_document`; its
            ``export_info`` is completed by the exporter).
        parser: the bundle's parsed inference config (to resolve e.g. ``dataset_dir``).
        checkpoint: the loaded checkpoint, ``None`` for random weights.
    """

    root: Path
    network: nn.Module
    deployment: DeploymentConfig
    parser: Any
    checkpoint: Path | None

    @property
    def name(self) -> str:
        return self.root.name

    def dataset_dir(self) -> Path | None:
        """The bundle's ``dataset_dir`` when the config defines it and it exists."""
        if "dataset_dir" not in self.parser:
            return None
        try:
            path = Path(str(self.parser.get_parsed_content("dataset_dir")))
        except Exception:  # an expression that cannot be evaluated here means "no default data"
            return None
        return path if path.is_dir() else None


def prepare_for_export(network: nn.Module) -> nn.Module:
    """Make a network export-safe (e.g. EfficientNet's plain swish instead of a custom autograd function).

    Bundles use it as ``network_export`` (the network id of ``ckpt_export`` and of ``inference_trt.json``);
    networks without a ``prepare_for_export`` method are returned unchanged.

    Args:
        network: a medkd3d network.

    Returns:
        The same network, modified in place.
    """
    prepare = getattr(network, "prepare_for_export", None)
    if callable(prepare):
        prepare()
    return network


def inference_document(parser: Any, source: str) -> dict[str, Any]:
    """The declarative inference document a bundle's export carries (see :mod:`medkd3d.export.declarative`).

    The trusted bundle config is resolved here, once, into allow-listed transforms with plain values, so that
    whoever runs the exported model never evaluates a config.

    Args:
        parser: the bundle's parser (overrides applied).
        source: the config file, for error messages.

    Returns:
        ``{"format", "class_names", "preprocessing", "inferer", "network_def"}``.

    Raises:
        ValueError: if the bundle's preprocessing or inferer cannot be expressed as allow-listed plain data.
    """
    if "preprocessing" not in parser:
        raise ValueError(f"{source} defines no 'preprocessing'; an exported model needs it.")
    inferer = declare_component(parser, "inferer", "inferer")[0] if "inferer" in parser else {
        "transform": "SimpleInferer", "args": {}
    }  # fmt: skip
    document: dict[str, Any] = {
        "format": DOCUMENT_FORMAT,
        "class_names": class_names_of(parser),
        "preprocessing": declare_component(parser, "preprocessing", "transform"),
        "inferer": inferer,
    }
    network_def = parser.get("network_def")
    if isinstance(network_def, Mapping) and isinstance(network_def.get("name"), str):
        document["network_def"] = {"name": network_def["name"]}
    return validate_document(document, source)


def load_bundle(
    bundle_root: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    config: str = "inference.json",
    random_weights: bool = False,
    net_id: str | None = None,
) -> BundleModel:
    """Build a bundle's network with trained weights and its deployment configuration.

    Args:
        bundle_root: the bundle directory (with ``configs/``).
        checkpoint: weights to load; the config's ``ckpt_path`` (``models/model.pt``) by default.
        overrides: config ids and values over the configuration the checkpoint records (which is applied first,
            see :func:`medkd3d.bundles.build_bundle_network`), e.g. ``{"dataset_dir": ...}``.
        config: the inference config file in ``configs/``.
        random_weights: keep the random initial weights unless ``checkpoint`` is given and exists; the bundle's
            own ``ckpt_path`` / ``models/model.pt`` is never read then, whatever the working tree holds
            (benchmarks: speed does not depend on the weights).
        net_id: config id of the network, built as defined; by default ``network_export`` when the config has
            it, else ``network_def`` prepared for export.

    Returns:
        The loaded bundle model.

    Raises:
        FileNotFoundError: if the bundle's configs or the checkpoint are missing
            (:func:`medkd3d.bundles.require_checkpoint`).
        ValueError: if the checkpoint was trained with another ``spatial_size``, network arguments, class names or
            slice settings than ``overrides`` give (:func:`check_checkpoint_config`).
        RuntimeError: if the checkpoint does not fit the network.
    """
    built = build_bundle_network(
        bundle_root,
        checkpoint,
        overrides,
        config,
        net_ids=(net_id,) if net_id else ("network_export", "network_def"),
        random_weights=random_weights,
    )
    network = built.network if net_id else prepare_for_export(built.network)
    source = str(built.root / "configs" / config)
    deployment = DeploymentConfig(
        metadata=built.metadata,
        inference=inference_document(built.parser, source),
        source=source,
    )
    deployment.export_info.update(
        {"bundle": built.root.name, "checkpoint": str(built.checkpoint) if built.checkpoint else None,
         "overrides": built.overrides, "config": config}
    )  # fmt: skip
    return BundleModel(
        root=built.root, network=network, deployment=deployment, parser=built.parser, checkpoint=built.checkpoint
    )


def load_bundle_network(
    bundle_root: str | os.PathLike,
    ckpt_file: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    config: str = "inference.json",
    net_id: str | None = None,
) -> nn.Module:
    """A bundle's network with trained weights, on CPU, in eval mode (:func:`load_bundle` without the rest).

    Args:
        bundle_root: the bundle directory.
        ckpt_file: checkpoint written by the bundle (weights under ``"model"``, or a bare state dict).
        overrides: config overrides the model was trained with (e.g. ``spatial_size``, ``network_def#...``).
        config: config file defining the network.
        net_id: config id of the network (e.g. ``"network_def"`` as trained); by default the export-safe one.

    Returns:
        The network with the checkpoint's weights.

    Raises:
        FileNotFoundError: if the configs or the checkpoint are missing.
        RuntimeError: if the checkpoint does not fit the network.
    """
    return load_bundle(bundle_root, checkpoint=ckpt_file, overrides=overrides, config=config, net_id=net_id).network
