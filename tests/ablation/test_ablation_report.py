"""Report pieces on hand-made results: the Pareto front, the CSV columns and the summary tables."""

from __future__ import annotations

import csv

from medkd3d.ablation.report import RESULT_COLUMNS, format_summary, pareto_front, write_results_csv


def _rows() -> list[dict]:
    rows = []
    for student, latency in (("2.5d", 5.0), ("3d", 40.0)):
        for kd, bonus in (("none", 0.0), ("logit", 0.05)):
            for fold, value in enumerate((0.70, 0.74)):
                rows.append(
                    {"student": student, "kd": kd, "size": "all", "seed": 0, "fold": fold,
                     "balanced_accuracy": value + bonus, "auc": value + bonus + 0.1, "f1": 0.7, "sensitivity": 0.8,
                     "specificity": 0.6, "parameters": 1000, "gflops": 0.5, "cpu_latency_ms": latency,
                     "train_time_s": 3.0, "train_subjects": 10}
                )  # fmt: skip
    return rows


def test_pareto_front_by_hand() -> None:
    # (latency, accuracy): 1 is beaten by 0 (faster and better), 3 by 2; ties in latency keep the better one
    points = [(1.0, 0.8), (2.0, 0.7), (3.0, 0.9), (3.0, 0.85), (5.0, 0.95), (0.5, 0.6)]
    assert pareto_front(points) == [5, 0, 2, 4]


def test_results_csv_has_the_contract_columns(tmp_path) -> None:
    path = write_results_csv(_rows(), tmp_path / "results.csv")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == [*RESULT_COLUMNS, "train_subjects"]
    assert len(rows) == 8 and rows[0]["student"] == "2.5d" and rows[0]["balanced_accuracy"] == "0.7"


def test_summary_tables() -> None:
    text = format_summary(_rows(), settings={"epochs": 3}, plots=["pareto_latency.png"], num_resamples=200)
    assert "`epochs=3`" in text
    # mean ± std of the two folds, and the KD gain of +0.05 in both folds (a CI of zero width)
    assert "| 2.5d | none | all | 2 | 0.720 ± 0.028 |" in text
    assert "| 3d | logit | all | 2 | +0.050 | [0.050, 0.050] |" in text
    assert "| 3d | 1,000 | 0.500 | 40.0 | 3.0 |" in text
    assert "![pareto_latency.png](pareto_latency.png)" in text
    assert format_summary([]).endswith("No finished runs yet.\n")
