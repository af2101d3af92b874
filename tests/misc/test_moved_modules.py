"""The former ``medkd3d.workflows`` pieces in their new homes, and the deprecated alias that keeps old names working.

Bundle glue is :mod:`medkd3d.bundles`, handlers and the 2.5D inferer are :mod:`medkd3d.engines`, ``medkd3d
pipeline`` is :mod:`medkd3d.pipeline`; configs and code written against ``medkd3d.workflows`` keep working for a
release, with a ``FutureWarning`` that names the new path.
"""

from __future__ import annotations

import importlib
import json
import pydoc
import warnings
from pathlib import Path
from typing import Any

import pytest
from monai.bundle import ConfigParser

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"

#: The public names of the old submodules (their ``__all__`` before the move): the contract the alias keeps.
OLD_SUBMODULE_NAMES: dict[str, list[str]] = {
    "bundle": [
        "BUNDLE_NAMES",
        "PROFILES_DIR",
        "BundleOutOfMemoryError",
        "bundle_command",
        "bundle_logging_file",
        "find_bundle_root",
        "is_out_of_memory",
        "list_profiles",
        "profile_configs",
        "read_profiles",
        "run_bundle_config",
    ],
    "cli": ["register"],
    "data": [
        "SYNTHETIC_DEFAULT",
        "drop_last_batch",
        "ensure_dataset",
        "inference_records",
        "prepare_dataset",
        "split_dataset",
        "split_side",
    ],
    "export": ["load_bundle_network", "prepare_for_export"],
    "handlers": [
        "AtomicCheckpointSaver",
        "ClassProbabilityWriter",
        "ClassificationMetricsWriter",
        "MetricsStatsHandler",
        "RandomStates",
        "TrainingCheckpoint",
        "ValidationEarlyStopping",
        "metric_lines",
    ],
    "inferers": ["AGGREGATIONS", "SliceStackInferer"],
    "pipeline": [
        "MODELS",
        "NO_KD_SUFFIX",
        "QUICK",
        "PipelineModel",
        "PipelineSettings",
        "parse_bundle_override",
        "run_pipeline",
    ],
    "report": ["METRIC_COLUMNS", "ModelResult", "add_honesty", "add_kd_gains", "baseline_result", "write_report"],
    "teacher": ["load_teacher", "require_checkpoint", "require_teacher_checkpoint"],
    "training": ["KD_MODES", "UNLABELLED", "build_trainer", "labelled_pred_and_label", "training_records"],
}

#: Old top-level name -> where it is public now.
OLD_TOP_LEVEL: dict[str, str] = {
    "find_bundle_root": "medkd3d.bundles",
    "prepare_dataset": "medkd3d.bundles",
    "require_checkpoint": "medkd3d.bundles",
    "load_teacher": "medkd3d.bundles",
    "run_bundle_config": "medkd3d.bundles",
    "MetricsStatsHandler": "medkd3d.engines",
    "ClassProbabilityWriter": "medkd3d.engines",
    "SliceStackInferer": "medkd3d.engines",
    "prepare_for_export": "medkd3d.export",
}


def _deprecations(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, FutureWarning) and "medkd3d" in str(w.message)]


def _access(path: str) -> tuple[Any, list[str]]:
    """The object at a dotted ``path`` (as MONAI's ``_target_`` finds it), and the medkd3d deprecations it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = pydoc.locate(path)
    return found, _deprecations(caught)


@pytest.mark.parametrize("name, package", sorted(OLD_TOP_LEVEL.items()))
def test_old_top_level_names_forward_with_a_warning_naming_the_new_path(name: str, package: str) -> None:
    new = getattr(importlib.import_module(package), name)
    with pytest.warns(FutureWarning, match=rf"medkd3d\.workflows\.{name} is deprecated.*use {package}\.{name}\b"):
        old = getattr(importlib.import_module("medkd3d.workflows"), name)
    assert old is new


@pytest.mark.parametrize("submodule", sorted(OLD_SUBMODULE_NAMES))
def test_every_public_name_of_an_old_submodule_still_resolves(submodule: str) -> None:
    module = importlib.import_module(f"medkd3d.workflows.{submodule}")  # ``import medkd3d.workflows.data`` works
    for name in OLD_SUBMODULE_NAMES[submodule]:
        found, messages = _access(f"medkd3d.workflows.{submodule}.{name}")
        assert found is not None, f"medkd3d.workflows.{submodule}.{name} no longer resolves"
        new_path = messages[0].split("; use ")[1].rstrip(".")
        assert pydoc.locate(new_path) is found, f"the warning names {new_path}, which is not the same object"
        assert f"medkd3d.workflows.{submodule}.{name}" in messages[0]
        assert "workflows" not in new_path
    assert set(OLD_SUBMODULE_NAMES[submodule]) <= set(dir(module))


def test_an_old_bundle_config_still_runs_with_a_deprecation_warning() -> None:
    """A user's config written against the old ``_target_`` names, instantiated by MONAI's own parser."""
    split = {"train": [{"subject": "a"}], "val": [{"subject": "b"}], "test": [{"subject": "c"}]}
    parser = ConfigParser(
        {
            "split": split,
            "test_records": {"_target_": "medkd3d.workflows.data.split_side", "split": "@split", "side": "test"},
            "drop": {"_target_": "medkd3d.workflows.data.drop_last_batch", "num_items": 10, "batch_size": 4},
            "root": {"_target_": "medkd3d.workflows.find_bundle_root", "name": "brats_teacher_vggvit3d"},
        }
    )
    with pytest.warns(FutureWarning, match=r"use medkd3d\.bundles\.split_side"):
        assert parser.get_parsed_content("test_records") == [{"subject": "c"}]
    with pytest.warns(FutureWarning, match=r"use medkd3d\.bundles\.drop_last_batch"):
        parser.get_parsed_content("drop")


def test_unknown_old_names_are_attribute_errors() -> None:
    workflows = importlib.import_module("medkd3d.workflows")
    old_data = importlib.import_module("medkd3d.workflows.data")

    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        workflows.nothing_here  # noqa: B018
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        old_data.nothing_here  # noqa: B018
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("medkd3d.workflows.not_a_module")


def _config_targets(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["_target_"]] if isinstance(value.get("_target_"), str) else []
        return found + [t for v in value.values() for t in _config_targets(v)]
    if isinstance(value, list):
        return [t for v in value for t in _config_targets(v)]
    return []


def test_the_bundle_configs_name_the_new_paths_only() -> None:
    configs = sorted(BUNDLES_DIR.glob("*/configs/**/*.json"))
    assert len(configs) > 20, "the bundle configs were not found"
    targets = {t for c in configs for t in _config_targets(json.loads(c.read_text())) if t.startswith("medkd3d.")}
    assert {"medkd3d.bundles.prepare_dataset", "medkd3d.bundles.split_side", "medkd3d.engines.MetricsStatsHandler"} <= (
        targets
    )
    for target in sorted(targets):
        found, messages = _access(target)
        assert found is not None, f"{target} does not resolve"
        assert messages == [], f"{target} is a deprecated path: {messages}"


@pytest.mark.parametrize("package", ["medkd3d.bundles", "medkd3d.pipeline"])
def test_a_package_exports_every_public_name_of_its_glue_modules(package: str) -> None:
    """``medkd3d.bundles.X`` for every ``X`` its modules make public (``cli`` excepted), so configs name one path."""
    exported = set(importlib.import_module(package).__all__)
    folder = Path(importlib.import_module(package).__file__).parent
    for path in sorted(folder.glob("[!_]*.py")):
        if path.stem == "cli":
            continue
        module = importlib.import_module(f"{package}.{path.stem}")
        missing = set(module.__all__) - exported
        assert not missing, f"{module.__name__} exports {sorted(missing)}, which {package} does not"
        for name in module.__all__:
            assert getattr(importlib.import_module(package), name) is getattr(module, name)
