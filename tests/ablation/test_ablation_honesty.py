"""The study summary's honesty: one-class runs flagged, retention over chance against the fold's teacher."""

from __future__ import annotations

import math

import pytest

from medkd3d.ablation.report import format_summary
from medkd3d.ablation.stats import (
    cell_flags,
    evaluated_subjects,
    predicts_one_class,
    retention_rows,
    summarize_retention,
)

TEACHERS = [
    {"fold": 0, "model": "vggvit3d", "balanced_accuracy": 0.9, "auc": 0.95, "train_subjects": 16, "parameters": 9,
     "gflops": 1.0, "cpu_latency_ms": 9.0, "train_time_s": 1.0, "test_subjects": 30},
    {"fold": 1, "model": "vggvit3d", "balanced_accuracy": 0.7, "auc": 0.8, "train_subjects": 16, "parameters": 9,
     "gflops": 1.0, "cpu_latency_ms": 9.0, "train_time_s": 1.0, "test_subjects": 30},
]  # fmt: skip


def _row(student: str, kd: str, fold: int, bacc: float, auc: float, sens: float, spec: float, n: int = 30) -> dict:
    return {"student": student, "teacher": "vggvit3d", "kd": kd, "size": "all", "seed": 0, "fold": fold,
            "balanced_accuracy": bacc,
            "auc": auc, "f1": 0.5, "sensitivity": sens, "specificity": spec, "parameters": 1, "gflops": 0.1,
            "cpu_latency_ms": 1.0, "train_time_s": 1.0, "test_subjects": n}  # fmt: skip


def _rows() -> list[dict]:
    return [
        # a constant 3D student: every subject called LGG (sensitivity 0, specificity 1), then every one HGG
        _row("3d", "none", 0, 0.5, 0.5, 0.0, 1.0),
        _row("3d", "none", 1, 0.5, 0.5, 1.0, 0.0),
        # a 2.5D student that learned, evaluated on few subjects in fold 1
        _row("2.5d", "none", 0, 0.8, 0.9, 0.8, 0.8),
        _row("2.5d", "none", 1, 0.6, 0.7, 0.6, 0.6, n=12),
    ]


def test_one_class_runs_and_subject_counts() -> None:
    rows = _rows()
    assert [predicts_one_class(r) for r in rows] == [True, True, False, False]
    assert predicts_one_class({"one_class": "HGG"}) and not predicts_one_class({"one_class": ""})
    assert predicts_one_class({"one_class": "False"}) is False  # read back from a CSV
    assert predicts_one_class({"balanced_accuracy": 0.5}) is None
    assert evaluated_subjects(rows[3]) == 12 and evaluated_subjects({"val_subjects": 7}) == 7
    assert evaluated_subjects({}) is None


def test_retention_by_hand() -> None:
    paired = retention_rows(_rows(), TEACHERS)
    constant = paired[0]
    assert constant["margin_retention"] == 0.0  # (0.5 - 0.5) / (0.9 - 0.5): a constant student retains nothing
    assert constant["auc_ratio"] == pytest.approx(0.5 / 0.95)
    learned = paired[3]
    assert learned["margin_retention"] == pytest.approx((0.6 - 0.5) / (0.7 - 0.5))
    at_chance = retention_rows(_rows(), [{**TEACHERS[0], "balanced_accuracy": 0.5}])
    assert len(at_chance) == 2 and all(math.isnan(r["margin_retention"]) and r["teacher_at_chance"] for r in at_chance)

    summaries = {s.auc_ratio.student: s for s in summarize_retention(_rows(), TEACHERS, num_resamples=200)}
    assert summaries["3d"].margin_retention.mean == 0.0 and summaries["3d"].undefined_runs == 0
    assert summaries["2.5d"].margin_retention.mean == pytest.approx(((0.3 / 0.4) + (0.1 / 0.2)) / 2)


def test_each_run_is_paired_with_its_own_teacher() -> None:
    """A study with two teacher bundles: a student is never compared against the other teacher."""
    other = [{**t, "model": "hdkd_teacher3d", "balanced_accuracy": 0.99, "auc": 0.99} for t in TEACHERS]
    paired = retention_rows(_rows(), [*other, *TEACHERS])
    assert paired[0]["margin_retention"] == 0.0 and paired[0]["auc_ratio"] == pytest.approx(0.5 / 0.95)
    assert retention_rows(_rows(), other) == []


def test_cells_are_flagged_in_words() -> None:
    flags = cell_flags(_rows(), TEACHERS, num_resamples=200)
    assert flags[("3d", "none", "all")] == ["predicts one class in 2 of 2 runs", "AUC 95% CI includes 0.5"]
    assert flags[("2.5d", "none", "all")] == ["n < 20 test subjects: numbers are noisy"]
    undefined = cell_flags(_rows(), [{**t, "balanced_accuracy": 0.5} for t in TEACHERS], num_resamples=200)
    assert "teacher at chance: retention undefined in 2 of 2 runs" in undefined[("2.5d", "none", "all")]


def test_summary_shows_flags_retention_baseline_and_chance() -> None:
    baseline = [{"fold": 0, "balanced_accuracy": 0.8, "auc": 0.9, "test_subjects": 30},
                {"fold": 1, "balanced_accuracy": 0.7, "auc": 0.8, "test_subjects": 30}]  # fmt: skip
    text = format_summary(_rows(), TEACHERS, num_resamples=200, baseline_rows=baseline)
    assert "Chance level: AUC 0.5, balanced accuracy 0.5" in text
    assert "- 3d, KD none, size all: predicts one class in 2 of 2 runs; AUC 95% CI includes 0.5" in text
    assert "## Retention against the teacher" in text
    assert "| 3d | none | all | 2 | 0.576 ± 0.070 |" in text  # AUC ratios 0.5/0.95 and 0.5/0.8
    assert "| 0.000 ± 0.000 | [0.000, 0.000] | 0 |" in text  # margin retention of the constant student
    assert "## Trivial baseline" in text and "| mean | 0.750 | 0.850 |  |" in text
    # without teachers or baseline the summary still renders (old callers)
    assert "## Retention against the teacher" not in format_summary(_rows(), num_resamples=50)
