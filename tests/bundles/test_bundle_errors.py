"""What a user gets wrong: no teacher yet, no trained model, bad data, other class names; and resuming."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events

from medkd3d.bundles import prepare_dataset
from medkd3d.data import DataValidationError, discover_brats, write_datalist
from medkd3d.utils import FolderInUseError

#: Above Linux's largest pid (pid_max <= 2**22), so never a running process.
DEAD_PID = 2**22 + 777


def _cause_chain(error: BaseException) -> list[BaseException]:
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__
    return chain


@pytest.mark.parametrize("student", ["brats_student_effnet3d", "brats_student_effnet25d", "brats_hdkd_student3d"])
def test_student_without_teacher_says_train_the_teacher_first(
    student: str, bundle_kit, synthetic_brats_root: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(bundle_kit.bundles_dir.parent)  # the repository root, where users run the bundles from
    overrides = bundle_kit.train_overrides(student, synthetic_brats_root, tmp_path / student, tmp_path / "none")
    with pytest.raises(Exception) as info:
        bundle_kit.workflow(student, ["train.json"], "train", **overrides)
    missing = [e for e in _cause_chain(info.value) if isinstance(e, FileNotFoundError)]
    assert missing, f"expected a FileNotFoundError in {_cause_chain(info.value)}"
    message = str(missing[0])
    teacher = bundle_kit.teacher_of[student]
    assert "train the teacher first" in message and overrides["teacher_ckpt"] in message
    assert f"python -m monai.bundle run --config_file bundles/{teacher}/configs/train.json" in message
    assert not (tmp_path / student / "models").exists()  # stopped before doing any work


def test_evaluate_without_a_trained_model_names_the_training_command(
    bundle_kit, synthetic_brats_root: Path, tmp_path: Path
) -> None:
    bundle = "brats_hdkd_teacher3d"
    overrides = bundle_kit.train_overrides(bundle, synthetic_brats_root, tmp_path, tmp_path)
    with pytest.raises(Exception) as info:
        bundle_kit.workflow(bundle, ["train.json", "evaluate.json"], "infer", **overrides)
    message = str(next(e for e in _cause_chain(info.value) if isinstance(e, FileNotFoundError)))
    assert "train the model first" in message and f"{bundle}/configs/train.json" in message


def test_training_validates_the_data_first(bundle_kit, synthetic_brats_root: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(synthetic_brats_root, tmp_path / "broken")
    flair = next(broken.rglob("*_flair.nii.gz"))
    flair.write_bytes(flair.read_bytes()[:100])  # truncated download
    bundle = "brats_teacher_vggvit3d"
    workflow = bundle_kit.workflow(
        bundle, ["train.json"], "train", **bundle_kit.train_overrides(bundle, broken, tmp_path / "out", tmp_path)
    )
    with pytest.raises(Exception) as info:
        workflow.check_properties()  # builds the datasets, which validates every file
    problems = [e for e in _cause_chain(info.value) if isinstance(e, DataValidationError)]
    assert problems and flair.name in str(problems[0]) and flair.parent.name in str(problems[0])


def test_other_class_names_are_refused_with_the_fix(synthetic_brats_root: Path) -> None:
    with pytest.raises(ValueError, match=r"--class_names") as info:
        prepare_dataset(synthetic_brats_root, class_names=["0", "1"], validate=False)
    assert "['LGG', 'HGG']" in str(info.value)


def test_resume_continues_from_the_last_checkpoint(
    bundle_kit, trained_bundles: Path, synthetic_brats_root: Path, tmp_path: Path
) -> None:
    bundle = "brats_teacher_vggvit3d"
    out = tmp_path / bundle
    shutil.copytree(trained_bundles / bundle / "models", out / "models")
    before = torch.load(out / "models" / "last.pt", weights_only=True)
    overrides = {**bundle_kit.train_overrides(bundle, synthetic_brats_root, out, trained_bundles), "resume": True}

    # the saved run already finished its single epoch: resuming it trains nothing and rewrites nothing
    bundle_kit.run(bundle, ["train.json"], "train", **overrides)
    unchanged = torch.load(out / "models" / "last.pt", weights_only=True)
    assert unchanged["trainer"] == before["trainer"]
    torch.testing.assert_close(unchanged["model"], before["model"])

    # one more epoch continues at iteration 3 with the saved optimizer, tracked with MLflow
    overrides["epochs"] = 2
    workflow = bundle_kit.workflow(bundle, ["train.json"], "train", tracking="mlflow", **overrides)
    workflow.run()
    workflow.finalize()
    after = torch.load(out / "models" / "last.pt", weights_only=True)
    assert after["trainer"]["iteration"] == 6 and after["trainer"]["max_epochs"] == 2
    assert after["optimizer"]["state"][0]["step"] == before["optimizer"]["state"][0]["step"] + 3
    assert (out / "eval" / "mlruns.db").is_file()


def test_a_second_run_into_the_same_checkpoint_folder_is_refused(
    bundle_kit, trained_bundles: Path, synthetic_brats_root: Path, tmp_path: Path
) -> None:
    bundle = "brats_teacher_vggvit3d"
    out = tmp_path / bundle
    models = shutil.copytree(trained_bundles / bundle / "models", out / "models")
    best = (models / "model.pt").read_bytes()
    overrides = bundle_kit.train_overrides(bundle, synthetic_brats_root, out, trained_bundles)
    holder = subprocess.Popen(  # another training run holding the folder
        [sys.executable, "-c", f"import sys; from medkd3d.utils import lock_folder; lock_folder({str(models)!r}, "
         "'training into last.pt'); print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        workflow = bundle_kit.workflow(bundle, ["train.json"], "train", **overrides)
        with pytest.raises(Exception) as info:
            workflow.run()
        refusals = [e for e in _cause_chain(info.value) if isinstance(e, FolderInUseError)]
        assert refusals, f"expected a FolderInUseError in {_cause_chain(info.value)}"
        assert str(models) in str(refusals[0]) and f"pid {holder.pid}" in str(refusals[0])
        assert (models / "model.pt").read_bytes() == best  # the other run's best model is untouched
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)

    # the holder is gone: a run goes ahead and removes what killed checkpoint writes left in the folder
    stale = [
        models / "tmpab12_xyz",
        models / f".model.pt.{DEAD_PID}.k3j2h1g0.tmp",
        models / f".last.pt.{DEAD_PID}.q.tmp",
    ]
    running = models / f".last.pt.{os.getppid()}.r.tmp"  # a live process's: not ours to remove
    for path in [*stale, running]:
        path.write_bytes(b"")
    bundle_kit.run(bundle, ["train.json"], "train", **overrides)
    assert not [p.name for p in stale if p.exists()] and running.exists()
    assert (models / "last.pt").is_file()


def _assert_identical(resumed: object, straight: object, where: str = "checkpoint") -> None:
    """Bitwise equality of two loaded checkpoints (nested dicts, lists, tensors, numbers)."""
    if isinstance(straight, torch.Tensor):
        assert torch.equal(resumed, straight), f"{where} differs (max |diff| {(resumed - straight).abs().max()})"
    elif isinstance(straight, dict):
        assert resumed.keys() == straight.keys(), where
        for key in straight:
            _assert_identical(resumed[key], straight[key], f"{where}[{key!r}]")
    elif isinstance(straight, (list, tuple)):
        assert len(resumed) == len(straight), where
        for i, (a, b) in enumerate(zip(resumed, straight)):
            _assert_identical(a, b, f"{where}[{i}]")
    else:
        assert resumed == straight, where


class _Killed(Exception):
    """Stands for a kill of the training process."""


@pytest.mark.parametrize("bundle", ["brats_teacher_vggvit3d", "brats_student_effnet25d"])
def test_a_resumed_run_reproduces_the_uninterrupted_one_bitwise_on_cpu(
    bundle: str, bundle_kit, trained_bundles: Path, synthetic_brats_root: Path, tmp_path: Path
) -> None:
    def train(out: Path, resume: bool, kill_after_epoch: int | None = None) -> None:
        overrides = bundle_kit.train_overrides(bundle, synthetic_brats_root, out, trained_bundles)
        overrides.update(epochs=2, resume=resume, device="$torch.device('cpu')")
        workflow = bundle_kit.workflow(bundle, ["train.json"], "train", **overrides)
        if kill_after_epoch is not None:  # attached after the bundle's handlers: once last.pt is written

            def kill(engine) -> None:
                if engine.state.epoch == kill_after_epoch:
                    raise _Killed

            workflow.parser.get_parsed_content("train#trainer").add_event_handler(Events.EPOCH_COMPLETED, kill)
            with pytest.raises(Exception) as info:
                workflow.run()
            assert any(isinstance(e, _Killed) for e in _cause_chain(info.value))
            return
        workflow.run()
        workflow.finalize()

    train(tmp_path / "straight", resume=False)
    train(tmp_path / "resumed", resume=False, kill_after_epoch=1)
    train(tmp_path / "resumed", resume=True)
    for name in ("last.pt", "model.pt"):
        straight = torch.load(tmp_path / "straight" / "models" / name, weights_only=True)
        resumed = torch.load(tmp_path / "resumed" / "models" / name, weights_only=True)
        if "trainer" in straight:
            assert straight["trainer"]["iteration"] == 2 * straight["trainer"]["epoch_length"]
        _assert_identical(resumed, straight, name)


@pytest.mark.parametrize("teacher", ["brats_teacher_vggvit3d", "brats_hdkd_teacher3d"])
def test_teacher_without_segmentations_names_them_or_trains_without_the_auxiliary_task(
    teacher: str, bundle_kit, synthetic_brats_root: Path, tmp_path: Path
) -> None:
    datalist = discover_brats(synthetic_brats_root)
    for record in datalist["training"]:
        record["seg"] = None
    overrides = {
        **bundle_kit.train_overrides(teacher, synthetic_brats_root, tmp_path / "aux", tmp_path),
        "datalist": str(write_datalist(datalist, tmp_path / "no_seg.json")),
    }
    with pytest.raises(Exception) as info:
        bundle_kit.run(teacher, ["train.json"], "train", **overrides)
    message = " ".join(str(e) for e in _cause_chain(info.value))
    assert "needs 'seg' for every training subject" in message and "seg_aux_weight=0" in message
    assert not (tmp_path / "aux" / "models" / "model.pt").exists()

    overrides.update(seg_aux_weight=0, ckpt_dir=str(tmp_path / "plain" / "models"))
    bundle_kit.run(teacher, ["train.json"], "train", **overrides)
    assert (tmp_path / "plain" / "models" / "model.pt").is_file()
