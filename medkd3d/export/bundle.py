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
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

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
    "load_checkpoint",
    "network_arguments",
    "prepare_for_export",
    "read_checkpoint_config",
    "run_config",
    "tiny_overrides",
]

logger = logging.getLogger(__name__)

#: Entry of a checkpoint dictionary (``last.pt``) with the configuration the checkpoint was trained with.
CONFIG_KEY = "config"
#: Where a bare state dict (``model.pt``, as MONAI's ``CheckpointSaver`` writes a single object) keeps it: in the
#: dict's ``_metadata``, which ``load_state_dict`` only reads per module prefix, so every strict loader (MONAI's
#: ``CheckpointLoader``, ``ckpt_export``, the teacher loader) still accepts the file unchanged.
_METADATA_KEY = "medkd3d:config"
#: Recorded settings a loader compares with its own (the others are informative).
_CHECKED_KEYS = ("spatial_size", "network_def", "class_names", "num_slices", "slice_axis", "num_stacks")


def _plain(value: Any) -> Any:
    """``value`` as JSON-like data (dicts, lists, str, int, float, bool, None) that ``weights_only`` loading reads."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if torch.is_tensor(value):
        return _plain(value.tolist())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # e.g. a torch.device or an enum: recorded for the reader, compared as text


def network_arguments(network: nn.Module) -> dict[str, Any] | None:
    """The registry name and build arguments of a network made by :func:`medkd3d.networks.create_model`.

    Args:
        network: a network (wrappers with ``.module`` are looked through).

    Returns:
        ``{"name": ..., <kwargs>}`` as plain data, ``None`` for a network not built from the registry.
    """
    args = getattr(network, "model_args", None) or getattr(getattr(network, "module", None), "model_args", None)
    return _plain(args) if isinstance(args, Mapping) else None


def run_config(
    bundle: str,
    network: nn.Module,
    spatial_size: Any,
    class_names: Any,
    num_slices: int | None = None,
    slice_axis: int | None = None,
    num_stacks: int | None = None,
) -> dict[str, Any]:
    """The configuration a bundle trains with, as plain data for its checkpoints (``config``).

    Args:
        bundle: the bundle name.
        network: the built ``network_def`` (its :func:`network_arguments` are recorded).
        spatial_size: the training ``spatial_size``.
        class_names: class names in label-index order.
        num_slices: slices per stack (2.5D bundles).
        slice_axis: slicing axis (2.5D bundles).
        num_stacks: stacks per subject (2.5D bundles).

    Returns:
        ``{"bundle", "network_def", "spatial_size", "class_names"}`` plus the slice settings that are given.
    """
    config = {
        "bundle": str(bundle),
        "network_def": network_arguments(network),
        "spatial_size": _plain(spatial_size),
        "class_names": [str(name) for name in class_names],
    }
    slices = {"num_slices": num_slices, "slice_axis": slice_axis, "num_stacks": num_stacks}
    config.update({key: int(value) for key, value in slices.items() if value is not None})
    return config


def attach_config(checkpoint: Any, config: Mapping[str, Any]) -> Any:
    """A copy of ``checkpoint`` (what is about to be saved) that carries ``config``.

    Args:
        checkpoint: a checkpoint dictionary (``{"model": ..., "optimizer": ...}``) or a bare state dict.
        config: plain data (:func:`run_config`).

    Returns:
        The dictionary with ``config`` under :data:`CONFIG_KEY`; a bare state dict with it in its ``_metadata``.
    """
    # a module's state dict always has ``_metadata``; a new ``"config"`` key would break its strict loading
    if hasattr(checkpoint, "_metadata") or all(torch.is_tensor(v) for v in checkpoint.values()):
        # a shallow copy: the tensors are shared, the caller's dict and its ``_metadata`` are left as they are
        state = copy.copy(checkpoint) if hasattr(checkpoint, "_metadata") else OrderedDict(checkpoint)
        state._metadata = OrderedDict({**getattr(checkpoint, "_metadata", {}), _METADATA_KEY: _plain(config)})
        return state
    return {**checkpoint, CONFIG_KEY: _plain(config)}


def checkpoint_config(checkpoint: Any) -> dict[str, Any] | None:
    """The training configuration a loaded checkpoint carries (see :func:`attach_config`), ``None`` when it has none."""
    recorded = getattr(checkpoint, "_metadata", {}).get(_METADATA_KEY) if hasattr(checkpoint, "_metadata") else None
    if recorded is None and isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(CONFIG_KEY), Mapping):
        recorded = checkpoint[CONFIG_KEY]
    return dict(recorded) if isinstance(recorded, Mapping) else None


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The training configuration of the checkpoint file ``path`` (``weights_only`` loading), ``None`` if none."""
    try:  # memory-mapped: only the small pickle is read, not the weights
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint_config(checkpoint)


def recorded_overrides(recorded: Mapping[str, Any] | None, parser: Any) -> dict[str, Any]:
    """A checkpoint's recorded training configuration as config overrides of a bundle config.

    So ``medkd3d export --bundle`` (and everything that loads a bundle checkpoint through :func:`load_bundle`)
    builds the network the checkpoint was trained as - a model trained at 32^3 with a slimmed teacher exports at
    32^3 with that teacher - without the user repeating the training overrides.

    Args:
        recorded: :func:`read_checkpoint_config` of the checkpoint (``None``: an older checkpoint, nothing to use).
        parser: the bundle config the network is built from; only ids it has are overridden.

    Returns:
        ``{"spatial_size": ..., "class_names": ..., "network_def#<argument>": ..., ...}``.
    """
    if not recorded:
        return {}
    found = {key: recorded[key] for key in _CHECKED_KEYS if key != "network_def" and key in recorded and key in parser}
    if "network_def" in parser and isinstance(recorded.get("network_def"), Mapping):
        found.update(
            {f"network_def#{arg}": value for arg, value in recorded["network_def"].items() if arg != "name"}
        )
    return found


def check_checkpoint_config(path: str | os.PathLike, requested: Mapping[str, Any]) -> dict[str, Any] | None:
    """Refuse to load a checkpoint into a configuration other than the one it was trained with.

    Args:
        path: the checkpoint file.
        requested: the values about to be used (keys as in :func:`run_config`; ``None`` values are not checked).

    Returns:
        The recorded configuration, ``None`` for an older checkpoint without one (a warning is logged).

    Raises:
        ValueError: naming the checkpoint, the setting, the recorded and requested values and the override to pass.
    """
    return compare_checkpoint_config(path, read_checkpoint_config(path), requested)


def compare_checkpoint_config(
    path: str | os.PathLike, recorded: Mapping[str, Any] | None, requested: Mapping[str, Any]
) -> dict[str, Any] | None:
    """:func:`check_checkpoint_config` for a configuration already read from ``path`` (no second read of the file).

    Args:
        path: the checkpoint file, named in the messages.
        recorded: its :func:`read_checkpoint_config`.
        requested: the values about to be used.

    Returns:
        ``recorded``, ``None`` when there is none (a warning is logged).

    Raises:
        ValueError: as :func:`check_checkpoint_config`.
    """
    if recorded is None:
        logger.warning(
            "Checkpoint %s records no training configuration (written by an older medkd3d): its spatial_size, "
            "network arguments and class names cannot be checked against this run.",
            path,
        )
        return None
    for key in _CHECKED_KEYS:
        old, new = recorded.get(key), _plain(requested.get(key))
        if old is None or new is None or old == new:
            continue
        if key == "network_def" and isinstance(old, Mapping) and isinstance(new, Mapping):
            # arguments given on one side only are left at a default the checkpoint does not know: not compared
            # (a different value there still fails the strict weight loading, if it changes the weights)
            differing = [arg for arg in sorted(old.keys() & new.keys()) if old[arg] != new[arg]]
            if not differing:
                continue
            fixes = " ".join(f"network_def#{arg}={json.dumps(old.get(arg))}" for arg in differing if arg != "name")
            raise ValueError(
                f"Checkpoint {path} was trained with network_def {old} but this run builds {new} (differing: "
                f"{', '.join(differing)}). Pass the training values, e.g. --override {fixes or 'network_def#name=...'}, "
                "or use a checkpoint trained with this configuration."
            )
        raise ValueError(
            f"Checkpoint {path} was trained with {key}={json.dumps(old)} but this run uses {key}={json.dumps(new)}. "
            f"Pass the training value (--override {key}={json.dumps(old, separators=(',', ':'))}) or use a "
            "checkpoint trained with this configuration."
        )
    return dict(recorded)


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
        random_weights: keep the random initial weights unless ``checkpoint`` is given and exists; the bundle's
            own ``ckpt_path`` / ``models/model.pt`` is never read then, whatever the working tree holds
            (benchmarks: speed does not depend on the weights).
        net_id: config id of the network, built as defined; by default ``network_export`` when the config has
            it, else ``network_def`` prepared for export.

    Returns:
        The loaded bundle model.

    Raises:
        FileNotFoundError: if the bundle's configs or the checkpoint are missing.
        ValueError: if the checkpoint was trained with another ``spatial_size``, network arguments, class names or
            slice settings than ``overrides`` give (:func:`check_checkpoint_config`).
        RuntimeError: if the checkpoint does not fit the network.
    """
    root = Path(bundle_root).resolve()
    configs = root / "configs"
    overrides = dict(overrides or {})
    parser = bundle_parser(root, overrides, config)
    if checkpoint is None and not random_weights:
        checkpoint = parser.get_parsed_content("ckpt_path") if "ckpt_path" in parser else root / "models" / "model.pt"
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if checkpoint is None or not checkpoint.is_file():
        if not random_weights:
            raise FileNotFoundError(
                f"Checkpoint {checkpoint} of bundle {root.name} not found: train it first "
                f"(python -m monai.bundle run --config_file {configs / 'train.json'}) or pass --checkpoint PATH."
            )
        logger.warning("Bundle %s: no checkpoint at %s, keeping random weights.", root.name, checkpoint)
        checkpoint = None
    recorded = read_checkpoint_config(checkpoint) if checkpoint is not None else None
    derived = {k: v for k, v in recorded_overrides(recorded, parser).items() if k not in overrides}
    if derived:  # build what the checkpoint was trained as; the caller's own overrides win (and are checked below)
        logger.info("Bundle %s: using the training configuration recorded in %s: %s", root.name, checkpoint, derived)
        overrides = {**derived, **overrides}
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

    if checkpoint is not None:
        compare_checkpoint_config(checkpoint, recorded, _requested_config(parser, network, deployment))
        load_checkpoint(network, checkpoint)
    deployment.export_info.update(
        {"bundle": root.name, "checkpoint": str(checkpoint) if checkpoint else None, "overrides": overrides,
         "config": config}
    )  # fmt: skip
    return BundleModel(
        root=root, network=network.cpu().eval(), deployment=deployment, parser=parser, checkpoint=checkpoint
    )


def _requested_config(parser: Any, network: nn.Module, deployment: DeploymentConfig) -> dict[str, Any]:
    """The settings of a bundle's parsed config that its checkpoint's recorded ones must match."""
    requested: dict[str, Any] = {
        "network_def": network_arguments(network),
        "class_names": deployment.inference.get("class_names") or None,
    }
    for key in ("spatial_size", "num_slices", "slice_axis", "num_stacks"):
        if key in parser:
            requested[key] = parser.get_parsed_content(key)
    return requested


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
