"""End to end: ``medkd3d ablate`` runs the bundles on a tiny synthetic study, writes every report from test-set
evaluations, and a rerun trains nothing."""

from __future__ import annotations

import csv
import json
import logging

import pytest

from medkd3d.ablation import cli
from medkd3d.ablation.report import RESULT_COLUMNS
from medkd3d.ablation.runner import STUDENTS
from medkd3d.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STUDENT = "brats_hdkd_student3d"


def _ablate(argv: list[str]) -> int:
    return main(["ablate", *argv])


def test_cli_students_match_the_runner() -> None:
    assert set(cli._STUDENT_NAMES) == set(STUDENTS)


def test_cli_defaults_put_the_quick_study_under_runs(monkeypatch, tmp_path) -> None:
    """`medkd3d ablate --quick` needs no flag: the study and its generated dataset go to runs/ablate_quick."""
    seen = {}

    def fake_run_study(config, progress=True):
        seen["config"] = config
        from medkd3d.ablation.runner import StudyOutcome

        return StudyOutcome()

    monkeypatch.setattr("medkd3d.ablation.runner.run_study", fake_run_study)
    monkeypatch.chdir(tmp_path)
    assert _ablate(["--quick", "--no-progress"]) == 0
    config = seen["config"]
    assert str(config.out_dir) == "runs/ablate_quick"
    assert str(config.dataset_dir) == "runs/ablate_quick/data/synthetic_brats2019" and config.synthetic is not None
    assert _ablate(["--no-progress", "--override", "learning_rate=5e-4", "--profile", "cpu"]) == 0
    config = seen["config"]
    assert str(config.out_dir) == "runs/ablate" and config.synthetic is not None  # the bundles' embedded default
    assert config.overrides == {"learning_rate": 5e-4} and config.profiles == ["cpu"]
    assert _ablate(["--dataset-dir", "elsewhere", "--no-progress"]) == 0
    assert seen["config"].synthetic is None  # a dataset the user names is never generated


@pytest.mark.slow
def test_tiny_study_runs_the_bundles_writes_reports_and_resumes(synthetic_brats_root, tmp_path, capsys, caplog):
    out = tmp_path / "study"
    argv = [
        "--dataset-dir", str(synthetic_brats_root), "--out", str(out), "--students", STUDENT,
        "--kd", "none", "logit+feature", "--sizes", "1", "1+unlabelled", "--seeds", "0", "--folds", "2",
        "--epochs", "1", "--teacher-epochs", "1", "--spatial-size", "32", "--tiny", "--batch-size", "2",
        "--device", "cpu", "--threads", "1", "--no-progress",
    ]  # fmt: skip
    assert _ablate(argv) == 0
    assert "trained 8 runs, skipped 0" in capsys.readouterr().out

    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[: len(RESULT_COLUMNS)] == list(RESULT_COLUMNS)
    cells = sorted((r["student"], r["kd"], r["size"], r["seed"], r["fold"]) for r in rows)
    assert cells == sorted(
        (STUDENT, k, n, "0", str(f)) for k in ("none", "logit+feature") for n in ("1", "1+unlabelled") for f in (0, 1)
    )
    splits = json.loads((out / "splits.json").read_text())
    for row in rows:
        for metric in ("balanced_accuracy", "auc", "f1", "sensitivity", "specificity"):
            assert 0.0 <= float(row[metric]) <= 1.0, (metric, row)
        assert int(row["parameters"]) > 0 and float(row["gflops"]) > 0 and float(row["cpu_latency_ms"]) > 0
        assert float(row["train_time_s"]) > 0
        assert row["train_subjects"] == "2"  # one labelled subject per class
        assert row["test_subjects"] == str(len(splits["test"]))  # every run reports on the held-out test set
    # each run was a bundle run: its checkpoint and the bundle's evaluation files are in the study folder
    result = json.loads((out / "runs" / f"{STUDENT}_logit+feature_1+unlabelled_s0_f1.json").read_text())
    assert result["unlabelled_subjects"] > 0 and result["teacher"] == "brats_hdkd_teacher3d"
    run_dir = out / "bundle_runs" / result["bundle_run"]
    assert (run_dir / "models" / "model.pt").is_file() and (run_dir / "eval" / "metrics.json").is_file()
    # the balanced accuracy uses the decision threshold evaluate.json chose on the validation subjects
    assert result["threshold"] == json.loads((run_dir / "eval" / "metrics.json").read_text())["threshold"]
    assert 0.0 <= result["threshold"] <= 1.0
    with (run_dir / "eval" / "evaluation_predictions.csv").open(newline="") as f:
        assert sorted(r["subject"] for r in csv.DictReader(f)) == sorted(splits["test"])
    # cross-entropy cannot use unlabelled subjects: the no-KD run of 1+unlabelled is the one of 1, trained once
    none_runs = {
        json.loads((out / "runs" / f"{STUDENT}_none_{n}_s0_f0.json").read_text())["bundle_run"]
        for n in ("1", "1+unlabelled")
    }
    assert len(none_runs) == 1
    assert sorted(p.name for p in (out / "teachers" / "brats_hdkd_teacher3d").iterdir()) == ["fold0", "fold1"]

    summary = (out / "summary.md").read_text()
    for heading in ("## Balanced accuracy", "## AUC", "## KD gain over no KD: balanced accuracy", "## Cost"):
        assert heading in summary
    for name in ("metric_vs_size_balanced_accuracy.png", "metric_vs_size_auc.png", "pareto_latency.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC

    # resume: the same command finds every run finished and trains nothing, not even a teacher
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _ablate(argv) == 0
    assert "trained 0 runs, skipped 8" in capsys.readouterr().out
    assert not [r for r in caplog.records if "Engine run" in r.getMessage() or "Training the" in r.getMessage()]
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == stamps

    # an interrupted study continues where it stopped: only the missing run is redone, from its bundle run
    (out / "runs" / f"{STUDENT}_logit+feature_1_s0_f1.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _ablate(argv) == 0
    assert "trained 1 runs, skipped 7" in capsys.readouterr().out
    assert not [r for r in caplog.records if "Training the" in r.getMessage()]  # the saved teacher is reused

    # a different setting in the same folder is refused instead of mixing incomparable runs
    capsys.readouterr()
    assert _ablate([*argv, "--epochs", "3"]) == 1  # one clear line, no traceback
    assert "epochs: stored 1, now 3" in capsys.readouterr().err
