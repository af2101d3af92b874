"""benchmarks/task_ceiling.py: the oracle's compartment volumes, the held-out scoring, and a pipeline run measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHAPE = (24, 24, 20)


@pytest.fixture
def script(benchmark_script):
    return benchmark_script("task_ceiling")


def test_compartment_volumes_count_each_brats_label(script) -> None:
    seg = np.zeros((3, 3, 3), dtype=np.uint8)
    seg[0, 0, :2] = 1  # 2 voxels of necrotic core
    seg[1, :, 0] = 2  # 3 voxels of edema
    seg[2, 2, 2] = 3  # not a BraTS compartment: ignored
    np.testing.assert_allclose(script.compartment_volumes(seg), np.log([3.0, 4.0, 1.0]))


def test_held_out_metrics_are_those_of_the_test_subjects(script) -> None:
    train_x, train_y = np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1])
    test_x = np.array([[0.5], [2.5], [-1.0], [4.0]])
    assert script.held_out_metrics(train_x, train_y, test_x, np.array([0, 1, 0, 1])) == (1.0, 1.0)
    # the same scores against swapped labels: every pair ranked the wrong way, every subject misclassified
    assert script.held_out_metrics(train_x, train_y, test_x, np.array([1, 0, 1, 0])) == (0.0, 0.0)


def test_the_table_lists_each_run_with_the_mean(script) -> None:
    runs = {"a": {"oracle": (0.99, 0.95), "teacher": (0.9, 0.8)}, "b": {"teacher": (0.95, 0.9)}}
    text = script.format_markdown(runs, "cmd")
    assert "Runs, in this order in every cell: a, b." in text and "Command: `cmd`." in text
    assert "| teacher | 0.900 / 0.950 (mean 0.925) | 0.800 / 0.900 (mean 0.850) |" in text
    assert "| oracle | 0.990 | 0.950 |" in text  # missing from run b


@pytest.mark.slow
def test_a_pipeline_run_gets_its_floor_ceiling_and_teacher_rows(script, bundle_kit, tmp_path: Path) -> None:
    teacher = "brats_teacher_vggvit3d"
    settings = bundle_kit.teacher_pipeline(tmp_path, SHAPE)
    out = tmp_path / "ceiling.md"
    assert script.main([str(settings.out_dir), "--out", str(out)]) == 0

    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.read_text().splitlines() if line.startswith("| ")}
    expected = [
        script.BASELINE,
        script.ORACLE_SOURCE,
        "oracle: compartment volumes of the segmentation, network input 32x32x32",  # the quick profile's size
        f"{teacher}: the trained teacher",
        f"{teacher}: compartment volumes its auxiliary heads predict",
    ]
    assert all(name in rows for name in expected), sorted(rows)
    for name in expected:
        auc, balanced_accuracy = (float(cell) for cell in rows[name].strip("| ").split(" | ")[1:])
        assert 0.0 <= auc <= 1.0 and 0.0 <= balanced_accuracy <= 1.0
