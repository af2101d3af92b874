"""Honest reporting of a classifier's test metrics: chance levels, retention over chance, AUC intervals and flags.

Every report of the package (``medkd3d pipeline``, ``medkd3d ablate``, the benchmarks) says the same things the
same way (DESIGN.md, evaluation protocol):

* **chance level** - what a classifier that ignores its input scores: AUC 0.5, balanced accuracy ``1 / K``,
  accuracy the share of the majority class (always predicting it);
* **retention** of a student against its teacher, twice: the AUC ratio ``student / teacher`` and the *margin
  retention* ``(student - chance) / (teacher - chance)`` of the balanced accuracy. A constant classifier sits at
  chance, so its margin retention is 0, whatever the teacher; a ratio alone would call a constant student that
  copies a constant teacher "100% retained". The margin retention is undefined (NaN, with a flag) when the
  teacher itself is not above chance;
* **a 95% bootstrap CI of the AUC** from the per-subject probabilities: stratified percentile bootstrap
  (positives and negatives are resampled separately, as pROC does, so every resample has both classes), seeded;
* **flags in words** for any number a reader should not trust: a model that predicts one class, an AUC interval
  that includes chance, fewer than :data:`MIN_TEST_SUBJECTS` test subjects, a teacher at chance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata

from .metrics import classification_metrics

__all__ = [
    "AUC_CHANCE",
    "MIN_TEST_SUBJECTS",
    "HonestSummary",
    "Retention",
    "auc_bootstrap_ci",
    "auc_ratio",
    "chance_levels",
    "honesty_flags",
    "margin_retention",
    "predicts_one_class",
    "retention",
    "summarize_predictions",
]

#: The AUC of a classifier that ignores its input.
AUC_CHANCE = 0.5
#: Below this many test subjects a report flags its numbers as noisy.
MIN_TEST_SUBJECTS = 20

FLAG_ONE_CLASS = "predicts one class"
FLAG_AUC_CI = "AUC 95% CI includes 0.5"
FLAG_TEACHER_AT_CHANCE = "teacher at chance: retention undefined"
FLAG_AUC_BELOW_CHANCE = "AUC below chance (95% CI below 0.5)"
FLAG_BELOW_BASELINE = "AUC below the trivial baseline's"


def _finite(value: Any) -> bool:
    return value is not None and isinstance(value, (int, float, np.floating, np.integer)) and math.isfinite(value)


def margin_retention(student: float | None, teacher: float | None, chance: float = 0.5) -> float:
    """The share of the teacher's margin over chance that the student keeps: ``(student - chance) / (teacher - chance)``.

    A student at chance (e.g. a constant classifier: balanced accuracy exactly ``chance``) retains 0; a student
    below chance retains a negative share. The ratio is undefined when the teacher is not above chance.

    Args:
        student: the student's metric (e.g. balanced accuracy).
        teacher: the teacher's metric on the same subjects.
        chance: the metric's chance level (0.5 for binary balanced accuracy or AUC, ``1 / K`` for the balanced
            accuracy of ``K`` classes).

    Returns:
        The margin retention, NaN when either metric is missing/NaN or ``teacher <= chance`` (see
        :data:`FLAG_TEACHER_AT_CHANCE`).
    """
    if not (_finite(student) and _finite(teacher)) or teacher <= chance:
        return math.nan
    return (float(student) - chance) / (float(teacher) - chance)


def auc_ratio(student: float | None, teacher: float | None) -> float:
    """``student / teacher`` AUC, NaN when either is missing/NaN or the teacher's AUC is at or below chance (0.5).

    Against a teacher at or below chance the ratio rewards a student for beating a broken teacher (a first run
    reported 1.88 for a chance-level student of a teacher at AUC 0.30), so it is undefined, like the margin
    retention.
    """
    if not (_finite(student) and _finite(teacher)) or teacher <= AUC_CHANCE:
        return math.nan
    return float(student) / float(teacher)


def chance_levels(labels: Sequence[int] | np.ndarray, num_classes: int = 2) -> dict[str, float]:
    """What a classifier that ignores its input scores on these labels.

    Args:
        labels: the true classes of the evaluated subjects.
        num_classes: number of classes ``K``.

    Returns:
        ``{"auc": 0.5, "balanced_accuracy": 1 / K, "accuracy": share of the majority class}`` (accuracy NaN
        without labels).
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    majority = np.bincount(labels, minlength=num_classes).max() / labels.size if labels.size else math.nan
    return {"auc": AUC_CHANCE, "balanced_accuracy": 1.0 / num_classes, "accuracy": float(majority)}


def predicts_one_class(probabilities: np.ndarray | torch.Tensor) -> int | None:
    """The class a model predicts for every subject, or ``None`` when it predicts at least two classes.

    Args:
        probabilities: ``[N, K]`` class probabilities (or scores); the prediction is their argmax.

    Returns:
        The single predicted class index, ``None`` otherwise (also for no subjects).
    """
    predictions = np.unique(np.asarray(torch.as_tensor(probabilities).cpu()).argmax(axis=1))
    return int(predictions[0]) if predictions.size == 1 else None


def auc_bootstrap_ci(
    scores: np.ndarray | Sequence[float],
    positives: np.ndarray | Sequence[bool],
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Stratified percentile bootstrap confidence interval of the ROC AUC.

    Each resample draws ``n_pos`` positives and ``n_neg`` negatives with replacement from their own class (so
    every resample has an AUC) using ``numpy.random.default_rng(seed)``; the AUC of a resample is the
    Mann-Whitney statistic with average ranks for ties (a tied pair counts one half), like
    :func:`medkd3d.engines.roc_auc`.

    Args:
        scores: ``[N]`` scores of the positive class (e.g. ``P(HGG)``).
        positives: ``[N]`` booleans, true for subjects of the positive class.
        confidence: coverage, in ``(0, 1)``.
        num_resamples: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        ``(low, high)``; ``(nan, nan)`` without both classes.

    Raises:
        ValueError: for mismatched lengths, a confidence outside ``(0, 1)`` or ``num_resamples < 1``.
    """
    scores = np.asarray(scores, dtype=float).reshape(-1)
    positives = np.asarray(positives, dtype=bool).reshape(-1)
    if scores.shape != positives.shape:
        raise ValueError(f"auc_bootstrap_ci: {scores.size} scores but {positives.size} labels")
    if not 0 < confidence < 1 or num_resamples < 1:
        raise ValueError(f"need 0 < confidence < 1 and num_resamples >= 1, got {confidence} and {num_resamples}")
    pos, neg = scores[positives], scores[~positives]
    if pos.size == 0 or neg.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    resampled = np.concatenate(
        [
            pos[rng.integers(0, pos.size, (num_resamples, pos.size))],
            neg[rng.integers(0, neg.size, (num_resamples, neg.size))],
        ],
        axis=1,
    )
    ranks = rankdata(resampled, axis=1)
    aucs = (ranks[:, : pos.size].sum(axis=1) - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return float(low), float(high)


def honesty_flags(
    num_subjects: int,
    one_class: str | int | None = None,
    auc_ci: tuple[float, float] | None = None,
    min_subjects: int = MIN_TEST_SUBJECTS,
    auc: float | None = None,
    baseline_auc: float | None = None,
) -> list[str]:
    """The warnings a report prints next to a model's test metrics, in words.

    Args:
        num_subjects: number of test subjects.
        one_class: the class (name or index) the model predicts for every subject, ``None`` if it predicts several.
        auc_ci: the AUC's 95% CI, ``None``/NaN when unknown.
        min_subjects: fewer test subjects than this are flagged as noisy.
        auc: the model's AUC, compared with ``baseline_auc``.
        baseline_auc: the trivial baseline's AUC on the same subjects; ``None`` when there is none.

    Returns:
        Zero or more of: ``"predicts one class (<c>) for all <n> test subjects"``, ``"AUC 95% CI includes 0.5"``,
        ``"AUC below chance (95% CI below 0.5)"``, ``"AUC below the trivial baseline's (<b>)"``,
        ``"n < <min> test subjects: numbers are noisy"``.
    """
    flags = []
    if one_class is not None:
        flags.append(f"{FLAG_ONE_CLASS} ({one_class}) for all {num_subjects} test subjects")
    if auc_ci is not None and all(_finite(v) for v in auc_ci):
        if auc_ci[0] <= AUC_CHANCE <= auc_ci[1]:
            flags.append(FLAG_AUC_CI)
        elif auc_ci[1] < AUC_CHANCE:
            flags.append(FLAG_AUC_BELOW_CHANCE)
    if _finite(auc) and _finite(baseline_auc) and auc < baseline_auc:
        flags.append(f"{FLAG_BELOW_BASELINE} ({baseline_auc:.3f})")
    if num_subjects < min_subjects:
        flags.append(f"n < {min_subjects} test subjects: numbers are noisy")
    return flags


@dataclass
class HonestSummary:
    """A model's test metrics with what a reader needs to judge them.

    Args:
        metrics: :func:`~medkd3d.engines.classification_metrics` of the test subjects.
        num_subjects: number of test subjects ``n``.
        chance: :func:`chance_levels` of the test labels.
        auc_ci: 95% stratified bootstrap CI of the AUC.
        one_class: the class name predicted for every subject, ``None`` if the model predicts several.
        flags: :func:`honesty_flags`.
    """

    metrics: dict[str, Any]
    num_subjects: int
    chance: dict[str, float]
    auc_ci: tuple[float, float]
    one_class: str | None = None
    flags: list[str] = field(default_factory=list)


def summarize_predictions(
    probabilities: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor | Sequence[int],
    class_names: Sequence[str] | None = None,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int = 0,
    min_subjects: int = MIN_TEST_SUBJECTS,
) -> HonestSummary:
    """Metrics, chance levels, AUC CI and flags of per-subject test probabilities.

    Args:
        probabilities: ``[N, K]`` class probabilities, one row per test subject.
        labels: ``[N]`` true classes.
        class_names: ``K`` class names (the positive class of a binary AUC is class 1).
        confidence, num_resamples, seed: of :func:`auc_bootstrap_ci` (binary tasks; the CI is NaN for more
            than two classes).
        min_subjects: see :func:`honesty_flags`.

    Returns:
        The :class:`HonestSummary`.
    """
    probabilities = np.asarray(torch.as_tensor(probabilities, dtype=torch.float64).cpu())
    labels = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64).reshape(-1)
    metrics = classification_metrics(probabilities, labels, class_names)
    names = metrics["class_names"]
    num_classes = probabilities.shape[1]
    ci = (
        auc_bootstrap_ci(probabilities[:, 1], labels == 1, confidence, num_resamples, seed)
        if num_classes == 2
        else (math.nan, math.nan)
    )
    single = predicts_one_class(probabilities) if labels.size else None
    one_class = None if single is None else names[single]
    return HonestSummary(
        metrics=metrics,
        num_subjects=int(labels.size),
        chance=chance_levels(labels, num_classes),
        auc_ci=ci,
        one_class=one_class,
        flags=honesty_flags(int(labels.size), one_class, ci, min_subjects),
    )


@dataclass
class Retention:
    """How much of its teacher a student keeps, on the same test subjects.

    Args:
        auc_ratio: student AUC / teacher AUC.
        margin_retention: ``(student - chance) / (teacher - chance)`` of the balanced accuracy.
        flags: :data:`FLAG_TEACHER_AT_CHANCE` when the margin retention is undefined.
    """

    auc_ratio: float
    margin_retention: float
    flags: list[str] = field(default_factory=list)


def retention(
    student: dict[str, Any], teacher: dict[str, Any], chance: float = 0.5, metric: str = "balanced_accuracy"
) -> Retention:
    """AUC ratio and margin retention of a student's metrics against its teacher's.

    Args:
        student: the student's metrics (``auc`` and ``metric``).
        teacher: the teacher's metrics on the same subjects.
        chance: chance level of ``metric`` (``1 / K`` for balanced accuracy).
        metric: the metric whose margin over chance is retained.

    Returns:
        The :class:`Retention`.
    """
    margin = margin_retention(student.get(metric), teacher.get(metric), chance)
    flags = [FLAG_TEACHER_AT_CHANCE] if _finite(teacher.get(metric)) and teacher[metric] <= chance else []
    return Retention(auc_ratio(student.get("auc"), teacher.get("auc")), margin, flags)
