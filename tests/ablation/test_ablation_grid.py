"""Study grid and resumable bookkeeping: every cell exactly once, atomic result files, resume skips finished runs."""

from __future__ import annotations

import itertools
import json
import shutil

import pytest

from medkd3d.ablation.grid import ResultStore, RunSpec, StudyGrid, labelled_per_class, parse_size, size_sort_key

STUDENTS = ("2.5d", "3d")
KD = ("none", "logit", "logit+feature")
SIZES = (50, "all", 10)
SEEDS = (0, 1)
FOLDS = 3


@pytest.fixture
def grid() -> StudyGrid:
    return StudyGrid(STUDENTS, KD, SIZES, SEEDS, FOLDS)


def _result(spec: RunSpec) -> dict:
    # a metric that depends on the coordinates, so a mixed-up file would be noticed
    return {"balanced_accuracy": 0.5 + 0.01 * spec.seed + 0.1 * spec.fold, "train_time_s": 1.5}


def test_grid_has_every_cell_exactly_once(grid: StudyGrid) -> None:
    runs = grid.runs()
    expected = set(itertools.product(STUDENTS, KD, SIZES, SEEDS, range(FOLDS)))
    coordinates = [(r.student, r.kd, r.size, r.seed, r.fold) for r in runs]
    assert len(runs) == len(grid) == 2 * 3 * 3 * 2 * 3
    assert set(coordinates) == expected
    assert len(set(coordinates)) == len(coordinates)
    assert len({r.key for r in runs}) == len(runs)  # keys (file names) are unique too
    # fold-major (one teacher at a time), sizes in learning-curve order, the no-KD twin before its KD runs
    assert [r.fold for r in runs] == sorted(r.fold for r in runs)
    first_fold = [r for r in runs if r.fold == 0]
    assert [r.size for r in first_fold[:: len(STUDENTS) * len(KD) * len(SEEDS)]] == [10, 50, "all"]
    assert first_fold[0].kd == "none"


def test_grid_rejects_bad_axes() -> None:
    with pytest.raises(ValueError, match="students lists 3d more than once"):
        StudyGrid(("3d", "3d"), KD, SIZES, SEEDS, FOLDS)
    with pytest.raises(ValueError, match="unknown KD mode"):
        StudyGrid(STUDENTS, ("none", "feature"), SIZES, SEEDS, FOLDS)
    with pytest.raises(ValueError, match="at least 2"):
        StudyGrid(STUDENTS, KD, SIZES, SEEDS, 1)
    with pytest.raises(ValueError, match="at least one of seeds"):
        StudyGrid(STUDENTS, KD, SIZES, (), FOLDS)
    with pytest.raises(ValueError, match="sizes lists all more than once"):
        StudyGrid(STUDENTS, KD, ("all", "ALL"), SEEDS, FOLDS)


def test_parse_size() -> None:
    assert parse_size("all") == "all" and parse_size(" All ") == "all"
    assert parse_size("50") == 50 and parse_size(7) == 7
    for bad in ("0", "-3", "many", 2.5):
        with pytest.raises(ValueError, match="positive number"):
            parse_size(bad)
    assert sorted([150, "all", 50], key=size_sort_key) == [50, 150, "all"]


def test_unlabelled_sizes_parse_sort_and_split() -> None:
    assert parse_size("8+unlabelled") == "8+unlabelled" and parse_size(" 8+Unlabelled ") == "8+unlabelled"
    for bad in ("all+unlabelled", "0+unlabelled", "+unlabelled", "8+u"):
        with pytest.raises(ValueError, match="positive number"):
            parse_size(bad)
    assert labelled_per_class("8+unlabelled") == (8, True)
    assert labelled_per_class(8) == (8, False) and labelled_per_class("all") == (None, False)
    # the unlabelled regime of N sits right after N on a learning curve
    assert sorted(["all", "8+unlabelled", 16, 8], key=size_sort_key) == [8, "8+unlabelled", 16, "all"]
    spec = RunSpec("brats_hdkd_student3d", "logit", "8+unlabelled", 0, 1)
    assert spec.key == "brats_hdkd_student3d_logit_8+unlabelled_s0_f1"


def test_grid_leaves_out_unsupported_modes() -> None:
    grid = StudyGrid(STUDENTS, KD, SIZES, SEEDS, FOLDS, unsupported=frozenset({("2.5d", "logit+feature")}))
    runs = grid.runs()
    assert len(runs) == len(grid) == (2 * 3 - 1) * 3 * 2 * 3
    assert not [r for r in runs if (r.student, r.kd) == ("2.5d", "logit+feature")]
    assert [r for r in runs if (r.student, r.kd) == ("3d", "logit+feature")]


def test_resume_skips_finished_runs(grid: StudyGrid, tmp_path) -> None:
    store = ResultStore(tmp_path)
    runs = grid.runs()
    finished = runs[::3]
    for spec in finished:
        store.write(spec, _result(spec))
    # a new store (a new process resuming the study) sees exactly the finished runs as done
    resumed = ResultStore(tmp_path)
    assert resumed.pending(grid) == [spec for spec in runs if spec not in finished]
    collected = resumed.collect(grid)
    assert [(r["student"], r["kd"], r["size"], r["seed"], r["fold"]) for r in collected] == [
        (s.student, s.kd, s.size, s.seed, s.fold) for s in finished
    ]
    assert [r["balanced_accuracy"] for r in collected] == [_result(s)["balanced_accuracy"] for s in finished]
    # each result is one complete JSON file named by its key, and nothing temporary is left behind
    files = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert files == sorted(f"{s.key}.json" for s in finished)
    # finishing the rest leaves nothing pending; runs outside the grid are ignored by collect
    for spec in resumed.pending(grid):
        resumed.write(spec, _result(spec))
    assert resumed.pending(grid) == []
    smaller = StudyGrid(STUDENTS, KD, (10,), SEEDS, FOLDS)
    assert len(resumed.collect(smaller)) == len(smaller)


def test_interrupted_write_keeps_the_previous_result(grid: StudyGrid, tmp_path) -> None:
    store = ResultStore(tmp_path)
    spec = grid.runs()[0]
    path = store.write(spec, _result(spec))
    before = path.read_bytes()
    with pytest.raises(TypeError):  # fails halfway: json cannot serialise the object
        store.write(spec, {"balanced_accuracy": 0.9, "model": object()})
    assert path.read_bytes() == before
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [path.name]
    fresh = grid.runs()[1]
    with pytest.raises(TypeError):
        store.write(fresh, {"model": object()})
    assert not store.is_done(fresh)  # a failed first write does not count as finished


def test_store_rejects_foreign_or_mismatched_results(grid: StudyGrid, tmp_path) -> None:
    store = ResultStore(tmp_path)
    first, second = grid.runs()[:2]
    shutil.copy(store.write(first, _result(first)), store.path(second))
    with pytest.raises(ValueError, match=f"describes run {first.key}, not {second.key}"):
        store.read(second)
    with pytest.raises(ValueError, match="differ from the run's own"):
        store.write(first, {"fold": first.fold + 1})
    store.path(first).write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="delete it to redo"):
        store.read(first)


def test_settings_are_bound_on_first_start(tmp_path) -> None:
    store = ResultStore(tmp_path)
    store.bind_settings({"epochs": 2, "spatial_size": (32, 32, 32)})
    assert json.loads((tmp_path / "study.json").read_text()) == {"epochs": 2, "spatial_size": [32, 32, 32]}
    ResultStore(tmp_path).bind_settings({"epochs": 2, "spatial_size": (32, 32, 32)})  # same settings resume
    with pytest.raises(ValueError, match="epochs: stored 2, now 5"):
        ResultStore(tmp_path).bind_settings({"epochs": 5, "spatial_size": (32, 32, 32)})


def test_training_subsets_are_per_class_nested_and_capped(caplog) -> None:
    from medkd3d.ablation.runner import training_subset

    # 8 HGG (label 1) and 3 LGG (label 0) subjects; one HGG subject has two records (e.g. two sessions)
    records = [{"subject": f"hgg{i}", "label": 1} for i in range(8)] + [
        {"subject": f"lgg{i}", "label": 0} for i in range(3)
    ]
    records.append({"subject": "hgg0", "label": 1})
    subjects = {n: {r["subject"] for r in training_subset(records, n, seed=4)} for n in (1, 2, 3)}
    for n, chosen in subjects.items():
        assert sum(s.startswith("hgg") for s in chosen) == n and sum(s.startswith("lgg") for s in chosen) == n
    assert subjects[1] <= subjects[2] <= subjects[3]  # a learning curve adds subjects, it does not redraw them
    assert {r["subject"] for r in training_subset(records, 2, seed=5)} != subjects[2]
    with caplog.at_level("WARNING"):
        capped = {r["subject"] for r in training_subset(records, 5, seed=4)}
    assert sum(s.startswith("lgg") for s in capped) == 3 and sum(s.startswith("hgg") for s in capped) == 5
    assert "fewer than the 5 per class" in caplog.text
    everything = training_subset(records, "all", seed=4)
    assert everything == records
    assert sum(r["subject"] == "hgg0" for r in training_subset(records, 8, seed=0)) == 2  # all records of a subject

    # N+unlabelled: the same labelled subset, then every other training subject with label -1
    items = training_subset(records, "2+unlabelled", seed=4)
    labelled = [r for r in items if r["label"] != -1]
    assert {r["subject"] for r in labelled} == subjects[2]
    assert {r["subject"] for r in items if r["label"] == -1} == {r["subject"] for r in records} - subjects[2]
    assert len(items) == len(records)  # each record once: labelled or not
