"""Classification metrics (accuracy, balanced accuracy, ROC AUC, F1, sensitivity, specificity, per-class
precision/recall, confusion matrix) as plain functions and as Ignite metrics for MONAI workflows.

Binary tasks (two classes) report sensitivity, specificity, F1 and AUC for the positive class 1 (HGG in
glioma grading); tasks with more classes report their macro averages over classes. Undefined ratios
(0/0, e.g. the precision of a class never predicted) are 0 like scikit-learn's ``zero_division=0``; an AUC
without both positive and negative samples is NaN.

The predicted class is the argmax of the probabilities, or, for two classes, ``P(class 1) >= threshold`` when a
decision threshold is given: :func:`youden_threshold` chooses one on validation subjects (the bundles'
``evaluate.json`` does, with :class:`OperatingPoint`), so that the test subjects' balanced accuracy is measured
at an operating point selected without them. AUC does not depend on the threshold.

Attach to a MONAI ``SupervisedEvaluator``::

    evaluator = SupervisedEvaluator(
        device, val_loader, network,
        key_val_metric={"balanced_accuracy": ClassificationMetric("balanced_accuracy")},
        additional_metrics={"auc": ClassificationMetric("auc")},
    )
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from monai.handlers import from_engine
from scipy.stats import rankdata

__all__ = [
    "METRIC_NAMES",
    "ClassificationMetric",
    "ClassificationReport",
    "OperatingPoint",
    "classification_metrics",
    "confusion_matrix",
    "predicted_classes",
    "roc_auc",
    "threshold_operating_points",
    "youden_threshold",
]


#: MONAI's default ``(y_pred, y)`` output transform: ``pred`` and ``label`` of batch or decollated outputs.
_PRED_AND_LABEL = from_engine(["pred", "label"])

#: The scalar metrics :func:`classification_metrics` reports (any of them can be a key metric).
METRIC_NAMES = ("accuracy", "balanced_accuracy", "auc", "f1", "sensitivity", "specificity")


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class ``i`` predicted as class ``j`` (int64 ``[K, K]``)."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def roc_auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positives``, NaN without both classes.

    Computed as the Mann-Whitney U statistic with average ranks for ties, which equals the trapezoidal area
    under the ROC curve (a tie between a positive and a negative counts one half).
    """
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def threshold_operating_points(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct decision threshold on ``scores`` with its sensitivity and specificity.

    The candidates are the midpoints between consecutive distinct scores, and 0 and 1 beyond them, so a threshold
    never sits on a subject's score; a subject is called positive when its score reaches the threshold.

    Args:
        scores: ``[N]`` scores of the positive class, e.g. ``P(class 1)``.
        positives: ``[N]`` booleans, true for the positive subjects (both classes present).

    Returns:
        ``(candidates, sensitivity, specificity)``, three arrays with one entry per candidate, increasing thresholds.
    """
    unique = np.unique(scores)
    candidates = np.concatenate([[0.0], (unique[:-1] + unique[1:]) / 2, [1.0]])
    predicted = scores[None, :] >= candidates[:, None]  # [candidates, N]
    return candidates, predicted[:, positives].mean(axis=1), 1.0 - predicted[:, ~positives].mean(axis=1)


def youden_threshold(probabilities: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> float | None:
    """The decision threshold on ``P(class 1)`` that maximises Youden's J (sensitivity + specificity - 1).

    The candidates are the midpoints between consecutive distinct scores (and 0 and 1 beyond them), so a
    threshold never sits on a subject's score; among equally good ones the one nearest to 0.5 (the argmax rule)
    wins, so a model whose default threshold is already best keeps it.

    Args:
        probabilities: ``[N, 2]`` class probabilities.
        labels: ``[N]`` true classes in ``{0, 1}``.

    Returns:
        The threshold, or ``None`` when it is not defined: more than two classes, or labels of one class only
        (sensitivity or specificity has no subject), in which case the argmax rule stays.
    """
    probabilities = np.asarray(torch.as_tensor(probabilities, dtype=torch.float64).cpu())
    labels = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64).reshape(-1)
    if probabilities.ndim != 2 or probabilities.shape[1] != 2 or probabilities.shape[0] != labels.shape[0]:
        return None
    positives = labels == 1
    if positives.all() or not positives.any():
        return None
    candidates, sensitivity, specificity = threshold_operating_points(probabilities[:, 1], positives)
    youden = sensitivity + specificity - 1.0
    best = np.flatnonzero(np.isclose(youden, youden.max()))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def predicted_classes(
    probabilities: np.ndarray | torch.Tensor, threshold: float | OperatingPoint | None = None
) -> np.ndarray:
    """The predicted class of each row: ``P(class 1) >= threshold`` for two classes with a threshold, else the argmax.

    Args:
        probabilities: ``[N, K]`` class probabilities.
        threshold: a number, an :class:`OperatingPoint` (its latest threshold) or ``None`` (the argmax).

    Returns:
        ``[N]`` int64 class indices.

    Raises:
        ValueError: for a threshold with more than two classes.
    """
    probabilities = np.asarray(torch.as_tensor(probabilities, dtype=torch.float64).cpu())
    threshold = _threshold_value(threshold)
    if threshold is None:
        return probabilities.argmax(axis=1)
    if probabilities.shape[1] != 2:
        raise ValueError(
            f"A decision threshold needs two classes, got {probabilities.shape[1]}; use the argmax (None)."
        )
    return (probabilities[:, 1] >= threshold).astype(np.int64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ``numerator / denominator`` with 0 where the denominator is 0."""
    return np.divide(numerator, denominator, out=np.zeros(numerator.shape, dtype=float), where=denominator > 0)


def classification_metrics(
    probabilities: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    class_names: Sequence[str] | None = None,
    threshold: float | OperatingPoint | None = None,
) -> dict[str, Any]:
    """All classification metrics of a set of predictions.

    Args:
        probabilities: ``[N, K]`` class probabilities (or any per-class scores; AUC uses them as scores and
            the predicted class is their argmax), ``K >= 2``.
        labels: ``[N]`` integer true classes in ``[0, K)``.
        class_names: ``K`` names for the per-class entries; defaults to ``"0"``, ``"1"``, ...
        threshold: for two classes, predict class 1 when its probability is at least this (e.g. from
            :func:`youden_threshold` on validation subjects, or an :class:`OperatingPoint`); ``None``: the argmax.

    Returns:
        ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present in ``labels``), ``auc``,
        ``f1``, ``sensitivity``, ``specificity`` (positive class 1 when ``K == 2``, macro averages otherwise),
        ``precision``/``recall``/``f1_per_class`` (dicts by class name), ``confusion_matrix`` (rows: true class,
        columns: predicted class, as nested lists), ``class_names``, ``num_samples`` and ``threshold`` (the one
        used, ``None`` for the argmax).

    Raises:
        ValueError: for mismatched shapes, labels outside ``[0, K)``, or a threshold with more than two classes.
    """
    probabilities = np.asarray(torch.as_tensor(probabilities, dtype=torch.float64).cpu())
    labels = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64).reshape(-1)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2 or probabilities.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Classification metrics need [N, num_classes >= 2] probabilities and [N] labels, got shapes "
            f"{probabilities.shape} and {labels.shape}."
        )
    num_classes = probabilities.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"Labels {sorted(set(labels.tolist()))} fall outside the {num_classes} predicted classes.")
    names = [str(c) for c in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class_names {names} for {num_classes} predicted classes.")

    predictions = predicted_classes(probabilities, threshold)
    cm = confusion_matrix(labels, predictions, num_classes)
    true_per_class = cm.sum(axis=1)
    predicted_per_class = cm.sum(axis=0)
    tp = np.diag(cm)
    recall = _ratio(tp, true_per_class)
    precision = _ratio(tp, predicted_per_class)
    f1 = _ratio(2 * precision * recall, precision + recall)
    tn = cm.sum() - true_per_class - predicted_per_class + tp
    specificity = _ratio(tn, tn + predicted_per_class - tp)
    auc = [roc_auc(probabilities[:, c], labels == c) for c in range(num_classes)]
    present = true_per_class > 0

    if num_classes == 2:
        summary = {"auc": auc[1], "f1": f1[1], "sensitivity": recall[1], "specificity": specificity[1]}
    else:
        defined_auc = [a for a in auc if not np.isnan(a)]
        summary = {
            "auc": float(np.mean(defined_auc)) if defined_auc else float("nan"),
            "f1": f1.mean(),
            "sensitivity": recall.mean(),
            "specificity": specificity.mean(),
        }
    return {
        "accuracy": float((predictions == labels).mean()) if labels.size else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        **{key: float(value) for key, value in summary.items()},
        "precision": dict(zip(names, precision.tolist())),
        "recall": dict(zip(names, recall.tolist())),
        "f1_per_class": dict(zip(names, f1.tolist())),
        "confusion_matrix": cm.tolist(),
        "class_names": names,
        "num_samples": int(labels.size),
        "threshold": _threshold_value(threshold),
    }


def _threshold_value(threshold: float | OperatingPoint | None) -> float | None:
    """The number a threshold argument stands for now (``None``: the argmax)."""
    if isinstance(threshold, OperatingPoint):
        threshold = threshold.threshold
    return None if threshold is None else float(threshold)


def _stack_predictions(y_pred: Any) -> torch.Tensor:
    """``[B, K]`` from a batch tensor or a decollated list of ``[K]`` tensors."""
    y_pred = (
        torch.stack([torch.as_tensor(p) for p in y_pred])
        if isinstance(y_pred, (list, tuple))
        else torch.as_tensor(y_pred)
    )
    if y_pred.ndim != 2:
        raise ValueError(
            f"Classification metrics need predictions of shape [batch, num_classes], got {tuple(y_pred.shape)}."
        )
    return y_pred.detach().float()


def _stack_labels(y: Any, num_classes: int) -> torch.Tensor:
    """``[B]`` class indices from class indices (``[B]``, ``[B, 1]``, a list of 0-d tensors) or one-hot ``[B, K]``."""
    y = torch.stack([torch.as_tensor(v).reshape(-1) for v in y]) if isinstance(y, (list, tuple)) else torch.as_tensor(y)
    y = y.detach()
    if y.ndim == 2 and y.shape[1] == num_classes and num_classes > 1:
        return y.argmax(dim=1)
    return y.reshape(-1).long()


class ClassificationReport(Metric):
    """Ignite metric collecting the predictions of an epoch; ``compute()`` returns :func:`classification_metrics`.

    Works across processes: predictions are gathered from every rank before computing.

    Args:
        from_logits: apply softmax to the predictions; set False when post-processing already made probabilities.
        class_names: names for the per-class entries.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``; the default reads MONAI's ``pred`` and
            ``label`` from decollated or batch outputs.
        device: where predictions are accumulated.
        threshold: the two-class decision threshold of :func:`classification_metrics`: a number, or an
            :class:`OperatingPoint` whose threshold is read when the metrics are computed (after it has run on
            the validation subjects); ``None``: the argmax.
    """

    def __init__(
        self,
        from_logits: bool = True,
        class_names: Sequence[str] | None = None,
        output_transform: Callable = _PRED_AND_LABEL,
        device: str | torch.device = "cpu",
        threshold: float | OperatingPoint | None = None,
    ) -> None:
        self.from_logits = from_logits
        self.class_names = None if class_names is None else list(class_names)
        self.threshold = threshold
        self._predictions: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        super().__init__(output_transform=output_transform, device=device, metrics_result_mode="named")

    @reinit__is_reduced
    def reset(self) -> None:
        self._predictions = []
        self._labels = []

    @reinit__is_reduced
    def update(self, output: Sequence[Any]) -> None:
        y_pred = _stack_predictions(output[0])
        y = _stack_labels(output[1], y_pred.shape[1])
        if y.shape[0] != y_pred.shape[0]:
            raise ValueError(f"{y_pred.shape[0]} predictions but {y.shape[0]} labels in a batch.")
        if self.from_logits:
            y_pred = torch.softmax(y_pred, dim=1)
        self._predictions.append(y_pred.to(self._device))
        self._labels.append(y.to(self._device))

    def gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All probabilities ``[N, K]`` and labels ``[N]`` of the epoch, from every process."""
        if not self._predictions:
            raise NotComputableError(f"{type(self).__name__} must see at least one batch before it can be computed.")
        probabilities, labels = torch.cat(self._predictions), torch.cat(self._labels)
        if idist.get_world_size() > 1:  # shards may differ in size (e.g. a sampler that does not pad)
            counts = idist.all_gather(torch.tensor([labels.shape[0]], device=labels.device)).tolist()
            num_classes = probabilities.shape[1]
            probabilities = torch.cat(
                idist.all_gather_tensors_with_shapes(probabilities, [[n, num_classes] for n in counts])
            )
            labels = torch.cat(idist.all_gather_tensors_with_shapes(labels, [[n] for n in counts]))
        return probabilities, labels

    def compute(self) -> Any:
        return classification_metrics(*self.gathered(), class_names=self.class_names, threshold=self.threshold)


class ClassificationMetric(ClassificationReport):
    """One scalar of :func:`classification_metrics` as an Ignite metric, e.g. a MONAI key metric.

    Args:
        name: one of :data:`METRIC_NAMES` (``"accuracy"``, ``"balanced_accuracy"``, ``"auc"``, ``"f1"``,
            ``"sensitivity"``, ``"specificity"``).
        kwargs: :class:`ClassificationReport` arguments.

    Raises:
        ValueError: for an unknown metric name.
    """

    def __init__(self, name: str = "balanced_accuracy", **kwargs: Any) -> None:
        if name not in METRIC_NAMES:
            raise ValueError(f"Unknown classification metric {name!r}; choose one of {METRIC_NAMES}.")
        self.name = name
        super().__init__(**kwargs)

    def compute(self) -> float:
        return super().compute()[self.name]


class OperatingPoint(ClassificationReport):
    """Ignite metric that chooses a two-class decision threshold (:func:`youden_threshold`) on the subjects it sees.

    Attach it to an evaluator over the validation subjects and give it as ``threshold`` to the test evaluator's
    :class:`ClassificationReport` metrics: the test predictions are then classified at an operating point chosen
    without them. ``compute()`` returns the threshold (NaN when undefined, e.g. one class, so that loggers get a
    number) and keeps it in :attr:`threshold` (``None`` when undefined: the argmax rule). Before it has run,
    :attr:`threshold` is ``None``.

    Args:
        kwargs: :class:`ClassificationReport` arguments (not ``threshold``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold: float | None = None

    def compute(self) -> float:
        self.threshold = youden_threshold(*self.gathered())
        return float("nan") if self.threshold is None else self.threshold
