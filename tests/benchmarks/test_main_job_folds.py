"""benchmarks/main_job_folds.py: the reports of several pipeline runs in one table, checked against hand-computed
means and lowest values."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

COLUMNS = (
    "bundle",
    "role",
    "auc",
    "balanced_accuracy",
    "auc_ratio",
    "balanced_accuracy_margin_retention",
    "kd_auc_gain",
)


@pytest.fixture
def script(benchmark_script):
    return benchmark_script("main_job_folds")


def _run(folder: Path, fold: int, rows: list[tuple]) -> Path:
    """A pipeline output folder with the two report files the script reads."""
    folder.mkdir()
    (folder / "report.md").write_text(f"# report\n\n- split: fold {fold} of 4: 120 training, 40 validation\n")
    with (folder / "report.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return folder


def test_runs_are_listed_in_order_with_means_and_the_lowest_student_value(script, tmp_path) -> None:
    first = _run(tmp_path / "a", 0, [("teacher_x", "teacher", 0.9, 0.8, "", "", ""),
                                     ("student_x", "student", 0.8, 0.7, 0.889, 0.667, -0.02)])  # fmt: skip
    second = _run(tmp_path / "b", 1, [("teacher_x", "teacher", 0.95, 0.9, "", "", ""),
                                      ("student_x", "student", 0.9, 0.85, 0.947, 0.875, "n/a")])  # fmt: skip
    out = tmp_path / "folds.md"
    assert script.main([str(first), str(second), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Runs, in this order in every cell: fold 0 of 4, fold 1 of 4." in text
    assert "| teacher_x | teacher | 0.900 / 0.950 (mean 0.925) | 0.800 / 0.900 (mean 0.850) |" in text
    # the student table: mean and lowest over the runs; an n/a cell is left out, not read as 0
    assert (
        "| student_x | 0.889 / 0.947 (mean 0.918), lowest 0.889 | 0.667 / 0.875 (mean 0.771), lowest 0.667 | " in text
    )
    assert "-0.020 (mean -0.020), lowest -0.020 |" in text
    assert "teacher_x |" not in text.split("| student |")[1]  # teachers have no retention row


def test_a_folder_without_a_report_is_named(script, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"empty: no report\.csv"):
        script.main([str(tmp_path / "empty"), "--out", str(tmp_path / "x.md")])
    assert not (tmp_path / "x.md").exists()
