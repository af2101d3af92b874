"""benchmarks/external_cohort.py: trained pipeline models tested again on a cohort of another generator seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medkd3d.pipeline.run import QUICK

SHAPE = (24, 24, 20)


@pytest.fixture
def script(benchmark_script):
    return benchmark_script("external_cohort")


def test_the_table_lists_each_run_with_the_mean(script) -> None:
    runs = {"a": {"trivial baseline": (0.8, 0.7), "teacher": (0.9, 0.8)}, "b": {"teacher": (0.95, 0.9)}}
    text = script.format_markdown(runs, "cohort X", "cmd")
    assert "Cohort: cohort X. Runs, in this order in every cell: a, b." in text
    assert "| teacher | 0.900 / 0.950 (mean 0.925) | 0.800 / 0.900 (mean 0.850) |" in text
    assert "| trivial baseline | 0.800 (mean 0.800) | 0.700 (mean 0.700) |" in text  # missing from run b


def test_a_cohort_with_the_runs_own_subjects_is_refused(script, tmp_path: Path) -> None:
    own = script.cohort_records(tmp_path / "own", 1, 0, SHAPE)
    same_seed = script.cohort_records(tmp_path / "same", 1, 0, SHAPE)
    other_seed = script.cohort_records(tmp_path / "other", 1, 1, SHAPE)
    assert [r["subject"] for r in other_seed] == [r["subject"] for r in own]  # ids repeat across seeds
    script.check_disjoint(other_seed, own, tmp_path)  # same ids, other subjects: accepted
    with pytest.raises(ValueError, match=r"subject .* of the cohort .* is the run's own .*another --seed"):
        script.check_disjoint(same_seed, own, tmp_path)


def test_the_cohort_is_generated_at_the_main_jobs_shape_unless_told(script, monkeypatch, tmp_path: Path) -> None:
    shapes = []

    def cohort_records(folder: Path, per_class: int, seed: int, shape: tuple[int, ...]) -> list[dict]:
        shapes.append(tuple(shape))
        return [{"subject": "s"}] * 2 * per_class

    monkeypatch.setattr(script, "cohort_records", cohort_records)
    monkeypatch.setattr(script, "evaluate_run", lambda run, cohort, seed: {"teacher": (0.9, 0.8)})
    script.main([str(tmp_path / "run"), "--out", str(tmp_path / "default.md")])
    script.main([str(tmp_path / "run"), "--shape", "24", "24", "20", "--out", str(tmp_path / "told.md")])
    assert shapes == [tuple(QUICK["synthetic"]["shape"]), (24, 24, 20)]
    assert f"shape {tuple(QUICK['synthetic']['shape'])}" in (tmp_path / "default.md").read_text()


@pytest.mark.slow
def test_a_run_is_evaluated_on_the_cohort_with_its_own_validation_threshold(script, bundle_kit, tmp_path: Path) -> None:
    teacher = "brats_teacher_vggvit3d"
    settings = bundle_kit.teacher_pipeline(tmp_path, SHAPE)
    out = tmp_path / "external.md"
    args = [str(settings.out_dir), "--seed", "1", "--subjects-per-class", "3", "--shape", *map(str, SHAPE)]
    assert script.main([*args, "--cohort-dir", str(tmp_path / "cohort"), "--out", str(out)]) == 0

    text = out.read_text()
    assert "Cohort: 6 synthetic subjects (3 per grade, shape (24, 24, 20), generator seed 1)" in text
    assert "| trivial baseline |" in text and f"| {teacher} |" in text
    external = json.loads((settings.out_dir / teacher / "eval_external_seed1" / "metrics.json").read_text())
    own = json.loads((settings.out_dir / teacher / "eval" / "metrics.json").read_text())
    assert external["num_samples"] == 6 and 0.0 <= external["auc"] <= 1.0
    assert external["threshold"] == own["threshold"]  # chosen on the run's validation subjects, not the cohort
