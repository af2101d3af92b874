"""Shared helpers: the atomic writer (all or nothing, ordinary permissions), argparse int types, lazy exports."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from medkd3d.utils import (
    FolderInUseError,
    atomic_path,
    atomic_write_text,
    lock_folder,
    pid_alive,
    remove_stale_temp_files,
    unlock_folder,
)

#: Above Linux's largest pid (pid_max <= 2**22), so never a running process.
DEAD_PID = 2**22 + 12345


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


def test_bounded_int_argparse_types() -> None:
    import argparse

    from medkd3d.utils import non_negative_int, positive_int

    assert positive_int("3") == 3
    assert non_negative_int("0") == 0
    for parse, bad in ((positive_int, "0"), (positive_int, "x"), (non_negative_int, "-1"), (non_negative_int, "1.5")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(repr(bad))):
            parse(bad)


def test_lazy_exports_loads_on_access_and_lists_names() -> None:
    import medkd3d.data
    from medkd3d.data.pipelines import volume_transforms
    from medkd3d.utils import lazy_exports

    get, names = lazy_exports("medkd3d.data", {"volume_transforms": "pipelines"})
    assert get("volume_transforms") is volume_transforms
    assert "volume_transforms" in names() and "load_splits" in names()  # lazy and eager names
    with pytest.raises(AttributeError, match=re.escape("'medkd3d.data' has no attribute 'nope'")):
        get("nope")
    assert medkd3d.data.volume_transforms is volume_transforms


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys; from medkd3d.utils import lock_folder; lock_folder({str(folder)!r}, "
         "'training test'); print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_folder_lock_refuses_a_second_process_and_names_the_holder(tmp_path: Path) -> None:
    holder = _hold_lock(tmp_path)
    try:
        with pytest.raises(FolderInUseError) as info:
            lock_folder(tmp_path)
        assert str(tmp_path) in str(info.value) and f"pid {holder.pid}" in str(info.value)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # the holder ended: the lock is free; it is re-entrant within one process until unlocked
    lock_folder(tmp_path)
    lock_folder(tmp_path)
    unlock_folder(tmp_path)
    holder = _hold_lock(tmp_path)  # another process gets it after unlock_folder
    holder.stdin.close()
    holder.wait(timeout=30)


def test_stale_temp_files_of_dead_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    assert pid_alive(os.getpid()) and not pid_alive(DEAD_PID)
    stale = [tmp_path / f".model.pt.{DEAD_PID}.ab12cd_x.tmp", tmp_path / f".model.partial-{DEAD_PID}.pt"]
    running = [tmp_path / f".model.pt.{os.getpid()}.zz99yy00.tmp"]  # a write in progress: left alone
    other = [tmp_path / f".last.pt.{DEAD_PID}.ab12cd_x.tmp", tmp_path / "notes.tmp"]  # another target: left alone
    for path in [*stale, *running, *other]:
        path.write_bytes(b"")
    atomic_write_text(tmp_path / "model.pt", "weights")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in [*running, *other, tmp_path / "model.pt"]
    )
    # a folder: every target's stale files go, the running writer's stay
    assert remove_stale_temp_files(tmp_path) == [other[0]]
    assert running[0].exists() and other[1].exists()
