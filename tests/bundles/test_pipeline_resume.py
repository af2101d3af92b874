"""``medkd3d pipeline`` rerun after a kill: finished trainings are skipped, the interrupted one resumes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from medkd3d.bundles import run as bundle_module
from medkd3d.pipeline.run import TRAINING_MARKER, PipelineSettings, run_pipeline

STUDENT, TEACHER = "brats_student_effnet3d", "brats_teacher_vggvit3d"


class _Killed(Exception):
    """Stands for a kill of the pipeline process."""


def test_a_rerun_skips_finished_trainings_and_resumes_the_interrupted_one(
    bundle_kit, synthetic_brats_root: Path, tmp_path: Path, monkeypatch
) -> None:
    settings = PipelineSettings(
        out_dir=tmp_path,
        dataset_dir=synthetic_brats_root,
        epochs=2,
        batch_size=2,
        num_workers=0,
        num_folds=3,
        spatial_size=32,
        bundles=[STUDENT],  # its teacher is added
        kd_baselines=False,  # the twin resumes through the same markers: test_a_rerun_skips_a_finished_no_kd_twin
        bundle_overrides={b: bundle_kit.network_overrides(b) for b in (STUDENT, TEACHER)},
        latency_repeats=1,
    )
    real_run = bundle_module.run_bundle_config
    calls: list[tuple[str, Any]] = []

    def first_run(root: Path, configs: Any, workflow_type: str = "train", **kwargs: Any) -> Any:
        if Path(root).name == STUDENT and configs == "train.json":
            real_run(root, configs, workflow_type, **{**kwargs, "epochs": 1})  # killed after its first epoch
            raise _Killed
        return real_run(root, configs, workflow_type, **kwargs)

    def rerun(root: Path, configs: Any, workflow_type: str = "train", **kwargs: Any) -> Any:
        if workflow_type != "train":
            raise _Killed  # training is what is checked here: stop before evaluation and export
        calls.append((Path(root).name, kwargs.get("resume")))
        return real_run(root, configs, workflow_type, **kwargs)

    monkeypatch.setattr(bundle_module, "run_bundle_config", first_run)
    with pytest.raises(_Killed):
        run_pipeline(settings)
    teacher_models, student_models = tmp_path / TEACHER / "models", tmp_path / STUDENT / "models"
    assert json.loads((teacher_models / TRAINING_MARKER).read_text())["state"] == "finished"
    assert json.loads((student_models / TRAINING_MARKER).read_text())["state"] == "started"
    teacher_last = (teacher_models / "last.pt").read_bytes()
    interrupted = torch.load(student_models / "last.pt", weights_only=True)["trainer"]

    monkeypatch.setattr(bundle_module, "run_bundle_config", rerun)
    with pytest.raises(_Killed):
        run_pipeline(settings)
    assert calls == [(STUDENT, True)]  # the teacher is not retrained, the student resumes
    assert (teacher_models / "last.pt").read_bytes() == teacher_last
    resumed = torch.load(student_models / "last.pt", weights_only=True)
    assert resumed["trainer"]["iteration"] == 2 * interrupted["iteration"]  # epoch 2 on top of epoch 1
    assert resumed["optimizer"]["state"][0]["step"] == 2 * interrupted["iteration"]
    assert json.loads((student_models / TRAINING_MARKER).read_text())["state"] == "finished"

    calls.clear()  # everything trained: a third run trains nothing; other settings train afresh
    with pytest.raises(_Killed):
        run_pipeline(settings)
    assert calls == []
    with pytest.raises(_Killed):
        run_pipeline(replace(settings, bundles=[TEACHER], epochs=1))
    assert calls == [(TEACHER, False)]


def test_a_rerun_skips_a_finished_no_kd_twin_and_resumes_an_interrupted_one(
    synthetic_brats_root: Path, tmp_path: Path, monkeypatch
) -> None:
    twin = f"{STUDENT}_no_kd"
    settings = PipelineSettings(out_dir=tmp_path, dataset_dir=synthetic_brats_root, num_folds=3, bundles=[STUDENT])
    trained: list[tuple[str, bool, Any]] = []

    def fake_run(root: Path, configs: Any, workflow_type: str = "train", **kwargs: Any) -> None:
        if workflow_type != "train":
            raise _Killed  # training is what is checked here: stop before evaluation
        run = Path(kwargs["ckpt_dir"]).parent.name
        trained.append((run, kwargs["resume"], kwargs.get("kd_mode")))
        if run == twin and not kwargs["resume"]:
            raise _Killed  # the twin's first training is killed

    monkeypatch.setattr(bundle_module, "run_bundle_config", fake_run)
    with pytest.raises(_Killed):
        run_pipeline(settings)
    # the twin is the student's bundle again, with kd_mode=none, after the student and into its own folder
    assert trained == [(TEACHER, False, None), (STUDENT, False, None), (twin, False, "none")]
    assert json.loads((tmp_path / twin / "models" / TRAINING_MARKER).read_text())["state"] == "started"

    for expected in ([(twin, True, "none")], []):  # the interrupted twin resumes, then nothing is retrained
        trained.clear()
        with pytest.raises(_Killed):
            run_pipeline(settings)
        assert trained == expected
    assert json.loads((tmp_path / twin / "models" / TRAINING_MARKER).read_text())["state"] == "finished"
    trained.clear()
    with pytest.raises(_Killed):
        run_pipeline(replace(settings, kd_baselines=False))
    assert trained == []
