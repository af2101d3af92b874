"""The shared atomic writer: all or nothing under the final name, ordinary file permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from medkd3d.utils import atomic_path, atomic_write_text


def test_atomic_write_replaces_whole_file_with_umask_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.json"
    old_umask = os.umask(0o022)
    try:
        atomic_write_text(target, "first")
        atomic_write_text(target, "second")
    finally:
        os.umask(old_umask)
    assert target.read_text() == "second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temporary file left


def test_failed_write_keeps_the_previous_version(tmp_path: Path) -> None:
    target = tmp_path / "results.csv"
    atomic_write_text(target, "complete")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]
