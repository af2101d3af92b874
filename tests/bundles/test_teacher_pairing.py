"""Teacher <-> student pairing and the one bundle/checkpoint seam (:mod:`medkd3d.bundles`).

A student's ``train.json`` names its teacher bundle and checkpoint; the teacher is built from the teacher bundle's
own config plus what the trained checkpoint records. Here the HDKD teacher is trained once, tiny and at half width
(``network_def#width_multiplier=0.5``, an override its student never repeats), into a copy of the two bundles, and
the copied student is run the way ``python -m monai.bundle run --config_file <copy>/configs/train.json`` runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medkd3d.bundles import bundle_parser, read_checkpoint_config, require_checkpoint, teacher_of
from medkd3d.utils import exception_chain

TEACHER, STUDENT = "brats_hdkd_teacher3d", "brats_hdkd_student3d"
WIDTH = {"network_def#width_multiplier": 0.5}


def _copy_bundle(source: Path, target: Path) -> Path:
    """A bundle's configs (and docs) copied elsewhere, without any ``models/`` or ``eval/`` of the working tree."""
    shutil.copytree(source / "configs", target / "configs")
    return target


@pytest.fixture(scope="module")
def copied(bundle_kit, synthetic_brats_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<copied>/{teacher,student}`` bundles, the teacher trained tiny at half width into its ``models/``."""
    bundles = tmp_path_factory.mktemp("copied") / "bundles"
    for name in (TEACHER, STUDENT):
        _copy_bundle(bundle_kit.bundles_dir / name, bundles / name)
    teacher = bundles / TEACHER
    overrides = {
        **bundle_kit.train_overrides(TEACHER, synthetic_brats_root, teacher, teacher),
        **WIDTH,
        "bundle_root": str(teacher),
    }
    bundle_kit.run(TEACHER, ["train.json"], "train", **overrides)
    assert (teacher / "models" / "model.pt").is_file()
    return bundles


def _student_overrides(bundle_kit, synthetic_brats_root: Path, out: Path) -> dict:
    """The student's own tiny settings and data; nothing about its teacher (no checkpoint, no network values).

    The HDKD student's stages match its teacher's widths for feature distillation, so its own ``network_def`` is
    slimmed to the same width: a choice about the student's network, not a copy of the teacher's.
    """
    overrides = bundle_kit.train_overrides(STUDENT, synthetic_brats_root, out, out)
    overrides.pop("teacher_ckpt")
    overrides.pop("bundle_root")
    return {**overrides, **WIDTH}


def test_the_student_names_its_teacher_bundle_and_copies_no_network(bundle_kit) -> None:
    for student, teacher in bundle_kit.teacher_of.items():
        assert teacher_of(bundle_kit.bundles_dir / student) == teacher
        parser = bundle_parser(bundle_kit.bundles_dir / student, config="train.json")
        assert "teacher_def" not in parser
        for profile in ("quick", "cpu", "gpu"):
            overlay = (bundle_kit.bundles_dir / student / "configs" / "profiles" / f"{profile}.json").read_text()
            assert "teacher_def" not in overlay, f"{student} profile {profile} repeats its teacher's network"
    assert teacher_of(bundle_kit.bundles_dir / TEACHER) is None


def test_student_builds_the_teacher_trained_with_an_override_it_does_not_repeat(
    copied: Path, bundle_kit, synthetic_brats_root: Path, tmp_path: Path
) -> None:
    checkpoint = copied / TEACHER / "models" / "model.pt"
    assert read_checkpoint_config(checkpoint)["network_def"]["width_multiplier"] == 0.5
    overrides = _student_overrides(bundle_kit, synthetic_brats_root, tmp_path)
    parser = bundle_parser(copied / STUDENT, overrides, "train.json")  # the default teacher_ckpt of the copy
    teacher = parser.get_parsed_content("teacher")
    assert teacher.model_args["width_multiplier"] == 0.5
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.testing.assert_close(teacher.state_dict(), dict(state))


def test_standalone_student_run_resolves_its_teacher(
    copied: Path, bundle_kit, synthetic_brats_root: Path, tmp_path: Path
) -> None:
    """``ConfigWorkflow`` with the copy's own ``train.json`` and no ``bundle_root`` (what ``python -m monai.bundle
    run`` does): the copy finds itself, its sibling teacher bundle and that bundle's checkpoint, and trains."""
    overrides = _student_overrides(bundle_kit, synthetic_brats_root, tmp_path)
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=str(copied / STUDENT / "configs" / "train.json"),
        meta_file=str(copied / STUDENT / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        **overrides,
    )
    workflow.initialize()
    assert workflow.parser.get_parsed_content("bundle_root") == str(copied / STUDENT)
    assert workflow.parser.get_parsed_content("teacher_ckpt") == str(copied / TEACHER / "models" / "model.pt")
    workflow.run()
    workflow.finalize()
    assert (tmp_path / "models" / "model.pt").is_file()


def test_standalone_student_without_its_teacher_checkpoint_says_what_to_train(
    bundle_kit, synthetic_brats_root: Path, tmp_path: Path
) -> None:
    bundles = tmp_path / "bundles"
    for name in (TEACHER, STUDENT):
        _copy_bundle(bundle_kit.bundles_dir / name, bundles / name)
    config = bundles / STUDENT / "configs" / "train.json"
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config), "--dataset_dir",
         str(synthetic_brats_root), "--epochs", "1", "--num_workers", "0"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    missing = bundles / TEACHER / "models" / "model.pt"
    assert f"Teacher checkpoint {missing} of bundle {TEACHER} not found: train the teacher first" in done.stderr
    # relative to the working directory the command was started in, so it can be pasted as it is
    assert f"python -m monai.bundle run --config_file bundles/{TEACHER}/configs/train.json" in done.stderr
    assert "--teacher_ckpt /path/to/model.pt" in done.stderr
    assert not (bundles / STUDENT / "models").exists()  # stopped before doing any work


def test_a_teacher_trained_at_another_size_is_refused(copied: Path, bundle_kit, synthetic_brats_root: Path) -> None:
    overrides = {**_student_overrides(bundle_kit, synthetic_brats_root, copied), "spatial_size": [48, 48, 48]}
    parser = bundle_parser(copied / STUDENT, overrides, "train.json")
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("teacher")
    refused = [e for e in exception_chain(info.value) if isinstance(e, ValueError) and "spatial_size" in str(e)]
    assert refused and "was trained with spatial_size=[32, 32, 32]" in str(refused[0])


def test_random_teacher_reads_no_checkpoint_and_follows_the_teachers_profile(bundle_kit, tmp_path: Path) -> None:
    parser = bundle_parser(
        bundle_kit.bundles_dir / STUDENT,
        {"spatial_size": bundle_kit.spatial, "teacher_ckpt": str(tmp_path / "absent.pt"),
         "teacher#random_weights": True, "teacher#profiles": ["quick"],
         "teacher#overrides": {"network_def#channels": [8, 16, 16]}},
        "train.json",
    )  # fmt: skip
    teacher = parser.get_parsed_content("teacher")
    # the quick profile's blocks come from the teacher bundle's own profile (train.json has 6/6/9), not the student's
    quick = json.loads((bundle_kit.bundles_dir / TEACHER / "configs" / "profiles" / "quick.json").read_text())
    assert quick["network_def#depths"] != [6, 6, 9]
    assert teacher.model_args["depths"] == quick["network_def#depths"]
    assert teacher.model_args["channels"] == [8, 16, 16]  # the explicit overrides come last
    assert not (tmp_path / "absent.pt").exists()


def test_checkpoint_without_a_record_needs_the_teachers_overrides(
    copied: Path, bundle_kit, synthetic_brats_root: Path, tmp_path: Path
) -> None:
    state = torch.load(copied / TEACHER / "models" / "model.pt", map_location="cpu", weights_only=True)
    old = tmp_path / "old.pt"
    torch.save(dict(state), old)  # as an older medkd3d wrote it: weights only
    base = {**_student_overrides(bundle_kit, synthetic_brats_root, tmp_path), "teacher_ckpt": str(old)}
    with pytest.raises(Exception) as info:
        bundle_parser(copied / STUDENT, base, "train.json").get_parsed_content("teacher")
    assert any("--teacher#overrides" in str(e) for e in exception_chain(info.value))
    teacher_net = {**bundle_kit.network_overrides(TEACHER), **WIDTH}
    parser = bundle_parser(copied / STUDENT, {**base, "teacher#overrides": teacher_net}, "train.json")
    torch.testing.assert_close(parser.get_parsed_content("teacher").state_dict(), dict(state))


def test_missing_checkpoint_has_one_message_everywhere(bundle_kit, tmp_path: Path) -> None:
    """explain, export and the bundle configs check a checkpoint's existence in one place, with one message."""
    from medkd3d.explain.bundle import load_bundle_model
    from medkd3d.export.bundle import load_bundle

    root = bundle_kit.bundles_dir / TEACHER
    missing = tmp_path / "model.pt"
    messages = {}
    for name, load in (("explain", load_bundle_model), ("export", load_bundle)):
        with pytest.raises(FileNotFoundError) as info:
            load(root, missing)
        messages[name] = str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        require_checkpoint(missing, root)  # as the bundle configs call it: --ckpt_path
    messages["bundle config"] = str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        require_checkpoint(missing, root, option="--checkpoint")
    assert messages["explain"] == messages["export"] == str(info.value)
    expected = f"Model checkpoint {missing} of bundle {TEACHER} not found: train the model first:\n    python -m"
    for name, message in messages.items():
        assert message.startswith(expected), name
        assert f"{root / 'configs' / 'train.json'}" in message or f"bundles/{TEACHER}/configs/train.json" in message
    assert "--checkpoint /path/to/model.pt" in messages["export"]
    assert "--ckpt_path /path/to/model.pt" in messages["bundle config"]
