"""Classification metrics against scikit-learn on fixed arrays, as MONAI key metrics, and written to disk."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from sklearn import metrics as skm
from torch import nn

from medkd3d.engines import (
    ClassificationMetric,
    ClassificationReport,
    OperatingPoint,
    classification_metrics,
    evaluate_classifier,
    threshold_operating_points,
    write_metrics,
    youden_threshold,
)

# Binary: ties between positives and negatives in the scores (AUC counts them one half), one of each error kind.
BINARY_LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
BINARY_P1 = np.array([0.1, 0.4, 0.6, 0.4, 0.8, 0.4, 0.9, 0.7, 0.3, 0.6])

MULTI_LABELS = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2])
MULTI_PROBS = np.array(
    [
        [0.7, 0.2, 0.1], [0.3, 0.4, 0.3], [0.5, 0.1, 0.4], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1],
        [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8], [0.4, 0.1, 0.5],
    ]
)  # fmt: skip


def test_binary_metrics_match_sklearn():
    probs = np.stack([1 - BINARY_P1, BINARY_P1], axis=1)
    pred = probs.argmax(axis=1)
    m = classification_metrics(probs, BINARY_LABELS, class_names=["LGG", "HGG"])
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(BINARY_LABELS, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(BINARY_LABELS, pred))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(BINARY_LABELS, BINARY_P1))
    assert m["f1"] == pytest.approx(skm.f1_score(BINARY_LABELS, pred))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(BINARY_LABELS, pred, pos_label=1))
    assert m["specificity"] == pytest.approx(skm.recall_score(BINARY_LABELS, pred, pos_label=0))
    assert m["confusion_matrix"] == skm.confusion_matrix(BINARY_LABELS, pred).tolist()
    assert m["precision"]["HGG"] == pytest.approx(skm.precision_score(BINARY_LABELS, pred))
    assert m["recall"]["LGG"] == pytest.approx(m["specificity"])
    # by hand: 3 of 4 LGG and 4 of 6 HGG right (0.6 -> HGG, 0.4 -> LGG)
    assert m["confusion_matrix"] == [[3, 1], [2, 4]] and m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)


def test_multiclass_macro_metrics_match_sklearn():
    pred = MULTI_PROBS.argmax(axis=1)
    m = classification_metrics(MULTI_PROBS, MULTI_LABELS)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(MULTI_LABELS, pred))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(MULTI_LABELS, MULTI_PROBS, multi_class="ovr", average="macro"))
    assert m["f1"] == pytest.approx(skm.f1_score(MULTI_LABELS, pred, average="macro"))
    assert m["sensitivity"] == pytest.approx(skm.recall_score(MULTI_LABELS, pred, average="macro"))
    specificity = np.mean([skm.recall_score(MULTI_LABELS != c, pred != c) for c in range(3)])
    assert m["specificity"] == pytest.approx(specificity)
    precision = skm.precision_score(MULTI_LABELS, pred, average=None, zero_division=0)
    assert list(m["precision"].values()) == pytest.approx(precision.tolist())
    assert m["num_samples"] == 12


def test_undefined_values_and_bad_input():
    m = classification_metrics(np.array([[0.9, 0.1], [0.8, 0.2]]), np.array([0, 0]))
    assert math.isnan(m["auc"]) and m["f1"] == 0.0 and m["precision"]["1"] == 0.0
    assert m["balanced_accuracy"] == 1.0  # only classes present in the labels count
    with pytest.raises(ValueError, match="outside the 2 predicted classes"):
        classification_metrics(np.array([[0.9, 0.1]]), np.array([2]))
    with pytest.raises(ValueError, match="shapes"):
        classification_metrics(np.array([0.9, 0.1]), np.array([0, 1]))


class FixedLogits(nn.Module):
    """Returns the logits stored for each sample (its image is the sample's index)."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits[x[:, 0].long()]


def _index_loader(labels):
    items = [{"image": torch.tensor([float(i)]), "label": torch.tensor(int(y))} for i, y in enumerate(labels)]
    return DataLoader(Dataset(items), batch_size=3)


def test_key_metric_of_a_monai_evaluator_and_evaluate_classifier(tmp_path):
    logits = np.log(np.stack([1 - BINARY_P1, BINARY_P1], axis=1))  # softmax(log p) == p
    network, loader = FixedLogits(logits), _index_loader(BINARY_LABELS)
    evaluator = SupervisedEvaluator(
        "cpu", loader, network,
        key_val_metric={"balanced_accuracy": ClassificationMetric("balanced_accuracy")},
        additional_metrics={"auc": ClassificationMetric("auc")},
    )  # fmt: skip
    evaluator.run()
    assert evaluator.state.metrics["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert evaluator.state.metrics["auc"] == pytest.approx(skm.roc_auc_score(BINARY_LABELS, BINARY_P1))
    assert evaluator.state.best_metric == pytest.approx(evaluator.state.metrics["balanced_accuracy"])

    report = evaluate_classifier(network, loader, "cpu", class_names=["LGG", "HGG"])
    assert report["auc"] == pytest.approx(evaluator.state.metrics["auc"])
    assert report["confusion_matrix"] == [[3, 1], [2, 4]]

    json_path, csv_path = write_metrics(report, tmp_path / "reports", "student_test")
    assert json.loads(json_path.read_text())["precision"]["HGG"] == pytest.approx(4 / 5)
    rows = dict(csv.reader(csv_path.open()))
    assert rows["metric"] == "value" and float(rows["balanced_accuracy"]) == pytest.approx(report["balanced_accuracy"])
    assert rows["confusion_matrix/LGG/HGG"] == "1" and float(rows["recall/HGG"]) == pytest.approx(4 / 6)
    assert sorted(p.name for p in json_path.parent.iterdir()) == ["student_test.csv", "student_test.json"]


def test_nan_is_written_as_null(tmp_path):
    json_path, csv_path = write_metrics({"auc": float("nan"), "accuracy": 1.0}, tmp_path, "one_class")
    assert json.loads(json_path.read_text()) == {"auc": None, "accuracy": 1.0}
    assert "auc," in csv_path.read_text()
    with pytest.raises(ValueError, match="plain file stem"):
        write_metrics({}, tmp_path, "a/b")


def test_threshold_operating_points_by_hand():
    candidates, sensitivity, specificity = threshold_operating_points(
        np.array([0.8, 0.2, 0.6, 0.4, 0.6]), np.array([True, False, True, False, False])
    )
    # distinct scores 0.2, 0.4, 0.6, 0.8: their midpoints, and 0 and 1 beyond them
    np.testing.assert_allclose(candidates, [0.0, 0.3, 0.5, 0.7, 1.0])
    np.testing.assert_allclose(sensitivity, [1.0, 1.0, 1.0, 0.5, 0.0])
    np.testing.assert_allclose(
        specificity, [0.0, 1 / 3, 2 / 3, 1.0, 1.0]
    )  # the negative at 0.6 is called positive up to 0.5


def test_youden_threshold_by_hand():
    # P(HGG) of 4 LGG and 4 HGG subjects; the argmax (0.5) calls one HGG at 0.45 LGG: J = 1 + 3/4 - 1.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p1 = np.array([0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.7, 0.9])
    probabilities = np.stack([1 - p1, p1], axis=1)
    # cutting between 0.3 and 0.45 separates the classes: J = 1 at the midpoint 0.375 only
    assert youden_threshold(probabilities, labels) == pytest.approx(0.375)
    at_argmax = classification_metrics(probabilities, labels)
    at_threshold = classification_metrics(probabilities, labels, threshold=0.375)
    assert at_argmax["balanced_accuracy"] == pytest.approx((1 + 3 / 4) / 2) and at_argmax["threshold"] is None
    assert at_threshold["balanced_accuracy"] == 1.0 and at_threshold["threshold"] == pytest.approx(0.375)
    assert at_threshold["auc"] == at_argmax["auc"] == 1.0  # AUC ignores the threshold


def test_youden_threshold_ties_keep_the_argmax_and_undefined_cases():
    # J = 1/3 at the cuts 0.15, 0.5 and 0.85 (0 at 0.325 and 0.675): the one nearest the argmax's 0.5 wins
    labels = np.array([0, 1, 0, 1, 0, 1])
    p1 = np.array([0.1, 0.2, 0.45, 0.55, 0.8, 0.9])
    assert youden_threshold(np.stack([1 - p1, p1], axis=1), labels) == pytest.approx(0.5)
    assert youden_threshold(np.stack([1 - p1, p1], axis=1), np.ones(6, dtype=int)) is None  # one class
    assert youden_threshold(MULTI_PROBS, MULTI_LABELS) is None  # more than two classes
    with pytest.raises(ValueError, match="two classes"):
        classification_metrics(MULTI_PROBS, MULTI_LABELS, threshold=0.5)


def test_operating_point_from_validation_applies_to_test():
    # validation: the best cut is 0.375 (as above); test: one HGG at 0.4 that the argmax calls LGG
    val_labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    val_p1 = np.array([0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.7, 0.9])
    test_labels = np.array([0, 0, 1, 1])
    test_p1 = np.array([0.1, 0.35, 0.4, 0.8])

    def evaluator(p1, labels, metrics):
        logits = np.log(np.stack([1 - p1, p1], axis=1))
        return SupervisedEvaluator("cpu", _index_loader(labels), FixedLogits(logits), key_val_metric=metrics)

    point = OperatingPoint()
    report = ClassificationReport(threshold=point)
    assert point.threshold is None  # before validation: the argmax
    validation = evaluator(val_p1, val_labels, {"threshold": point})
    validation.run()
    assert validation.state.metrics["threshold"] == pytest.approx(0.375) == point.threshold
    test = evaluator(test_p1, test_labels, {"report": report})
    test.run()
    result = test.state.metrics["report"]
    assert result["threshold"] == pytest.approx(0.375)
    assert result["confusion_matrix"] == [[2, 0], [0, 2]]  # 0.4 >= 0.375: HGG; the argmax would miss it
    assert classification_metrics(np.stack([1 - test_p1, test_p1], axis=1), test_labels)["confusion_matrix"] == [
        [2, 0],
        [1, 1],
    ]
