"""Patient-level stratified splits: no leakage, class ratios kept, seeded, nested data-size subsets, the CLI."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pytest

from medkd3d.data.cli import register
from medkd3d.data.splits import (
    load_splits,
    make_splits,
    per_class_subset,
    split_records,
    stratified_kfold,
    train_val_test_split,
    write_splits,
)


def make_records(num_hgg: int = 30, num_lgg: int = 10, repeated: int = 5) -> list[dict]:
    """Datalist-like records; the first ``repeated`` subjects of each class appear twice (e.g. two sessions)."""
    records = []
    for label, grade, count in ((1, "HGG", num_hgg), (0, "LGG", num_lgg)):
        for i in range(count):
            record = {"subject": f"{grade}_{i:03d}", "image": [f"{grade}_{i}_t1.nii.gz"], "label": label}
            records += [record, {**record, "image": [f"{grade}_{i}_t1_session2.nii.gz"]}] if i < repeated else [record]
    return records


def labels_of(records: list[dict]) -> dict[str, int]:
    return {r["subject"]: r["label"] for r in records}


def test_kfold_has_no_leakage_and_keeps_class_ratios() -> None:
    records = make_records()
    labels = labels_of(records)
    folds = stratified_kfold(records, num_folds=5, seed=0)
    assert len(folds) == 5
    val_sides = [set(f["val"]) for f in folds]
    assert set().union(*val_sides) == set(labels)  # every subject validated exactly once
    assert sum(len(v) for v in val_sides) == len(labels)
    for fold in folds:
        assert not set(fold["train"]) & set(fold["val"])
        assert set(fold["train"]) | set(fold["val"]) == set(labels)
        counts = Counter(labels[s] for s in fold["val"])
        assert counts == {1: 6, 0: 2}  # 30/5 HGG and 10/5 LGG: the 3:1 ratio of the whole set


def test_records_of_one_subject_never_straddle_a_split() -> None:
    records = make_records()
    for fold in range(5):
        sides = split_records(records, make_splits(records, num_folds=5, test_fraction=0.2, seed=1), fold)
        seen = {side: {r["subject"] for r in side_records} for side, side_records in sides.items()}
        assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"] and not seen["val"] & seen["test"]
        assert sum(len(v) for v in sides.values()) == len(records)  # both sessions of a subject come along
        both_sessions = [r for r in sides["val"] + sides["test"] + sides["train"] if r["subject"] == "HGG_000"]
        assert len(both_sessions) == 2


def test_holdout_split_fractions_and_ratios() -> None:
    records = make_records()
    labels = labels_of(records)
    split = train_val_test_split(records, val_fraction=0.2, test_fraction=0.1, seed=0)
    assert Counter(labels[s] for s in split["test"]) == {1: 3, 0: 1}
    assert Counter(labels[s] for s in split["val"]) == {1: 6, 0: 2}
    assert Counter(labels[s] for s in split["train"]) == {1: 21, 0: 7}
    assert len(set(split["train"]) | set(split["val"]) | set(split["test"])) == len(labels)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_test_split(records, val_fraction=0.6, test_fraction=0.4)


def test_splits_are_seeded_and_independent_of_record_order() -> None:
    records = make_records()
    assert stratified_kfold(records, 4, seed=7) == stratified_kfold(records[::-1], 4, seed=7)
    assert stratified_kfold(records, 4, seed=7) != stratified_kfold(records, 4, seed=8)
    assert make_splits(records, val_fraction=0.2, seed=3) == make_splits(records, val_fraction=0.2, seed=3)


def test_per_class_subsets_are_balanced_and_nested() -> None:
    records = make_records()
    labels = labels_of(records)
    small, large = per_class_subset(records, 3, seed=0), per_class_subset(records, 8, seed=0)
    assert Counter(labels[s] for s in small) == {1: 3, 0: 3}
    assert set(small) < set(large)
    assert per_class_subset(records, "all") == sorted(labels)
    with pytest.raises(ValueError, match=r"only 10 subjects.*at most 10"):
        per_class_subset(records, 11)


def test_make_splits_with_test_holdout_and_training_subsets() -> None:
    records = make_records()
    labels = labels_of(records)
    splits = make_splits(records, num_folds=3, test_fraction=0.2, train_per_class=2, seed=0)
    test = set(splits["test"])
    assert Counter(labels[s] for s in test) == {1: 6, 0: 2}
    for fold in splits["folds"]:
        assert Counter(labels[s] for s in fold["train"]) == {1: 2, 0: 2}
        assert not test & (set(fold["train"]) | set(fold["val"]))
        assert not set(fold["train"]) & set(fold["val"])
    single = make_splits(records, val_fraction=0.2, test_fraction=0.2, seed=0)["folds"]
    assert len(single) == 1 and Counter(labels[s] for s in single[0]["val"]) == {1: 6, 0: 2}


def test_inconsistent_input_is_reported() -> None:
    records = make_records()
    with pytest.raises(ValueError, match="'HGG_001' appears with labels 1 and 0"):
        stratified_kfold([*records, {"subject": "HGG_001", "label": 0}], 5)
    with pytest.raises(ValueError, match="cannot make 5 folds from 2 subjects"):  # 3 records, 2 patients
        stratified_kfold(records[:3], 5)
    splits = make_splits(records, num_folds=2)
    with pytest.raises(ValueError, match=r"missing from the datalist.*medkd3d split"):
        split_records(records[:10], splits)
    with pytest.raises(IndexError, match=r"folds 0\.\.1"):
        split_records(records, splits, fold=2)


def test_split_files_round_trip_atomically(tmp_path: Path) -> None:
    splits = make_splits(make_records(), num_folds=3)
    path = write_splits(splits, tmp_path / "splits.json")
    assert load_splits(path) == splits
    assert [p.name for p in tmp_path.iterdir()] == ["splits.json"]  # no temporary file left behind
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="no 'folds'"):
        load_splits(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="medkd3d split"):
        load_splits(tmp_path / "missing.json")


def test_split_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from medkd3d.data.discovery import write_datalist

    records = make_records(num_hgg=8, num_lgg=4, repeated=2)
    datalist = {"root": str(tmp_path), "class_names": ["LGG", "HGG"], "training": records}
    datalist_path = write_datalist(datalist, tmp_path / "datalist.json")
    parser = argparse.ArgumentParser(prog="medkd3d")
    register(parser.add_subparsers())
    out = tmp_path / "splits.json"
    command = ["split", str(datalist_path), "--folds", "4", "--seed", "2", "--out", str(out)]
    args = parser.parse_args([*command, "--test-fraction", "0"])
    assert args.func(args) == 0
    written = json.loads(out.read_text())
    assert written["folds"] == stratified_kfold(records, 4, seed=2) and written["test"] == []
    assert written["class_names"] == ["LGG", "HGG"] and written["seed"] == 2
    assert "fold 3: 9 train / 3 val" in capsys.readouterr().out
    # by default a fifth of each class is held out for test first, as the bundles do
    args = parser.parse_args(command)
    assert args.func(args) == 0
    assert json.loads(out.read_text()) == {**make_splits(records, 4, test_fraction=0.2, seed=2), **{
        k: written[k] for k in ("datalist", "class_names")}}  # fmt: skip
    assert "wrote" in capsys.readouterr().out and len(json.loads(out.read_text())["test"]) == 3
    missing = parser.parse_args(["split", str(tmp_path / "missing.json"), "--out", str(out)])
    assert missing.func(missing) == 1
    assert "missing.json not found" in capsys.readouterr().err
    too_many = parser.parse_args(["split", str(datalist_path), "--folds", "13", "--out", str(out)])
    assert too_many.func(too_many) == 1
    assert "cannot make 13 folds from 9 subjects" in capsys.readouterr().err  # 3 of 12 held out for test
    with pytest.raises(SystemExit):
        parser.parse_args(["split", str(datalist_path), "--folds", "3", "--val-fraction", "0.2", "--out", "x"])
    with pytest.raises(SystemExit):
        parser.parse_args(["split", str(datalist_path), "--train-per-class", "0", "--out", "x"])
