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


def test_training_subjects_join_every_choice_but_are_never_scored(rules) -> None:
    # training LGG at 0.86-0.89 and HGG at 0.92-0.95 pull Youden's cut to 0.895 (0.905 without the validation HGG
    # at 0.9): every validation HGG falls below it, every validation LGG stays below, so (0/3 + 3/3) / 2
    training = (np.array([0.86, 0.87, 0.88, 0.89, 0.92, 0.93, 0.94, 0.95]), np.array([0] * 4 + [1] * 4))
    assert rules.youden(np.r_[SHIFTED_SCORES[:3], SHIFTED_SCORES[4:], training[0]],
                        np.r_[SHIFTED_LABELS[:3], SHIFTED_LABELS[4:], training[1]]) == pytest.approx(0.895)  # fmt: skip
    assert rules.leave_one_out_balanced_accuracy(SHIFTED_SCORES, SHIFTED_LABELS, rules.youden, training) == 0.5
    assert rules.leave_one_out_balanced_accuracy(SHIFTED_SCORES, SHIFTED_LABELS, rules.youden) == 1.0


def _write_threshold_predictions(eval_dir: Path, scores, labels, sides=None) -> None:
    eval_dir.mkdir(parents=True)
    with (eval_dir / "threshold_predictions.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["subject", "prob_LGG", "prob_HGG", "predicted", "label", *(["side"] if sides else [])])
        for i, (p, y) in enumerate(zip(scores, labels)):
            side = [sides[i]] if sides else []
            writer.writerow([f"s{i}", f"{1 - p:.6f}", f"{p:.6f}", "HGG", ["LGG", "HGG"][y], *side])


def test_markdown_counts_models_where_a_rule_beats_youden(rules, tmp_path: Path) -> None:
    # a file without a side column (validation subjects only) and one with training subjects
    _write_threshold_predictions(tmp_path / "run" / "brats_teacher_vggvit3d" / "eval", SHIFTED_SCORES, SHIFTED_LABELS)
    training_scores = [0.86, 0.87, 0.88, 0.89, 0.92, 0.93, 0.94, 0.95]
    _write_threshold_predictions(
        tmp_path / "run" / "brats_student_effnet3d" / "eval", [*SHIFTED_SCORES, *training_scores],
        [*SHIFTED_LABELS, 0, 0, 0, 0, 1, 1, 1, 1], ["val"] * 6 + ["train"] * 8,
    )  # fmt: skip
    out = tmp_path / "rules.md"
    assert rules.main([str(tmp_path / "run"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "2 models." in text and "No test subject is read." in text
    # the training rows are never scored: every rule sees the same six validation subjects of each model
    assert "| youden | 2 | 1.000 | 1.000 | 0 | 0 |" in text and "| argmax | 2 | 0.500 | 1.000 | 0 | 2 |" in text
    assert "| youden_with_training | 1 | 0.500 | 1.000 | 0 | 1 |" in text


def test_a_run_without_threshold_predictions_is_named(rules, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"empty: no \*/eval/threshold_predictions.csv"):
        rules.collect([tmp_path / "empty"])
