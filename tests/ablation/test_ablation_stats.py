"""Study statistics against hand computations: mean/std, percentile bootstrap CIs, paired KD gains."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medkd3d.ablation.stats import bootstrap_ci, kd_gains, mean_std, summarize_cells

VALUES = np.array([0.61, 0.72, 0.68, 0.80, 0.75])


def _loop_bootstrap(values: np.ndarray, resamples: int, seed: int, confidence: float = 0.95) -> tuple[float, float]:
    """The textbook percentile bootstrap, one resample at a time."""
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(resamples):
        sample = values[rng.integers(0, len(values), len(values))]
        means.append(sample.mean())
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def test_mean_std_by_hand() -> None:
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3))
    assert math.isnan(mean_std([0.7])[1])


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_bootstrap_ci_equals_plain_loop(confidence: float) -> None:
    low, high = bootstrap_ci(VALUES, confidence=confidence, num_resamples=2000, seed=7)
    assert (low, high) == pytest.approx(_loop_bootstrap(VALUES, 2000, 7, confidence), abs=1e-12)
    assert VALUES.min() <= low < VALUES.mean() < high <= VALUES.max()
    # another seed draws other resamples
    assert bootstrap_ci(VALUES, confidence=confidence, num_resamples=2000, seed=8) != (low, high)


def test_bootstrap_percentile_bounds_by_hand() -> None:
    # Two values 0 and 1: a resample mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4. About 2,500 of 10,000
    # means are 0 and 2,500 are 1, so the 2.5th percentile is exactly 0 and the 97.5th exactly 1, while the
    # 30th-70th percentile interval (40% confidence) lies inside the middle mass at 0.5.
    assert bootstrap_ci([0.0, 1.0], num_resamples=10_000, seed=0) == (0.0, 1.0)
    assert bootstrap_ci([0.0, 1.0], confidence=0.4, num_resamples=10_000, seed=0) == (0.5, 0.5)
    assert bootstrap_ci([0.8, 0.8, 0.8]) == pytest.approx((0.8, 0.8))
    assert all(math.isnan(v) for v in bootstrap_ci([0.8]))


def test_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(VALUES, confidence=95)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([0.5, float("nan")])


def _row(kd: str, seed: int, fold: int, value: float, student: str = "3d", size: int | str = 50) -> dict:
    return {"student": student, "kd": kd, "size": size, "seed": seed, "fold": fold, "auc": value}


def test_summarize_cells_per_cell_and_skips_nan() -> None:
    rows = [_row("none", s, f, v) for (s, f), v in zip([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0)], VALUES)]
    rows.append(_row("none", 2, 1, float("nan")))  # e.g. an AUC on a held-out fold with one class
    rows.append(_row("none", 0, 0, 0.9, size="all"))
    cells = summarize_cells(rows, "auc", num_resamples=500, seed=3)
    assert [(c.size, c.num_runs) for c in cells] == [(50, 5), ("all", 1)]
    assert cells[0].mean == pytest.approx(VALUES.mean())
    assert cells[0].std == pytest.approx(VALUES.std(ddof=1))
    assert (cells[0].ci_low, cells[0].ci_high) == pytest.approx(_loop_bootstrap(VALUES, 500, 3))
    assert math.isnan(cells[1].std) and math.isnan(cells[1].ci_low)


def test_kd_gain_is_paired_by_seed_and_fold() -> None:
    baseline = {(0, 0): 0.60, (0, 1): 0.70, (1, 0): 0.65, (1, 1): 0.55}
    gain = {(0, 0): 0.10, (0, 1): 0.20, (1, 0): 0.00, (1, 1): 0.10}
    rows = [_row("none", s, f, v) for (s, f), v in baseline.items()]
    rows += [_row("logit", s, f, baseline[s, f] + gain[s, f]) for s, f in baseline]
    rows.append(_row("logit", 5, 0, 0.99))  # no no-KD twin: not paired
    rows.append(_row("logit", 0, 0, 0.50, student="2.5d"))  # other student, no twin either
    (result,) = kd_gains(rows, "auc", num_resamples=1000, seed=1)
    differences = np.array([gain[k] for k in baseline])
    assert (result.student, result.kd, result.size, result.num_pairs) == ("3d", "logit", 50, 4)
    assert result.gain == pytest.approx(0.1)
    assert (result.ci_low, result.ci_high) == pytest.approx(_loop_bootstrap(differences, 1000, 1), abs=1e-12)
