"""The five bundles train one way: the recipe parts of their ``train.json`` must stay identical.

A model is trained by its bundle's ``train.json`` and nothing else (DESIGN.md, one recipe), so the data handling,
split, optimiser, schedule, selection and evaluation of the five bundles must not drift apart: an edit to one
bundle's recipe has to be made to all of them (or this list changed on purpose, with the reason in the bundle docs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
BUNDLES = sorted(p.parent.parent.name for p in BUNDLES_DIR.glob("*/configs/train.json"))

#: Top-level ids every bundle shares verbatim: data, split, caching, optimiser, schedule, selection, devices.
SHARED_TOP_LEVEL = (
    "amp", "cache", "cache_dir", "cache_rate", "ckpt_dir", "class_names", "class_weighted_loss", "data", "datalist",
    "dataset_dir", "device", "early_stop_patience", "epochs", "fold", "imports", "label_column", "labels_csv",
    "lr_scheduler", "network", "network_export", "num_folds", "num_workers", "output_dir", "resume",
    "run", "seed", "spatial_size", "split", "split_seed", "splits_file", "synthetic", "test_fraction", "val_interval",
    "validate_data", "weight_decay",
)  # fmt: skip
#: Sections shared verbatim (validation is the model selection: it must be the same everywhere).
SHARED_SECTIONS = {
    "train": ("dataloader", "inferer", "postprocessing"),
    "validate": (
        "additional_metrics", "best_model_saver", "dataloader", "dataset", "evaluator", "handlers", "inferer",
        "key_metric", "postprocessing",
    ),
}  # fmt: skip


def _config(bundle: str) -> dict:
    return json.loads((BUNDLES_DIR / bundle / "configs" / "train.json").read_text(encoding="utf-8"))


def test_all_five_bundles_are_checked() -> None:
    assert len(BUNDLES) == 5


@pytest.mark.parametrize("bundle", BUNDLES[1:])
def test_recipe_is_shared_with_the_first_bundle(bundle: str) -> None:
    reference, config = _config(BUNDLES[0]), _config(bundle)
    for key in SHARED_TOP_LEVEL:
        assert config.get(key) == reference.get(key), f"{bundle}: {key!r} differs from {BUNDLES[0]}"
    for section, keys in SHARED_SECTIONS.items():
        for key in keys:
            assert config[section].get(key) == reference[section].get(key), (
                f"{bundle}: {section}#{key} differs from {BUNDLES[0]}"
            )


@pytest.mark.parametrize("bundle", BUNDLES[1:])
def test_optimizer_is_shared_but_for_the_auxiliary_heads(bundle: str) -> None:
    """One optimiser; a bundle with the auxiliary compartment task adds its heads' parameters, each once (a
    compartment readout shares its head with the task), nothing else."""
    reference, config = _config(BUNDLES[0])["optimizer"], _config(bundle)["optimizer"]
    assert {k: v for k, v in config.items() if k != "params"} == {k: v for k, v in reference.items() if k != "params"}
    with_heads = {"_target_": "medkd3d.bundles.unique_parameters", "modules": ["@network", "@seg_aux_loss"]}
    for name in (BUNDLES[0], bundle):
        expected = with_heads if "seg_aux_weight" in _config(name) else "$@network.parameters()"
        assert _config(name)["optimizer"]["params"] == expected, name
