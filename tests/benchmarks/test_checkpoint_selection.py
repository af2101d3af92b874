"""benchmarks/checkpoint_selection.py: best-validation vs final checkpoint, paired differences by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medkd3d.pipeline import finished_trainings
from medkd3d.pipeline.run import TRAINING_MARKER


@pytest.fixture
def selection(benchmark_script):
    return benchmark_script("checkpoint_selection")


def _mark(run_dir: Path, name: str, state: str, **overrides) -> None:
    models = run_dir / name / "models"
    models.mkdir(parents=True)
    settings = {"profiles": ["quick"], "overrides": {"ckpt_dir": str(models), **overrides}}
    (models / TRAINING_MARKER).write_text(json.dumps({"state": state, "settings": settings}))


def test_markdown_pairs_final_against_best(selection) -> None:
    runs = {
        "f0": {"brats_teacher_vggvit3d": {"best": (0.90, 0.80), "final": (0.94, 0.85)}},
        "f1": {"brats_teacher_vggvit3d": {"best": (0.92, 0.90), "final": (0.91, 0.85)}},
    }
    text = selection.format_markdown(runs, "python benchmarks/checkpoint_selection.py f0 f1")
    assert "| f0 | brats_teacher_vggvit3d | 0.900 / 0.800 | 0.940 / 0.850 |" in text
    # AUC: +0.04 and -0.01 -> mean +0.015, one better, one worse; balanced accuracy: +0.05, -0.05 -> 0
    auc_row = next(line for line in text.splitlines() if line.startswith("| AUC |"))
    assert auc_row.startswith("| AUC | 2 | +0.015 [") and auc_row.endswith("| 1 | 1 |")
    ba_row = next(line for line in text.splitlines() if line.startswith("| balanced accuracy |"))
    assert ba_row.startswith("| balanced accuracy | 2 | +0.000 [")


def test_runs_need_the_best_checkpoint(selection, tmp_path: Path) -> None:
    _mark(tmp_path, "brats_hdkd_teacher3d", "finished", model_selection="final")
    with pytest.raises(ValueError, match="model_selection=best"):
        selection.evaluate_selections(tmp_path)


def test_finished_trainings_in_report_order(tmp_path: Path) -> None:
    _mark(tmp_path, "brats_student_effnet3d_no_kd", "finished", kd_mode="none")
    _mark(tmp_path, "brats_student_effnet3d", "finished")
    _mark(tmp_path, "brats_teacher_vggvit3d", "finished")
    _mark(tmp_path, "brats_hdkd_teacher3d", "started")  # interrupted: not listed
    corrupt = tmp_path / "brats_hdkd_student3d" / "models"
    corrupt.mkdir(parents=True)
    (corrupt / TRAINING_MARKER).write_text('{"state": "finis')  # unreadable: unfinished, as for the pipeline
    names = [name for name, _, _ in finished_trainings(tmp_path)]
    assert names == ["brats_teacher_vggvit3d", "brats_student_effnet3d", "brats_student_effnet3d_no_kd"]
    _, root, settings = finished_trainings(tmp_path)[0]
    assert root.name == "brats_teacher_vggvit3d" and settings["profiles"] == ["quick"]
    with pytest.raises(FileNotFoundError, match="no finished training"):
        finished_trainings(tmp_path / "empty")
