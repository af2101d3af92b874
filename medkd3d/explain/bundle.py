"""Load a MONAI bundle's trained network and inference preprocessing for explanation.

A bundle's ``configs/inference.json`` defines (with the medkd3d and MONAI model-zoo ids) ``network_def``,
``preprocessing``, ``class_names``, ``ckpt_path``, ``dataset_dir``, ``datalist`` and ``inferer``; the network is
built and its checkpoint loaded strictly by :func:`medkd3d.workflows.load_bundle_network`, the function the export
path uses too, so an explained model is exactly the deployed one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medkd3d.explain.explainer import ExplainModel

__all__ = ["bundle_config", "load_bundle_model"]

logger = logging.getLogger(__name__)

#: The config a bundle defines its inference network and preprocessing in.
INFERENCE_CONFIG = "inference.json"


def bundle_config(bundle_root: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Any:
    """The parsed ``configs/inference.json`` of a bundle (a ``monai.bundle.ConfigParser``), with overrides.

    Args:
        bundle_root: the bundle directory.
        overrides: config ids and values (e.g. ``{"spatial_size": [64, 64, 64]}``), the same the model was
            trained with; ``bundle_root`` is always set to ``bundle_root``.

    Returns:
        The parser; read values with ``get_parsed_content(id)``.

    Raises:
        FileNotFoundError: if the bundle has no ``configs/inference.json``.
    """
    from monai.bundle import ConfigParser

    root = Path(bundle_root).resolve()
    config = root / "configs" / INFERENCE_CONFIG
    if not config.is_file():
        raise FileNotFoundError(
            f"{config} not found: --bundle must be a MONAI bundle directory with configs/{INFERENCE_CONFIG} "
            "(e.g. bundles/brats_student_effnet3d)"
        )
    parser = ConfigParser()
    parser.read_config(str(config))
    metadata = root / "configs" / "metadata.json"
    if metadata.is_file():
        parser.read_meta(str(metadata))
    parser.update({"bundle_root": str(root), **dict(overrides or {})})
    return parser


def load_bundle_model(
    bundle_root: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> tuple[ExplainModel, Any]:
    """Build a bundle's network with its trained weights and its inference preprocessing.

    Args:
        bundle_root: the bundle directory.
        checkpoint: the weights (``{"model": state_dict}`` as the bundles save them); default the bundle's
            ``ckpt_path`` (``models/model.pt``).
        overrides: config overrides the model was trained with.
        name: label of the model in reports; default the bundle directory name.

    Returns:
        ``(model, parser)``: the :class:`ExplainModel` (network on CPU in eval mode) and the config parser (for
        ``dataset_dir``, ``datalist`` and other ids).

    Raises:
        FileNotFoundError: if the checkpoint does not exist (the message says how to train or pass one).
        KeyError: if the config lacks ``network_def`` or ``preprocessing``.
        RuntimeError: if the checkpoint does not fit the network (strict loading, keys listed).
    """
    from medkd3d.workflows import SliceStackInferer, load_bundle_network

    root = Path(bundle_root).resolve()
    parser = bundle_config(root, overrides)
    for required in ("network_def", "preprocessing"):
        if required not in parser:
            raise KeyError(f"{root / 'configs' / INFERENCE_CONFIG} defines no {required!r}; it is not a medkd3d bundle")
    if checkpoint is None:
        checkpoint = parser.get_parsed_content("ckpt_path") if "ckpt_path" in parser else root / "models" / "model.pt"
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"checkpoint {checkpoint} of bundle {root.name} not found: train the bundle first "
            f"(python -m monai.bundle run --config_file {root / 'configs' / 'train.json'}) or pass --checkpoint PATH"
        )
    network = load_bundle_network(
        root, checkpoint, overrides={"bundle_root": str(root), **dict(overrides or {})}, net_id="network_def"
    )
    inferer = parser.get_parsed_content("inferer") if "inferer" in parser else None
    class_names = [str(c) for c in parser.get_parsed_content("class_names")] if "class_names" in parser else ["0", "1"]
    model = ExplainModel(
        network=network,
        preprocessing=parser.get_parsed_content("preprocessing"),
        class_names=class_names,
        name=name or root.name,
        stacks_as_batch=isinstance(inferer, SliceStackInferer),
    )
    logger.info("Loaded %s (%s) with weights %s.", model.name, type(network).__name__, checkpoint)
    return model, parser
