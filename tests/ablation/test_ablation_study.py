"""End to end: ``medkd3d ablate`` on a tiny synthetic study writes every report, and a rerun trains nothing."""

from __future__ import annotations

import csv
import logging

import pytest

from medkd3d.ablation import cli
from medkd3d.ablation.report import RESULT_COLUMNS
from medkd3d.ablation.runner import STUDENTS
from medkd3d.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _ablate(argv: list[str]) -> int:
    return main(["ablate", *argv])


def test_cli_students_match_the_runner() -> None:
    assert set(cli._STUDENT_NAMES) == set(STUDENTS)


@pytest.mark.slow
def test_tiny_study_writes_reports_and_resumes_without_training(synthetic_brats_root, tmp_path, capsys, caplog):
    out = tmp_path / "study"
    argv = [
        "--dataset-dir", str(synthetic_brats_root), "--out", str(out), "--students", "2.5d", "3d",
        "--kd", "none", "logit+feature", "--sizes", "2", "--seeds", "0", "--folds", "2", "--epochs", "1",
        "--teacher-epochs", "1", "--teacher", "hdkd_teacher3d", "--spatial-size", "32", "--tiny",
        "--num-stacks", "2", "--batch-size", "2", "--no-progress",
    ]  # fmt: skip
    assert _ablate(argv) == 0
    assert "trained 8 runs, skipped 0" in capsys.readouterr().out

    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[: len(RESULT_COLUMNS)] == list(RESULT_COLUMNS)
    cells = sorted((r["student"], r["kd"], r["size"], r["seed"], r["fold"]) for r in rows)
    assert cells == sorted(
        (s, k, "2", "0", str(f)) for s in ("2.5d", "3d") for k in ("none", "logit+feature") for f in (0, 1)
    )
    for row in rows:
        for metric in ("balanced_accuracy", "auc", "f1", "sensitivity", "specificity"):
            assert 0.0 <= float(row[metric]) <= 1.0, (metric, row)
        assert int(row["parameters"]) > 0 and float(row["gflops"]) > 0 and float(row["cpu_latency_ms"]) > 0
        assert float(row["train_time_s"]) > 0
        assert row["train_subjects"] == "4" and row["val_subjects"] == "6"  # 2 per class; half of 12 held out
    assert len({r["parameters"] for r in rows if r["student"] == "3d"}) == 1  # cost is per student

    summary = (out / "summary.md").read_text()
    for heading in ("## Balanced accuracy", "## AUC", "## KD gain over no KD: balanced accuracy", "## Cost"):
        assert heading in summary
    assert "| 3d | logit+feature | 2 | 2 |" in summary  # the KD cell and its two (seed, fold) pairs
    for name in ("metric_vs_size_balanced_accuracy.png", "metric_vs_size_auc.png", "pareto_latency.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in summary
    assert sorted(p.name for p in (out / "teachers").glob("fold*.pt")) == ["fold0.pt", "fold1.pt"]

    # resume: the same command finds every run finished and trains nothing, not even a teacher
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _ablate(argv) == 0
    assert "trained 0 runs, skipped 8" in capsys.readouterr().out
    assert not [r for r in caplog.records if "Engine run" in r.getMessage() or "Training the" in r.getMessage()]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == stamps

    # an interrupted study continues where it stopped: only the missing run is redone
    (out / "runs" / "3d_logit+feature_2_s0_f1.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _ablate(argv) == 0
    assert "trained 1 runs, skipped 7" in capsys.readouterr().out
    assert not [r for r in caplog.records if "Training the" in r.getMessage()]  # the saved teacher is reused
    assert (out / "runs" / "3d_logit+feature_2_s0_f1.json").is_file()

    # a different setting in the same folder is refused instead of mixing incomparable runs
    with pytest.raises(ValueError, match="epochs: stored 1, now 3"):
        _ablate([*argv, "--epochs", "3"])
