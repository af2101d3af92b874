"""The main job's teacher recipe beats the trivial baseline on held-out test subjects.

The learning targets live in ``benchmarks/bench_kd.py``; this is the one slow check (issue 11) that the shipped
recipe - the VGG-ViT teacher bundle with its ``quick`` profile, trained by ``medkd3d pipeline`` - learns the
synthetic default better than a logistic regression on intensity percentiles, on a fixed seed.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from medkd3d.pipeline.run import QUICK, PipelineSettings, run_pipeline


@pytest.mark.slow
def test_quick_teacher_recipe_beats_the_trivial_baseline(tmp_path: Path) -> None:
    teacher = "brats_teacher_vggvit3d"
    settings = PipelineSettings(
        out_dir=tmp_path,
        synthetic=QUICK["synthetic"],  # the main job's dataset: 320 subjects, 160 of them held out for testing
        test_fraction=QUICK["test_fraction"],
        profiles=["quick"],
        # the profile's own 48 epochs of VGG-11 (about 5 minutes on two cores)
        num_folds=QUICK["num_folds"],
        bundles=[teacher],
        latency_repeats=1,
        export_formats=(),
    )
    _, table = run_pipeline(settings)
    with table.open(newline="") as stream:
        rows = {row["role"]: row for row in csv.DictReader(stream)}
    baseline, trained = rows["baseline"], rows["teacher"]
    assert trained["n"] == baseline["n"] == "160"
    assert float(trained["auc"]) > max(float(baseline["auc"]), 0.9)
    assert float(trained["balanced_accuracy"]) > 0.75  # both classes predicted, well above chance (0.5)
