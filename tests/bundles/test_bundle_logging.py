"""Bundle runs through :func:`medkd3d.bundles.run.run_bundle_config` log what matters, not MONAI's defaults."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from medkd3d.bundles import bundle_logging_file, find_bundle_root, run_bundle_config


@pytest.fixture()
def tiny_bundle(tmp_path: Path) -> Path:
    """A bundle whose ``run`` only writes a file: its metadata and logging.conf are the teacher bundle's."""
    teacher = Path(find_bundle_root("brats_teacher_vggvit3d")) / "configs"
    configs = tmp_path / "tiny" / "configs"
    (configs / "profiles").mkdir(parents=True)
    for name in ("metadata.json", "logging.conf"):
        shutil.copy(teacher / name, configs / name)
    (configs / "main.json").write_text(
        json.dumps({"out": "", "imports": ["$import pathlib"], "run": ["$pathlib.Path(@out).write_text('ran')"]})
    )
    (configs / "profiles" / "quick.json").write_text(json.dumps({"unused": 1}))
    return configs.parent


def test_run_prints_no_warning_about_defaults(tiny_bundle: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    out = tmp_path / "ran.txt"
    # a profile lives in configs/profiles/: MONAI would warn that "not all config files are in" configs/
    run_bundle_config(tiny_bundle, ["main.json", "profiles/quick.json"], workflow_type=None, out=str(out))
    assert out.read_text() == "ran"
    captured = capfd.readouterr()
    text = captured.out + captured.err
    assert "Logging file is set to False" not in text
    assert "Not all config files" not in text


def test_filter_is_removed_after_the_run(tiny_bundle: Path, tmp_path: Path) -> None:
    run_bundle_config(tiny_bundle, "main.json", workflow_type=None, out=str(tmp_path / "ran.txt"))
    assert logging.getLogger("monai.bundle.workflows").filters == []


def test_logging_file_keeps_the_callers_setup(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configs = tiny_bundle / "configs"
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])
    assert bundle_logging_file(configs) is False
    # a plain script without logging set-up gets the bundle's logging.conf, as `python -m monai.bundle run` does
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    assert bundle_logging_file(configs) == str(configs / "logging.conf")
    (configs / "logging.conf").unlink()
    assert bundle_logging_file(configs) is False
    assert bundle_logging_file(configs, "/some/logging.conf") == "/some/logging.conf"
    assert bundle_logging_file(configs, False) is False
