"""Study configuration: the ``--quick`` preset covers the whole design, and the CPU thread setting is scoped."""

from __future__ import annotations

import pytest
import torch

from medkd3d.ablation.grid import KD_MODES
from medkd3d.ablation.runner import (
    STUDENTS,
    StudyConfig,
    _torch_threads,
    override,
    run_study,
    student_teacher,
    supported_kd_modes,
)
from medkd3d.bundles import find_bundle_root
from medkd3d.cli import main


def test_quick_preset_covers_every_student_bundle_and_its_kd_modes(tmp_path) -> None:
    config = StudyConfig.quick(tmp_path / "data", tmp_path / "study")
    grid = config.grid()
    cells = {(r.student, r.kd) for r in grid.runs()}
    assert cells == {(s, k) for s in STUDENTS for k in supported_kd_modes(find_bundle_root(s))}
    assert {k for _, k in cells} == set(KD_MODES)  # the HDKD bundle has the feature mode
    assert any(isinstance(size, str) and size.endswith("+unlabelled") for size in config.sizes)  # both regimes
    assert any(isinstance(size, int) for size in config.sizes)
    assert config.folds >= 2 and config.tiny and config.threads == 1 and config.synthetic is not None
    # command-line flags left out keep the preset; given ones replace it
    assert override(config, students=None, threads=None).threads == 1
    assert override(config, students=["brats_student_effnet3d"], threads=2).students == ["brats_student_effnet3d"]


def test_students_are_bundles_paired_with_their_teachers() -> None:
    assert student_teacher("brats_student_effnet3d") == "brats_teacher_vggvit3d"
    assert student_teacher("brats_hdkd_student3d") == "brats_hdkd_teacher3d"
    assert supported_kd_modes(find_bundle_root("brats_hdkd_student3d")) == KD_MODES
    assert "logit+feature" not in supported_kd_modes(find_bundle_root("brats_student_effnet3d"))
    with pytest.raises(ValueError, match="unknown student bundle"):
        student_teacher("brats_teacher_vggvit3d")
    with pytest.raises(ValueError, match="has none of the KD modes"):
        StudyConfig("d", "o", students=["brats_student_effnet3d"], kd_modes=["logit+feature"]).grid()


def test_threads_apply_inside_the_block_and_are_restored_even_on_error() -> None:
    before = torch.get_num_threads()
    with _torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), _torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with _torch_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be at least 1"), _torch_threads(0):
        pass


def test_a_failing_study_restores_the_thread_count(tmp_path) -> None:
    before = torch.get_num_threads()
    config = StudyConfig(tmp_path / "missing", tmp_path / "study", threads=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_study(config, progress=False)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_cli_rejects_a_bad_thread_count(value: str, tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "--out", str(tmp_path / "o"), "--threads", value])
    assert exit_info.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err
