"""Summary statistics of a study: mean +/- std, percentile bootstrap CIs, and the KD gain with a paired CI.

Conventions (all reported in ``summary.md``):

* **Units.** A cell (student, KD mode, data size) has one value per (seed, fold) run. These runs are the
  units that are averaged and resampled.
* **Mean +/- std.** Arithmetic mean and sample standard deviation (``ddof=1``) of the runs; the std is NaN for
  a single run.
* **95% bootstrap CI of the mean.** Percentile bootstrap: draw ``n`` of the ``n`` run values with replacement
  ``B`` times (default 10,000) from ``numpy.random.default_rng(seed)``, take each resample's mean, and report
  the 2.5th and 97.5th percentiles of those means (``numpy.percentile``, linear interpolation). With fewer
  than two runs there is nothing to resample and the CI is NaN.
* **KD gain.** For a KD mode, each run is paired with the no-KD run of the same student, size, seed and fold
  (same training subjects, same held-out subjects, same initialisation seed); the gain is the mean of the
  paired differences ``metric(KD) - metric(none)`` and its CI is the percentile bootstrap of that mean,
  resampling *pairs*. Pairing removes the variation the two runs share (which subjects were drawn, which
  fold), so the CI reflects the effect of distillation rather than the spread between folds.
* **Caveat.** Folds share training subjects and seeds share folds, so the runs are not independent samples of
  the population; the bootstrap CI describes the variability of *this* study's runs and is typically too
  narrow for claims about new data. Report it together with the number of runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CellSummary", "KDGain", "bootstrap_ci", "kd_gains", "mean_std", "summarize_cells"]

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
    """Percentile bootstrap confidence interval of the mean.

    Resample ``b`` (``b = 0 .. num_resamples - 1``) is ``values[rng.integers(0, n, n)]`` with
    ``rng = numpy.random.default_rng(seed)``, drawn in that order, so the result equals a plain loop over the
    resamples with the same generator.

    Args:
        values: the observations (e.g. one metric per run, or paired differences).
        confidence: coverage of the interval, in ``(0, 1)``.
        num_resamples: number of bootstrap resamples ``B``.
        seed: seed of the resampling, for reproducible intervals.

    Returns:
        ``(low, high)``: the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the resampled
        means; ``(nan, nan)`` with fewer than two values.

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
    n = data.size
    if n < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, n, size=(num_resamples, n))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


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
