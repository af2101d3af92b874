"""Honest-report helpers against hand-computed cases: retention over chance, chance levels, AUC CIs, flags."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medkd3d.engines import (
    auc_bootstrap_ci,
    auc_ratio,
    chance_levels,
    honesty_flags,
    margin_retention,
    predicts_one_class,
    retention,
    roc_auc,
    summarize_predictions,
)


def test_margin_retention_by_hand() -> None:
    assert margin_retention(0.75, 0.9) == pytest.approx(0.625)  # 0.25 / 0.4
    assert margin_retention(0.9, 0.9) == pytest.approx(1.0)
    assert margin_retention(0.5, 0.9) == 0.0  # a student at chance keeps none of the margin
    assert margin_retention(0.4, 0.9) == pytest.approx(-0.25)
    assert margin_retention(0.6, 0.8, chance=1 / 3) == pytest.approx((0.6 - 1 / 3) / (0.8 - 1 / 3))
    for teacher in (0.5, 0.45):  # teacher at or below chance: undefined, never 1
        assert math.isnan(margin_retention(0.5, teacher))
    assert math.isnan(margin_retention(None, 0.9)) and math.isnan(margin_retention(0.7, float("nan")))
    assert auc_ratio(0.8, 0.9) == pytest.approx(0.8 / 0.9) and math.isnan(auc_ratio(0.8, None))
    # a chance-level student of a teacher below chance: the ratio would read 1.88, a "better than its teacher"
    assert math.isnan(auc_ratio(0.56, 0.297)) and math.isnan(auc_ratio(0.7, 0.5))


def test_constant_student_of_a_constant_teacher_is_not_retained() -> None:
    # the pipeline's old failure: both predict one class, balanced accuracy 0.5, and "retention 1.000"
    constant = {"auc": 0.5, "balanced_accuracy": 0.5}
    kept = retention(constant, constant)
    assert math.isnan(kept.auc_ratio)  # a ratio against a teacher at chance would pass it (1.0) ...
    assert math.isnan(kept.margin_retention)  # ... neither retention is defined, and the flag says why
    assert kept.flags == ["teacher at chance: retention undefined"]
    good_teacher = retention(constant, {"auc": 0.95, "balanced_accuracy": 0.9})
    assert good_teacher.margin_retention == 0.0 and good_teacher.flags == []


def test_chance_levels() -> None:
    assert chance_levels([0, 0, 0, 1]) == {"auc": 0.5, "balanced_accuracy": 0.5, "accuracy": 0.75}
    assert chance_levels([0, 1, 2, 2], num_classes=3)["balanced_accuracy"] == pytest.approx(1 / 3)


def test_constant_classifier_is_flagged() -> None:
    labels = np.array([0] * 6 + [1] * 4)
    probabilities = np.tile([0.6, 0.4], (10, 1))  # the same output for every subject
    assert predicts_one_class(probabilities) == 0
    summary = summarize_predictions(probabilities, labels, ["LGG", "HGG"])
    assert summary.metrics["balanced_accuracy"] == 0.5 and summary.metrics["auc"] == 0.5
    assert summary.one_class == "LGG" and summary.num_subjects == 10
    assert summary.auc_ci == (0.5, 0.5)
    assert summary.flags == [
        "predicts one class (LGG) for all 10 test subjects",
        "AUC 95% CI includes 0.5",
        "n < 20 test subjects: numbers are noisy",
    ]
    assert summary.chance == {"auc": 0.5, "balanced_accuracy": 0.5, "accuracy": 0.6}


def test_a_separating_classifier_on_enough_subjects_is_not_flagged() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 15 + [1] * 15)
    p_hgg = np.clip(labels * 0.6 + 0.2 + rng.normal(0, 0.1, labels.size), 0, 1)
    summary = summarize_predictions(np.stack([1 - p_hgg, p_hgg], axis=1), labels, ["LGG", "HGG"])
    assert summary.one_class is None and summary.flags == []
    assert summary.auc_ci[0] > 0.5
    assert honesty_flags(30, None, (0.4, 0.9)) == ["AUC 95% CI includes 0.5"]
    assert honesty_flags(40, None, (0.14, 0.47)) == ["AUC below chance (95% CI below 0.5)"]
    assert honesty_flags(40, None, (0.8, 0.95), auc=0.88, baseline_auc=0.895) == [
        "AUC below the trivial baseline's (0.895)"
    ]
    assert honesty_flags(40, None, (0.9, 0.99), auc=0.95, baseline_auc=0.895) == []
    assert honesty_flags(5, "HGG", None, min_subjects=5) == ["predicts one class (HGG) for all 5 test subjects"]


def test_auc_bootstrap_ci_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(1)
    positives = rng.random(23) < 0.4
    scores = positives * 0.5 + rng.random(23)
    scores[:4] = 0.7  # ties count one half
    low, high = auc_bootstrap_ci(scores, positives, num_resamples=300, seed=5)
    # the same draws, resample by resample: positives then negatives, each from its own class
    draw = np.random.default_rng(5)
    pos, neg = scores[positives], scores[~positives]
    pos_idx = draw.integers(0, pos.size, (300, pos.size))
    neg_idx = draw.integers(0, neg.size, (300, neg.size))
    aucs = [
        roc_auc(np.concatenate([pos[p], neg[n]]), np.arange(pos.size + neg.size) < pos.size)
        for p, n in zip(pos_idx, neg_idx)
    ]
    assert (low, high) == pytest.approx(tuple(np.percentile(aucs, [2.5, 97.5])))
    assert low <= roc_auc(scores, positives) <= high
    assert auc_bootstrap_ci(scores, positives, num_resamples=300, seed=5) == (low, high)  # seeded
    assert all(math.isnan(v) for v in auc_bootstrap_ci([0.1, 0.2], [True, True]))
    assert auc_bootstrap_ci([0.1, 0.9, 0.8], [False, True, True], num_resamples=50) == (1.0, 1.0)
