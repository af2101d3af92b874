"""The ruff configuration lints every source folder: excluded data and run folders are anchored to the root.

A bare ``"data"`` in ``extend-exclude`` matches every folder of that name, so ``medkd3d/data/`` and
``tests/data/`` were never linted. These tests run ruff's own file discovery (``--show-files``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytest.importorskip("ruff", reason="ruff (the dev extra) lints the repository")


def _linted_files(root: Path) -> set[str]:
    """Files ``ruff check`` would lint under ``root`` with the configuration found there, relative to ``root``."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--show-files", "."],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return {Path(line).resolve().relative_to(root.resolve()).as_posix() for line in result.stdout.split()}


def test_ruff_lints_the_data_packages() -> None:
    linted = _linted_files(REPO)
    assert "medkd3d/data/discovery.py" in linted
    assert "medkd3d/data/transforms.py" in linted
    assert "tests/data/test_splits.py" in linted


def test_ruff_still_skips_the_root_data_and_runs_folders(tmp_path: Path) -> None:
    """With the project's configuration, ``./data`` and ``./runs`` are skipped but a nested ``pkg/data`` is not."""
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    for name in ("data/a.py", "runs/b.py", "pkg/data/c.py", "pkg/runs/d.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("VALUE = 1\n", encoding="utf-8")
    linted = {name for name in _linted_files(tmp_path) if name.endswith(".py")}
    assert linted == {"pkg/data/c.py", "pkg/runs/d.py"}
