"""Load a bundle's trained network and inference configuration: the one bundle loader of medkd3d.

Reads ``configs/inference.json`` and ``configs/metadata.json`` with :class:`monai.bundle.ConfigParser` (the same
files ``ckpt_export`` reads), applies the user's overrides, builds ``network_export`` (or ``network_def``
prepared for export) and loads the checkpoint the way MONAI bundles do (ignite ``Checkpoint.load_objects``,
weights under ``"model"``).

This module sits below :mod:`medkd3d.workflows` (the bundles' glue and ``medkd3d pipeline``), which re-exports
:func:`prepare_for_export` and :func:`load_bundle_network` for the bundle configs; nothing in
:mod:`medkd3d.export` imports :mod:`medkd3d.workflows`.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medkd3d.export.declarative import DOCUMENT_FORMAT, declare_component, validate_document
from medkd3d.export.deployment import DeploymentConfig

__all__ = [
    "BundleModel",
    "bundle_parser",
    "inference_document",
    "load_bundle",
    "load_bundle_network",
    "load_checkpoint",
    "prepare_for_export",
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


def bundle_parser(
    bundle_root: str | os.PathLike, overrides: Mapping[str, Any] | None = None, config: str = "inference.json"
) -> Any:
    """A bundle's config and metadata read by :class:`monai.bundle.ConfigParser`, with ``bundle_root`` and overrides.

    Args:
        bundle_root: the bundle directory (with ``configs/``).
        overrides: config ids and values, e.g. ``{"spatial_size": [64, 64, 64]}``.
        config: the config file in ``configs/``.

    Returns:
        The parser (nothing is instantiated yet).

    Raises:
        FileNotFoundError: if ``config`` or ``metadata.json`` is missing.
    """
    from monai.bundle import ConfigParser

    configs = Path(bundle_root).resolve() / "configs"
    for name in (config, "metadata.json"):
        if not (configs / name).is_file():
            raise FileNotFoundError(
                f"{configs / name} not found; --bundle must be a bundle directory such as bundles/brats_student_effnet3d."
            )
    parser = ConfigParser()
    parser.read_config(str(configs / config))
    parser.read_meta(str(configs / "metadata.json"))
    parser.update({"bundle_root": str(configs.parent), **dict(overrides or {})})
    return parser


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
        "class_names": [str(n) for n in parser.get_parsed_content("class_names")] if "class_names" in parser else [],
        "preprocessing": declare_component(parser, "preprocessing", "transform"),
        "inferer": inferer,
    }
    network_def = parser.get("network_def")
    if isinstance(network_def, Mapping) and isinstance(network_def.get("name"), str):
        document["network_def"] = {"name": network_def["name"]}
    if not document["class_names"]:
        channels = parser.get("_meta_", {}).get("network_data_format", {}).get("outputs", {}).get("pred", {})
        channel_def = channels.get("channel_def") or {}
        document["class_names"] = [str(channel_def[k]) for k in sorted(channel_def, key=int)]
    return validate_document(document, source)


def load_checkpoint(network: nn.Module, path: str | os.PathLike, key: str = "model") -> nn.Module:
    """Load bundle weights strictly, as the bundles' ``CheckpointLoader`` and ``ckpt_export`` do.

    Args:
        network: the network built from the bundle config.
        path: checkpoint file (``{"model": state_dict, ...}`` or a bare state dict).
        key: entry holding the weights in a checkpoint dictionary.

    Returns:
        ``network`` with the weights.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        RuntimeError: naming the file when the weights do not fit the network.
    """
    from ignite.handlers import Checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} not found; train the bundle first or pass --checkpoint PATH.")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if (
        isinstance(checkpoint, Mapping)
        and key not in checkpoint
        and all(torch.is_tensor(v) for v in checkpoint.values())
    ):
        checkpoint = {key: checkpoint}  # a bare state dict
    try:
        Checkpoint.load_objects(to_load={key: network}, checkpoint=checkpoint)
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        raise RuntimeError(
            f"Checkpoint {path} does not fit the bundle's network ({error}). Pass the same --override values the "
            "model was trained with (e.g. spatial_size, network_def#...)."
        ) from error
    return network


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
        overrides: config ids and values, e.g. ``{"spatial_size": [64, 64, 64]}``, as the model was trained.
        config: the inference config file in ``configs/``.
        random_weights: keep the random initial weights when no checkpoint is given and the default one does not
            exist (benchmarks: speed does not depend on the weights).
        net_id: config id of the network, built as defined; by default ``network_export`` when the config has
            it, else ``network_def`` prepared for export.

    Returns:
        The loaded bundle model.

    Raises:
        FileNotFoundError: if the bundle's configs or the checkpoint are missing.
        RuntimeError: if the checkpoint does not fit the network.
    """
    root = Path(bundle_root).resolve()
    configs = root / "configs"
    overrides = dict(overrides or {})
    parser = bundle_parser(root, overrides, config)

    deployment = DeploymentConfig(
        metadata=copy.deepcopy(parser.get("_meta_", {})),
        inference=inference_document(parser, str(configs / config)),
        source=str(configs / config),
    )

    if net_id is None:
        network = prepare_for_export(
            parser.get_parsed_content("network_export" if "network_export" in parser else "network_def")
        )
    else:
        network = parser.get_parsed_content(net_id)

    if checkpoint is None and "ckpt_path" in parser:
        checkpoint = parser.get_parsed_content("ckpt_path")
    checkpoint = Path(checkpoint if checkpoint is not None else root / "models" / "model.pt")
    if checkpoint.is_file() or not random_weights:
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"Checkpoint {checkpoint} of bundle {root.name} not found: train it first "
                f"(python -m monai.bundle run --config_file {configs / 'train.json'}) or pass --checkpoint PATH."
            )
        load_checkpoint(network, checkpoint)
        used: Path | None = checkpoint
    else:
        logger.warning("Bundle %s: no checkpoint at %s, keeping random weights.", root.name, checkpoint)
        used = None
    deployment.export_info.update(
        {"bundle": root.name, "checkpoint": str(used) if used else None, "overrides": overrides, "config": config}
    )
    return BundleModel(root=root, network=network.cpu().eval(), deployment=deployment, parser=parser, checkpoint=used)


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


def tiny_overrides(bundle_root: str | os.PathLike, spatial: int = 32) -> dict[str, Any]:
    """Config overrides that make a bundle's network tiny (the registry's ``tiny_kwargs``), for tests and smoke runs.

    Args:
        bundle_root: a bundle whose ``network_def`` builds a registered model (``_target_`` ``create_model``).
        spatial: edge of the cubic ``spatial_size``.

    Returns:
        ``{"spatial_size": [...], "network_def#<arg>": value, ...}``.

    Raises:
        ValueError: if the bundle's network is not built from the registry.
    """
    from monai.bundle import ConfigParser

    from medkd3d.networks import get_model_entry

    network_def = ConfigParser.load_config_file(str(Path(bundle_root) / "configs" / "inference.json"))["network_def"]
    if not str(network_def.get("_target_", "")).endswith("create_model"):
        raise ValueError(
            f"{bundle_root}: network_def is not built by medkd3d.networks.create_model; no tiny configuration."
        )
    entry = get_model_entry(network_def["name"])
    overrides: dict[str, Any] = {"spatial_size": [spatial] * 3}
    for key, value in entry.tiny_kwargs.items():
        if key == "img_size":  # follows spatial_size in the bundles
            continue
        overrides[f"network_def#{key}"] = list(value) if isinstance(value, tuple) else value
    return overrides
