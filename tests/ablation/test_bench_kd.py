"""``benchmarks/bench_kd.py --quick``: the KD benchmark's smoke version runs the study and writes its tables."""

from __future__ import annotations

import csv

import pytest


@pytest.fixture
def bench(benchmark_script):
    return benchmark_script("bench_kd")


def test_full_study_covers_the_issue_design(bench) -> None:
    config = bench.study_config(bench.parse_args([]))
    assert len(config.seeds) >= 3 and config.folds >= 2  # >= 3 seeds x folds
    assert set(config.kd_modes) == {"none", "logit", "logit+feature"}
    assert {"8", "8+unlabelled", "all"} == {str(s) for s in config.sizes}  # data-limited, unlabelled, all
    subjects = config.synthetic["n_hgg"] + config.synthetic["n_lgg"]
    assert round(config.synthetic["n_hgg"] * config.test_fraction) * 2 >= 40 and subjects >= 100  # >= 40 test
    assert not config.tiny


@pytest.mark.slow
def test_quick_benchmark_writes_markdown_and_csv(bench, tmp_path) -> None:
    results = tmp_path / "results"
    argv = ["--quick", "--out", str(tmp_path / "study"), "--results-dir", str(results), "--students",
            "brats_hdkd_student3d", "--folds", "2"]  # fmt: skip
    assert bench.main(argv) == 0
    text = (results / "kd_synthetic_quick.md").read_text()
    for needle in ("## Teachers and trivial baseline", "## Students", "Machine:", "Wall time:", "held-out test"):
        assert needle in text
    # the generated dataset's record: the anatomy changes the data (the procedural brain without nilearn)
    assert "synthetic: seed 0, 10 HGG + 10 LGG, 48x48x40 voxels, mni152 anatomy" in text
    with (results / "kd_synthetic_quick.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    kinds = [r["kind"] for r in rows]
    assert kinds.count("teacher") == 1 and kinds.count("baseline") == 1
    students = [r for r in rows if r["kind"] == "student"]
    # every KD mode of the bundle in the data-limited and the unlabelled regime, 2 (seed, fold) runs each
    assert {(r["kd"], r["size"]) for r in students} == {
        (k, n) for k in ("none", "logit", "logit+feature") for n in ("2", "2+unlabelled")
    }
    assert all(r["runs"] == "2" for r in students)
    for row in students:
        assert 0.0 <= float(row["balanced_accuracy"]) <= 1.0 and float(row["auc_ratio"]) >= 0.0
        if row["kd"] != "none":
            assert row["kd_gain_auc_pairs"] == "2"  # paired with the no-KD runs of the same seed and fold
