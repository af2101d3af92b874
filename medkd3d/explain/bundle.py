"""Load a MONAI bundle's trained network and inference preprocessing for explanation.

A bundle's ``configs/inference.json`` defines (with the medkd3d and MONAI model-zoo ids) ``network_def``,
``preprocessing``, ``class_names``, ``ckpt_path``, ``dataset_dir``, ``datalist`` and ``inferer``; the network is
built as its checkpoint was trained and loaded strictly by :func:`medkd3d.bundles.build_bundle_network`, the
loader export uses too, so an explained model is exactly the deployed one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from medkd3d.explain.explainer import ExplainModel

__all__ = ["load_bundle_model"]

logger = logging.getLogger(__name__)

#: The config a bundle defines its inference network and preprocessing in.
INFERENCE_CONFIG = "inference.json"


def load_bundle_model(
    bundle_root: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> tuple[ExplainModel, Any]:
    """Build a bundle's network with its trained weights and its inference preprocessing.

    Args:
        bundle_root: the bundle directory.
        checkpoint: the weights (as the bundles save them); default the bundle's ``ckpt_path``
            (``models/model.pt``).
        overrides: config overrides over the configuration the checkpoint records (e.g. ``dataset_dir``).
        name: label of the model in reports; default the bundle directory name.

    Returns:
        ``(model, parser)``: the :class:`ExplainModel` (network on CPU in eval mode) and the config parser (for
        ``dataset_dir``, ``datalist`` and other ids).

    Raises:
        FileNotFoundError: if the bundle's configs or the checkpoint are missing (the message says how to train
            or pass one, :func:`medkd3d.bundles.require_checkpoint`).
        KeyError: if the config lacks ``network_def`` or ``preprocessing``.
        ValueError: if the checkpoint was trained with settings ``overrides`` contradict.
        RuntimeError: if the checkpoint does not fit the network (strict loading, keys listed).
    """
    from medkd3d.bundles import build_bundle_network
    from medkd3d.engines.inferers import SliceStackInferer

    built = build_bundle_network(bundle_root, checkpoint, overrides, INFERENCE_CONFIG, net_ids=("network_def",))
    parser = built.parser
    if "preprocessing" not in parser:
        raise KeyError(
            f"{built.root / 'configs' / INFERENCE_CONFIG} defines no 'preprocessing'; it is not a medkd3d bundle"
        )
    inferer = parser.get_parsed_content("inferer") if "inferer" in parser else None
    class_names = [str(c) for c in parser.get_parsed_content("class_names")] if "class_names" in parser else ["0", "1"]
    model = ExplainModel(
        network=built.network,
        preprocessing=parser.get_parsed_content("preprocessing"),
        class_names=class_names,
        name=name or built.root.name,
        stacks_as_batch=isinstance(inferer, SliceStackInferer),
    )
    logger.info("Loaded %s (%s) with weights %s.", model.name, type(built.network).__name__, built.checkpoint)
    return model, parser
