"""The bundles' split: a stratified, patient-level test set held out before the folds, the same for every fold."""

from __future__ import annotations

from collections import Counter

import pytest

from medkd3d.bundles.data import split_dataset, split_side, threshold_records
from medkd3d.bundles.training import UNLABELLED, training_records
from medkd3d.data.splits import make_splits, write_splits


def _datalist(n_hgg: int = 15, n_lgg: int = 10) -> dict:
    records = [{"subject": f"HGG_{i:03d}", "label": 1} for i in range(n_hgg)]
    records += [{"subject": f"LGG_{i:03d}", "label": 0} for i in range(n_lgg)]
    # a subject with two records (two sessions) must stay on one side
    records.append({"subject": "HGG_000", "label": 1, "session": 2})
    return {"training": records, "class_names": ["LGG", "HGG"]}


def _subjects(records: list[dict]) -> set[str]:
    return {r["subject"] for r in records}


def test_test_subjects_are_held_out_of_every_fold_and_identical_across_folds() -> None:
    datalist = _datalist()
    folds = [split_dataset(datalist, fold=k, num_folds=5, seed=3) for k in range(5)]
    test = _subjects(folds[0]["test"])
    # stratified: round(0.2 * 15) HGG and round(0.2 * 10) LGG
    assert Counter(s[:3] for s in test) == {"HGG": 3, "LGG": 2}
    validated = set()
    for sides in folds:
        assert _subjects(sides["test"]) == test
        assert not test & (_subjects(sides["train"]) | _subjects(sides["val"]))
        assert not _subjects(sides["train"]) & _subjects(sides["val"])
        assert _subjects(sides["train"]) | _subjects(sides["val"]) | test == _subjects(datalist["training"])
        validated |= _subjects(sides["val"])
        sessions = [r for r in sides["train"] + sides["val"] + sides["test"] if r["subject"] == "HGG_000"]
        assert len(sessions) == 2
    # the folds validate on every non-test subject once
    assert validated == _subjects(datalist["training"]) - test


def test_test_side_depends_on_the_split_seed_only() -> None:
    datalist = _datalist()
    test = _subjects(split_dataset(datalist, fold=0, num_folds=5, seed=0)["test"])
    assert _subjects(split_dataset(datalist, fold=2, num_folds=3, seed=0)["test"]) == test
    assert any(_subjects(split_dataset(datalist, seed=seed)["test"]) != test for seed in (1, 2, 3))


def test_empty_test_split_is_refused_with_the_fix() -> None:
    sides = split_dataset(_datalist(), fold=0, num_folds=5, test_fraction=0.0)
    assert sides["test"] == []
    with pytest.raises(ValueError, match=r"--test_fraction 0\.2") as error:
        split_side(sides, "test")
    assert "splits_file" in str(error.value) and "--evaluate_split val" in str(error.value)
    assert split_side(sides, "val") == sides["val"]
    with pytest.raises(KeyError, match="holdout"):
        split_side(sides, "holdout")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        split_dataset(_datalist(), test_fraction=1.0)


def test_threshold_subjects_are_labelled_training_and_validation_subjects_never_test() -> None:
    sides = split_dataset(_datalist(), fold=0, num_folds=5, seed=3)
    records = threshold_records(sides, ["train", "val"])
    assert [r["subject"] for r in records] == [r["subject"] for r in sides["train"] + sides["val"]]
    assert [r["side"] for r in records] == ["train"] * len(sides["train"]) + ["val"] * len(sides["val"])
    assert threshold_records(sides, "val") == [{**r, "side": "val"} for r in sides["val"]]
    assert "side" not in sides["val"][0]  # the split's own records are not modified
    # a student trained on 2 labelled subjects per class (the rest unlabelled) reads no other training label
    items = training_records(sides["train"], train_per_class=2, seed=0, unlabelled=True)
    assert sum(r["label"] == UNLABELLED for r in items) == len(sides["train"]) - 4
    chosen_on = threshold_records(sides, ["train", "val"], train_records=items)
    assert Counter(r["label"] for r in chosen_on if r["side"] == "train") == {0: 2, 1: 2}
    assert len(chosen_on) == 4 + len(sides["val"])
    with pytest.raises(ValueError, match=r"test subjects are what evaluate\.json reports on"):
        threshold_records(sides, ["val", "test"])
    with pytest.raises(KeyError, match="holdout"):
        threshold_records(sides, "holdout")


def test_splits_file_still_decides_the_sides(tmp_path) -> None:
    datalist = _datalist()
    splits = make_splits(datalist["training"], num_folds=3, test_fraction=0.4, seed=7)
    path = write_splits(splits, tmp_path / "splits.json")
    sides = split_dataset(datalist, fold=1, splits_file=path, test_fraction=0.2)  # the file wins over the fraction
    assert _subjects(sides["test"]) == set(splits["test"])
    assert _subjects(sides["val"]) == set(splits["folds"][1]["val"])
