"""benchmarks/threshold_rules.py: decision-threshold rules scored by leave-one-out on validation subjects, checked
against hand-worked cases."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

#: Validation scores of a model that ranks perfectly but is shifted: every subject is above 0.5.
SHIFTED_SCORES = np.array([0.6, 0.65, 0.7, 0.8, 0.85, 0.9])
SHIFTED_LABELS = np.array([0, 0, 0, 1, 1, 1])


@pytest.fixture
def rules(benchmark_script):
    return benchmark_script("threshold_rules")


def test_leave_one_out_scores_a_threshold_chosen_without_the_subject(rules) -> None:
    # argmax calls every subject HGG: recall 1 and 0
    assert rules.leave_one_out_balanced_accuracy(SHIFTED_SCORES, SHIFTED_LABELS, rules.argmax) == 0.5
    # without 0.7 Youden cuts at (0.65 + 0.8) / 2 = 0.725, without 0.8 at (0.7 + 0.85) / 2 = 0.775: all correct
    assert rules.youden(np.delete(SHIFTED_SCORES, 2), np.delete(SHIFTED_LABELS, 2)) == pytest.approx(0.725)
    assert rules.youden(np.delete(SHIFTED_SCORES, 3), np.delete(SHIFTED_LABELS, 3)) == pytest.approx(0.775)
    assert rules.leave_one_out_balanced_accuracy(SHIFTED_SCORES, SHIFTED_LABELS, rules.youden) == 1.0
    assert rules.leave_one_out_balanced_accuracy(SHIFTED_SCORES, SHIFTED_LABELS, rules.equal_error) == 1.0
    assert 0.7 < rules.balanced_logistic(SHIFTED_SCORES, SHIFTED_LABELS) < 0.8  # between the classes
    # one LGG among the HGG scores: Youden misclassifies it and no other subject, so (2/3 + 1) / 2
    overlapping = np.array([0.6, 0.65, 0.88, 0.8, 0.85, 0.9])
    assert rules.leave_one_out_balanced_accuracy(overlapping, SHIFTED_LABELS, rules.youden) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="two subjects of each class"):
        rules.leave_one_out_balanced_accuracy(SHIFTED_SCORES[2:], SHIFTED_LABELS[2:], rules.youden)


def test_markdown_counts_models_where_a_rule_beats_youden(rules, tmp_path: Path) -> None:
    eval_dir = tmp_path / "run" / "brats_teacher_vggvit3d" / "eval"
    eval_dir.mkdir(parents=True)
    with (eval_dir / "threshold_predictions.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["subject", "prob_LGG", "prob_HGG", "predicted", "label"])
        for i, (p, y) in enumerate(zip(SHIFTED_SCORES, SHIFTED_LABELS)):
            writer.writerow([f"s{i}", f"{1 - p:.6f}", f"{p:.6f}", "HGG", ["LGG", "HGG"][y]])
    out = tmp_path / "rules.md"
    assert rules.main([str(tmp_path / "run"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "1 models." in text and "No test subject is read." in text
    assert "| youden | 1.000 | 0 | 0 |" in text and "| argmax | 0.500 | 0 | 1 |" in text


def test_a_run_without_threshold_predictions_is_named(rules, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"empty: no \*/eval/threshold_predictions.csv"):
        rules.collect([tmp_path / "empty"])
