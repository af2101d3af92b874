"""Summary statistics of a study: mean +/- std, percentile bootstrap CIs, and the KD gain with a paired CI.

Conventions (all reported in ``summary.md``):

* **Units.** A cell (student, KD mode, data size) has one value per (seed, fold) run. These runs are the
  units that are averaged and resampled.
* **Mean +/- std.** Arithmetic mean and sample standard deviation (``ddof=1``) of the runs; the std is NaN for
  a single run.
* **95% bootstrap CI of the mean.** Percentile bootstrap (:func:`scipy.stats.bootstrap`, ``method="percentile"``):
  draw ``n`` of the ``n`` run values with replacement ``B`` times (default 10,000) from
  ``numpy.random.default_rng(seed)``, take each resample's mean, and report the 2.5th and 97.5th percentiles of
  those means (linear interpolation). With fewer than two runs there is nothing to resample and the CI is NaN.
* **KD gain.** For a KD mode, each run is paired with the no-KD run of the same student, size, seed and fold
  (same training subjects, same held-out subjects, same initialisation seed); the gain is the mean of the
  paired differences ``metric(KD) - metric(none)`` and its CI is the percentile bootstrap of that mean,
  resampling *pairs*. Pairing removes the variation the two runs share (which subjects were drawn, which
  fold), so the CI reflects the effect of distillation rather than the spread between folds.
* **Retention.** Each run is paired with its fold's teacher (and seed, when teacher results carry one):
  ``auc_ratio = student AUC / teacher AUC`` and ``margin_retention = (student - chance) / (teacher - chance)`` of
  the balanced accuracy (:func:`medkd3d.engines.margin_retention`; chance 0.5 for two classes). A student that
  predicts one class has balanced accuracy 0.5 and retains 0 of the margin; a teacher at or below chance leaves
  the margin retention undefined (NaN, counted and flagged). Per cell, both are summarised like a metric.
* **Flags.** A cell is flagged in words when some of its runs predict one class (read from the run's
  ``one_class`` column when present, else from a binary run's sensitivity/specificity of 0 and 1), when its AUC
  CI includes 0.5, when a run was evaluated on fewer than 20 subjects, and when retention is undefined.
* **Caveat.** Folds share training subjects and seeds share folds, so the runs are not independent samples of
  the population; the bootstrap CI describes the variability of *this* study's runs and is typically too
  narrow for claims about new data. Report it together with the number of runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

__all__ = [
    "CellSummary",
    "KDGain",
    "RetentionSummary",
    "bootstrap_ci",
    "cell_flags",
    "evaluated_subjects",
    "kd_gains",
    "mean_std",
    "predicts_one_class",
    "retention_rows",
    "summarize_cells",
    "summarize_retention",
]

#: The coordinates that identify a cell of the study (a result row also has ``seed`` and ``fold``).
CELL_KEYS = ("student", "kd", "size")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; NaN for one value, both NaN for none)."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return float("nan"), float("nan")
    return float(data.mean()), float(data.std(ddof=1)) if data.size > 1 else float("nan")


def bootstrap_ci(
    values: Sequence[float], confidence: float = 0.95, num_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean, computed by :func:`scipy.stats.bootstrap`.

    Resample ``b`` (``b = 0 .. num_resamples - 1``) is ``values[rng.integers(0, n, n)]`` with
    ``rng = numpy.random.default_rng(seed)``, drawn in that order (SciPy draws all resamples in one call), so the
    result equals a plain loop over the resamples with the same generator. For the paired KD gain the values are
    the per-pair differences: resampling them resamples pairs (:func:`kd_gains`).

    Args:
        values: the observations (e.g. one metric per run, or paired differences).
        confidence: coverage of the interval, in ``(0, 1)``.
        num_resamples: number of bootstrap resamples ``B``.
        seed: seed of the resampling, for reproducible intervals.

    Returns:
        ``(low, high)``: the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles (linear
        interpolation) of the resampled means; ``(nan, nan)`` with fewer than two values.

    Raises:
        ValueError: for a confidence outside ``(0, 1)``, ``num_resamples < 1`` or non-finite values.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
    data = np.asarray(values, dtype=float)
    if not np.isfinite(data).all():
        raise ValueError(
            f"bootstrap_ci needs finite values, got {data.tolist()}; drop the runs where the metric is NaN"
        )
    if data.size < 2:  # SciPy refuses a single observation; there is nothing to resample
        return float("nan"), float("nan")
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        # SciPy also returns the standard error of the resampled means, undefined (0 / 0, warned about) for a single
        # resample; only the interval is used here
        warnings.filterwarnings("ignore", "Degrees of freedom", RuntimeWarning)
        result = scipy.stats.bootstrap(
            (data,),
            np.mean,
            n_resamples=num_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=True,
            random_state=np.random.default_rng(seed),  # ``rng=`` from SciPy 1.15 on; the package supports 1.11
        )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


@dataclass(frozen=True)
class CellSummary:
    """Statistics of one metric over the runs of one cell (see the module docstring)."""

    student: str
    kd: str
    size: int | str
    num_runs: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class KDGain:
    """Paired KD gain of one metric for one cell: ``mean(metric(kd) - metric(none))`` over matched runs."""

    student: str
    kd: str
    size: int | str
    num_pairs: int
    gain: float
    ci_low: float
    ci_high: float


def _finite(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and np.isfinite(float(v))]


def _cells(rows: Iterable[Mapping[str, Any]]) -> dict[tuple, list[Mapping[str, Any]]]:
    """Rows grouped by cell, in first-appearance order."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in CELL_KEYS), []).append(row)
    return groups


def summarize_cells(
    rows: Sequence[Mapping[str, Any]], metric: str, confidence: float = 0.95, num_resamples: int = 10_000, seed: int = 0
) -> list[CellSummary]:
    """Mean, std and bootstrap CI of ``metric`` per cell; runs where the metric is NaN (e.g. an AUC on a
    one-class fold) are left out and not counted.

    Args:
        rows: result rows with ``student``, ``kd``, ``size`` and ``metric``.
        metric: the column to summarise, e.g. ``"balanced_accuracy"``.
        confidence, num_resamples, seed: see :func:`bootstrap_ci`.

    Returns:
        One summary per cell, in first-appearance order.
    """
    summaries = []
    for (student, kd, size), members in _cells(rows).items():
        values = _finite(row.get(metric) for row in members)
        mean, std = mean_std(values)
        low, high = bootstrap_ci(values, confidence, num_resamples, seed)
        summaries.append(CellSummary(student, kd, size, len(values), mean, std, low, high))
    return summaries


def kd_gains(
    rows: Sequence[Mapping[str, Any]], metric: str, confidence: float = 0.95, num_resamples: int = 10_000, seed: int = 0
) -> list[KDGain]:
    """KD gain over no-KD with a paired bootstrap CI, per cell of every KD mode other than ``"none"``.

    A KD run is paired with the ``"none"`` run of the same student, size, seed and fold; runs without a twin
    (or with a NaN metric on either side) are left out. Cells without any pair are not reported.

    Args:
        rows: result rows with ``student``, ``kd``, ``size``, ``seed``, ``fold`` and ``metric``.
        metric: the column compared.
        confidence, num_resamples, seed: see :func:`bootstrap_ci`.

    Returns:
        One gain per cell with at least one pair, in first-appearance order.
    """
    baseline = {
        (row["student"], row["size"], row["seed"], row["fold"]): row.get(metric) for row in rows if row["kd"] == "none"
    }
    gains = []
    for (student, kd, size), members in _cells(rows).items():
        if kd == "none":
            continue
        differences = []
        for row in members:
            pair = _finite([row.get(metric), baseline.get((student, size, row["seed"], row["fold"]))])
            if len(pair) == 2:
                differences.append(pair[0] - pair[1])
        if not differences:
            continue
        low, high = bootstrap_ci(differences, confidence, num_resamples, seed)
        gains.append(KDGain(student, kd, size, len(differences), float(np.mean(differences)), low, high))
    return gains


# ----------------------------------------------------------------------------------------------------------------
# honesty: one-class runs, retention over chance, flags

#: Columns that may hold the number of subjects a run was evaluated on, in order of preference.
SUBJECT_COUNT_KEYS = ("test_subjects", "num_samples", "n", "val_subjects")


def predicts_one_class(row: Mapping[str, Any]) -> bool | None:
    """Whether a run predicted the same class for every evaluated subject.

    Read from the row's ``one_class`` column when the runner wrote one (a class name, or empty/``None`` for
    several classes); otherwise inferred for binary tasks from sensitivity and specificity: a run that calls
    every subject negative has sensitivity 0 and specificity 1, one that calls every subject positive the reverse.

    Returns:
        ``True``/``False``, or ``None`` when the row does not tell.
    """
    if "one_class" in row:
        value = row["one_class"]
        if isinstance(value, str):  # results read back from CSV
            return value.strip().lower() not in ("", "0", "false", "none")
        return bool(value)
    values = _finite([row.get("sensitivity"), row.get("specificity")])
    if len(values) < 2:
        return None
    return set(values) == {0.0, 1.0}


def evaluated_subjects(row: Mapping[str, Any]) -> int | None:
    """The number of subjects a run was evaluated on (see :data:`SUBJECT_COUNT_KEYS`), ``None`` if unknown."""
    for key in SUBJECT_COUNT_KEYS:
        if row.get(key) not in (None, ""):
            return int(row[key])
    return None


def retention_rows(
    rows: Sequence[Mapping[str, Any]],
    teacher_rows: Sequence[Mapping[str, Any]],
    chance: float = 0.5,
    metric: str = "balanced_accuracy",
) -> list[dict[str, Any]]:
    """Each run's retention against the teacher of its fold: ``auc_ratio`` and ``margin_retention``.

    Args:
        rows: run results (``student``, ``kd``, ``size``, ``seed``, ``fold``, ``auc``, ``metric`` and the
            ``teacher`` they are distilled from, or ``None``).
        teacher_rows: teacher results with ``fold``, ``model`` (the name runs give as ``teacher``) and ``seed``
            when teachers differ per seed.
        chance: chance level of ``metric``.
        metric: the metric whose margin over chance is retained.

    Returns:
        Copies of the runs that have a teacher, with ``auc_ratio``, ``margin_retention`` (NaN when undefined)
        and ``teacher_at_chance`` added.
    """
    from medkd3d.engines.honesty import auc_ratio, margin_retention

    # a study may hold several teachers (one per teacher bundle): a run is paired with its own teacher
    # (``row["teacher"]`` names the teacher's ``model``) of its fold, and of its seed when teachers differ per seed
    by_key = {(t.get("model"), t.get("seed"), t["fold"]): t for t in teacher_rows}
    out = []
    for row in rows:
        name = row.get("teacher")
        teacher = by_key.get((name, row.get("seed"), row["fold"])) or by_key.get((name, None, row["fold"]))
        if teacher is None:
            continue
        teacher_metric = teacher.get(metric)
        out.append(
            {
                **row,
                "auc_ratio": auc_ratio(row.get("auc"), teacher.get("auc")),
                "margin_retention": margin_retention(row.get(metric), teacher_metric, chance),
                "teacher_at_chance": bool(_finite([teacher_metric]) and float(teacher_metric) <= chance),
            }
        )
    return out


@dataclass(frozen=True)
class RetentionSummary:
    """Retention of one cell over its runs: the AUC ratio and the margin retention, each as a :class:`CellSummary`,
    and the number of runs whose margin retention is undefined (teacher at chance)."""

    auc_ratio: CellSummary
    margin_retention: CellSummary
    undefined_runs: int


def summarize_retention(
    rows: Sequence[Mapping[str, Any]],
    teacher_rows: Sequence[Mapping[str, Any]],
    chance: float = 0.5,
    num_resamples: int = 10_000,
    seed: int = 0,
) -> list[RetentionSummary]:
    """Mean, std and bootstrap CI of both retentions per cell (:func:`retention_rows`); runs with an undefined
    retention are left out of its statistics and counted.

    Returns:
        One summary per cell with at least one run paired with a teacher, in first-appearance order.
    """
    paired = retention_rows(rows, teacher_rows, chance)
    ratios = summarize_cells(paired, "auc_ratio", num_resamples=num_resamples, seed=seed)
    margins = summarize_cells(paired, "margin_retention", num_resamples=num_resamples, seed=seed)
    undefined = {cell: sum(bool(r["teacher_at_chance"]) for r in members) for cell, members in _cells(paired).items()}
    return [
        RetentionSummary(ratio, margin, undefined[(ratio.student, ratio.kd, ratio.size)])
        for ratio, margin in zip(ratios, margins)
    ]


def cell_flags(
    rows: Sequence[Mapping[str, Any]],
    teacher_rows: Sequence[Mapping[str, Any]] = (),
    min_subjects: int = 20,
    chance: float = 0.5,
    num_resamples: int = 10_000,
    seed: int = 0,
) -> dict[tuple, list[str]]:
    """The warnings, in words, of every cell (``(student, kd, size)``) that has any.

    Args:
        rows: run results.
        teacher_rows: teacher results per fold, for the retention flag.
        min_subjects: runs evaluated on fewer subjects are flagged as noisy.
        chance: chance level of the balanced accuracy.
        num_resamples, seed: of the AUC CI (:func:`bootstrap_ci` over the cell's runs).

    Returns:
        ``{cell: [flag, ...]}`` for the flagged cells.
    """
    auc = {(c.student, c.kd, c.size): c for c in summarize_cells(rows, "auc", num_resamples=num_resamples, seed=seed)}
    undefined = {(r.auc_ratio.student, r.auc_ratio.kd, r.auc_ratio.size): r.undefined_runs
                 for r in summarize_retention(rows, teacher_rows, chance, num_resamples=1)}  # fmt: skip
    flags: dict[tuple, list[str]] = {}
    for cell, members in _cells(rows).items():
        found = []
        one_class = sum(bool(predicts_one_class(row)) for row in members)
        if one_class:
            found.append(f"predicts one class in {one_class} of {len(members)} runs")
        summary = auc.get(cell)
        if summary is not None and summary.ci_low <= 0.5 <= summary.ci_high:
            found.append("AUC 95% CI includes 0.5")
        counts = [n for n in (evaluated_subjects(row) for row in members) if n is not None]
        if counts and min(counts) < min_subjects:
            found.append(f"n < {min_subjects} test subjects: numbers are noisy")
        if undefined.get(cell):
            found.append(f"teacher at chance: retention undefined in {undefined[cell]} of {len(members)} runs")
        if found:
            flags[cell] = found
    return flags
