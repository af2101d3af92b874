"""The KD benchmark split into stages for parallel processes: runs selected per process, reports that name every
planned run without a result, and no student process that trains a teacher."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest

from medkd3d.ablation import StudyConfig, run_study, train_teachers
from medkd3d.ablation.grid import RunSpec

STUDENT = "brats_student_effnet3d"


@pytest.fixture
def bench(benchmark_script):
    return benchmark_script("bench_kd")


def _row(kd: str, seed: int, auc: float, size: int = 2) -> dict:
    return {"student": STUDENT, "kd": kd, "size": size, "seed": seed, "fold": 0, "auc": auc,
            "balanced_accuracy": auc, "teacher": "brats_teacher_vggvit3d", "predicted_classes": 2}  # fmt: skip


def test_a_profile_sets_the_volume_size_and_stages_parse(bench) -> None:
    assert bench.study_config(bench.parse_args([])).spatial_size == 64
    args = bench.parse_args(["--profile", "quick", "--stage", "students", "--run-folds", "1", "--since", "5"])
    assert bench.study_config(args).spatial_size is None  # the profile's own (quick.json: 32)
    assert (args.stage, args.run_folds, args.since) == ("students", [1], 5.0)
    with pytest.raises(SystemExit):
        bench.parse_args(["--stage", "everything"])


def test_machine_line_names_the_threads_of_the_runs_not_of_the_report_process(bench) -> None:
    """A staged study's report process trains nothing: its own thread count would misstate how the runs trained."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert bench.machine_info(1).endswith(", 1 torch threads")
        assert bench.machine_info(None).endswith(", 2 torch threads")  # no --threads: PyTorch's default, as here
    finally:
        torch.set_num_threads(previous)


def test_overrides_reach_every_bundle_run_and_the_report_names_them(bench, tmp_path) -> None:
    """``--override amp=false`` (e.g. to compare a GPU study with and without mixed precision) is a study setting
    every bundle run receives, and the report says it was used."""
    args = bench.parse_args(["--out", str(tmp_path), "--override", "amp=false", "--override", "learning_rate=3e-4"])
    config = bench.study_config(args)
    assert dict(config.overrides) == {"amp": False, "learning_rate": 3e-4}
    text = bench.format_markdown([], config, 1.0, "machine", "cmd")
    assert "overrides {'amp': False, 'learning_rate': 0.0003}" in text
    assert "overrides {" not in bench.format_markdown([], bench.study_config(bench.parse_args([])), 1.0, "m", "c")


def test_report_says_which_weights_each_model_keeps(bench, tmp_path) -> None:
    """The bundles keep their final weights; ``--override model_selection="best"`` reproduces studies made with the
    best validation epoch, and the report must then say so."""

    def text(*extra: str) -> str:
        config = bench.study_config(bench.parse_args(["--out", str(tmp_path), *extra]))
        return bench.format_markdown([], config, 1.0, "machine", "cmd")

    assert "each model keeps its final weights" in text()
    best = text("--override", 'model_selection="best"')
    assert "each model is its best validation epoch" in best and "final weights" not in best


def test_planned_cells_without_runs_are_reported_missing(bench) -> None:
    rows = [_row("none", 0, 0.6), _row("logit", 0, 0.8), _row("none", 1, 0.7)]  # logit of seed 1 did not finish
    planned = {(STUDENT, 2, "none"): 2, (STUDENT, 2, "logit"): 2, (STUDENT, "2+unlabelled", "logit"): 2}
    teachers = [{"model": "brats_teacher_vggvit3d", "fold": 0, "auc": 0.9, "balanced_accuracy": 0.9}]
    table = bench.cell_rows(rows, teachers, [], planned)
    cells = {(r["model"], r["size"], r["kd"]): r for r in table if r["kind"] == "student"}
    assert set(cells) == set(planned)
    assert (cells[(STUDENT, 2, "none")]["runs"], cells[(STUDENT, 2, "none")]["planned_runs"]) == (2, 2)
    logit = cells[(STUDENT, 2, "logit")]
    assert (logit["runs"], logit["planned_runs"], logit["kd_gain_auc_pairs"]) == (1, 2, 1)
    assert logit["kd_gain_auc"] == pytest.approx(0.2)  # paired with seed 0's no-KD run only
    empty = cells[(STUDENT, "2+unlabelled", "logit")]
    assert empty["runs"] == 0 and math.isnan(empty["auc"]) and empty["kd_gain_auc_pairs"] == 0

    config = StudyConfig("data", "study", students=(STUDENT,), sizes=(2, "2+unlabelled"), seeds=(0, 1), folds=2)
    missing = [f"{STUDENT}_logit_2_s1_f0"]
    text = bench.format_markdown(table, config, 60.0, "machine", "cmd", missing, ["brats_teacher_vggvit3d/fold1"])
    assert "| 1/2 |" in text and "| 0/2 |" in text and "n/a" in text
    assert "**1 planned runs missing**" in text and "teachers missing: brats_teacher_vggvit3d/fold1" in text
    missing_section = text.split("## Missing runs")[1]
    assert f"- {STUDENT}_logit_2_s1_f0" in missing_section and "- teacher brats_teacher_vggvit3d/fold1" in text
    complete = bench.format_markdown(table, config, 60.0, "machine", "cmd")
    assert "Every planned run finished." in complete and "none missing" in complete


def test_report_stage_states_the_summed_training_time_not_its_own_seconds(bench) -> None:
    """A staged study's report process trains nothing: its own run time is not the study's wall time. The report
    then says so and gives the trainings' own times summed, each bundle run once."""
    shared = {"bundle_run": "s_none_8_s0_f0", "train_time_s": 30.0}  # the no-KD run stands for two regimes
    rows = [{**shared, "size": 8}, {**shared, "size": "8+unlabelled"}, {"bundle_run": "s_logit_8_s0_f0",
            "train_time_s": 45.0}, {"bundle_run": "s_logit_all_s0_f0", "train_time_s": None}]  # fmt: skip
    teachers = [{"model": "t", "fold": 0, "train_time_s": 120.0}, {"model": "t", "fold": 1, "train_time_s": 105.0}]
    assert bench.training_seconds(rows, teachers) == pytest.approx(30 + 45 + 120 + 105)

    config = bench.study_config(bench.parse_args([]))
    staged = bench.format_markdown([], config, None, "machine", "cmd", training_s=300.0)
    assert "Wall time: not measured" in staged and "`--since`" in staged
    assert "Training time: 5.0 min, the finished trainings' own times summed" in staged
    timed = bench.format_markdown([], config, 90.0, "machine", "cmd")
    assert "Wall time: 1.5 min" in timed and "Training time" not in timed


def test_student_stage_skips_kd_runs_whose_teacher_is_missing(bench, tmp_path) -> None:
    args = bench.parse_args(["--out", str(tmp_path), "--stage", "students", "--run-folds", "0"])
    config = bench.study_config(args)
    select = bench._selector(args, config)
    assert select(RunSpec(STUDENT, "none", 8, 0, 0)) and not select(RunSpec(STUDENT, "none", 8, 0, 1))
    assert not select(RunSpec(STUDENT, "logit", 8, 0, 0))  # its teacher has not finished: it stays missing
    result = tmp_path / "teachers" / "brats_teacher_vggvit3d" / "fold0" / "result.json"
    result.parent.mkdir(parents=True)
    # a KD run waits (until --teacher-wait-until) for the teacher that another process is training
    args.teacher_wait_until = time.time() + 30
    select = bench._selector(args, config)
    writer = threading.Timer(1.5, result.write_text, args=("{}",))
    writer.start()
    start = time.perf_counter()
    assert select(RunSpec(STUDENT, "logit", 8, 0, 0))
    assert 1.0 < time.perf_counter() - start < 20
    writer.join()


def test_setup_then_a_report_stage_trains_nothing_and_lists_every_run(synthetic_brats_root, tmp_path) -> None:
    config = StudyConfig(
        synthetic_brats_root, tmp_path / "study", students=(STUDENT,), kd_modes=("none", "logit"), sizes=(1,),
        seeds=(0, 1), folds=2, test_fraction=0.3, device="cpu", threads=1,
    )  # fmt: skip
    with pytest.raises(ValueError, match="outside"):
        train_teachers(config, folds=(2,))
    assert train_teachers(config, folds=()) == []  # only the study files and the baseline
    for name in ("study.json", "datalist.json", "splits.json", "baseline.json"):
        assert (tmp_path / "study" / name).is_file()
    assert not (tmp_path / "study" / "teachers").exists()
    outcome = run_study(config, progress=False, select=lambda spec: False, report=False)
    assert outcome.trained == [] and outcome.rows == [] and len(outcome.missing) == 2 * 2 * 2
    assert not (tmp_path / "study" / "summary.md").exists()  # report=False: a worker writes no report
    # a finished run (as a worker process stores it) leaves the missing list
    spec = RunSpec(STUDENT, "none", 1, 0, 0)
    (tmp_path / "study" / "runs").mkdir()
    (tmp_path / "study" / "runs" / f"{spec.key}.json").write_text(json.dumps({**spec.as_dict(), "auc": 0.5}))
    outcome = run_study(config, progress=False, select=lambda spec: False, report=False)
    assert spec.key not in outcome.missing and len(outcome.missing) == 7 and len(outcome.rows) == 1


def test_keep_going_logs_a_failed_run_and_trains_the_others(synthetic_brats_root, tmp_path, monkeypatch) -> None:
    from medkd3d.ablation import runner

    def fake_run(self, spec: RunSpec) -> dict:
        if spec.kd == "logit":
            raise RuntimeError("boom")
        return {"auc": 0.5, "balanced_accuracy": 0.5}

    monkeypatch.setattr(runner._Study, "run", fake_run)
    config = StudyConfig(
        synthetic_brats_root, tmp_path / "study", students=(STUDENT,), kd_modes=("none", "logit"), sizes=(1,),
        seeds=(0,), folds=2, test_fraction=0.3, device="cpu", threads=1,
    )  # fmt: skip
    only_fold0 = lambda spec: spec.fold == 0  # noqa: E731
    with pytest.raises(RuntimeError, match="boom"):
        run_study(config, progress=False, select=only_fold0, report=False)
    outcome = run_study(config, progress=False, select=only_fold0, report=False, keep_going=True)
    assert outcome.failed == [f"{STUDENT}_logit_1_s0_f0: RuntimeError: boom"]
    assert outcome.skipped == [f"{STUDENT}_none_1_s0_f0"]  # stored by the first call before the failure
    assert sorted(outcome.missing) == sorted(f"{STUDENT}_{kd}_1_s0_f{f}" for kd, f in [("logit", 0), ("none", 1),
                                                                                     ("logit", 1)])  # fmt: skip


def test_report_warns_of_a_teacher_below_the_trivial_baseline(bench) -> None:
    teachers = [{"model": "brats_teacher_vggvit3d", "fold": f, "auc": auc, "balanced_accuracy": 0.8}
                for f, auc in ((0, 0.90), (1, 0.92))]  # fmt: skip
    config = StudyConfig("data", "study", students=(STUDENT,), sizes=(2,), seeds=(0,), folds=2)

    def report(baseline_auc: float) -> str:
        baseline = [{"auc": baseline_auc, "balanced_accuracy": 0.85}]
        return bench.format_markdown(bench.cell_rows([], teachers, baseline), config, 1.0, "machine", "cmd")

    warning = "**brats_teacher_vggvit3d: mean AUC below the trivial baseline's (0.951), 0.910.**"
    assert warning in report(0.951)  # the teacher's mean AUC, (0.90 + 0.92) / 2, against the baseline's
    assert "below the trivial baseline" not in report(0.905)
