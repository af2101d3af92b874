"""Every bundle, the model-zoo way: train (session fixture) -> check_properties -> evaluate -> infer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from medkd3d.bundles import BUNDLE_NAMES, split_dataset
from medkd3d.data import discover_brats, write_datalist
from medkd3d.engines import youden_threshold


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def unlabelled_datalist(synthetic_brats_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's subjects as new, unlabelled data: every label and grade removed."""
    datalist = discover_brats(synthetic_brats_root)
    for record in datalist["training"]:
        record.update(label=None, class_name=None)
    return write_datalist(datalist, tmp_path_factory.mktemp("unlabelled") / "datalist.json")


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_train_evaluate_infer(
    bundle: str,
    bundle_kit,
    trained_bundles: Path,
    synthetic_brats_root: Path,
    unlabelled_datalist: Path,
    tmp_path: Path,
) -> None:
    out = trained_bundles / bundle
    state = torch.load(out / "models" / "last.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 3  # 6 training subjects of fold 0, batch 2, one epoch
    assert {"model", "optimizer", "lr_scheduler", "best_model_saver"} <= set(state)
    assert (out / "models" / "model.pt").is_file()

    overrides = bundle_kit.train_overrides(bundle, synthetic_brats_root, out, trained_bundles)
    bundle_kit.run(bundle, ["train.json", "evaluate.json"], "infer", **overrides)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    predictions = _read_csv(out / "eval" / "evaluation_predictions.csv")
    # evaluate.json reports on the held-out test subjects (one per class), never on the validation side
    split = split_dataset(discover_brats(synthetic_brats_root), fold=0, num_folds=3)
    assert sorted(row["subject"] for row in predictions) == sorted(r["subject"] for r in split["test"])
    assert not {row["subject"] for row in predictions} & {r["subject"] for r in split["val"] + split["train"]}
    assert {row["label"] for row in predictions} == {"LGG", "HGG"}
    assert metrics["num_samples"] == len(predictions) == 2
    assert 0.0 <= metrics["auc"] <= 1.0
    assert sum(map(sum, metrics["confusion_matrix"])) == 2
    # the metrics and the probabilities CSV describe the same predictions, at the threshold chosen on validation
    correct = sum(row["predicted"] == row["label"] for row in predictions)
    assert metrics["accuracy"] == pytest.approx(correct / 2)
    threshold = metrics["threshold"]
    assert isinstance(threshold, float) and 0.0 <= threshold <= 1.0  # the validation side has both classes
    assert all(row["predicted"] == ("HGG" if float(row["prob_HGG"]) >= threshold else "LGG") for row in predictions)
    # the validation subjects' probabilities the threshold was chosen from are written beside them, auditable
    chosen_on = _read_csv(out / "eval" / "threshold_predictions.csv")
    assert sorted(row["subject"] for row in chosen_on) == sorted(r["subject"] for r in split["val"])
    assert {row["side"] for row in chosen_on} == {"val"}
    probabilities = [[float(row["prob_LGG"]), float(row["prob_HGG"])] for row in chosen_on]
    labels = [int(row["label"] == "HGG") for row in chosen_on]
    assert youden_threshold(probabilities, labels) == pytest.approx(threshold, abs=1e-5)
    assert all(row["predicted"] == ("HGG" if float(row["prob_HGG"]) >= threshold else "LGG") for row in chosen_on)

    infer = {**bundle_kit.inference_overrides(bundle, synthetic_brats_root, out), "datalist": str(unlabelled_datalist)}
    infer["output_dir"] = str(tmp_path)
    bundle_kit.run(bundle, ["inference.json"], "infer", **infer)
    rows = _read_csv(tmp_path / "predictions.csv")
    assert len(rows) == 12 and all(row["label"] == "" for row in rows)
    for row in rows:
        p_lgg, p_hgg = float(row["prob_LGG"]), float(row["prob_HGG"])
        assert p_lgg + p_hgg == pytest.approx(1.0, abs=1e-5)
        assert row["predicted"] == ("HGG" if p_hgg > p_lgg else "LGG")
