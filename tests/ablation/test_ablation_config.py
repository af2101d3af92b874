"""Study configuration: the ``--quick`` preset covers the whole design, and the CPU thread setting is scoped."""

from __future__ import annotations

import pytest
import torch

from medkd3d.ablation.grid import KD_MODES
from medkd3d.ablation.runner import STUDENTS, StudyConfig, _torch_threads, override, run_study
from medkd3d.cli import main


def test_quick_preset_covers_every_student_and_kd_mode(tmp_path) -> None:
    config = StudyConfig.quick(tmp_path / "data", tmp_path / "study")
    grid = config.grid()
    cells = {(r.student, r.kd) for r in grid.runs()}
    assert cells == {(s, k) for s in STUDENTS for k in KD_MODES}
    assert len(config.sizes) >= 2 and config.folds >= 2  # a learning curve and a spread per cell
    assert config.tiny and config.threads == 1 and config.synthetic is not None
    # command-line flags left out keep the preset; given ones replace it
    assert override(config, students=None, threads=None).threads == 1
    assert override(config, students=["3d"], threads=2).students == ["3d"]


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
        main(["ablate", "--dataset-dir", str(tmp_path), "--out", str(tmp_path / "o"), "--threads", value])
    assert exit_info.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err
