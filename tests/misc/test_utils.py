"""Shared helpers: the atomic writer (all or nothing, ordinary permissions), argparse int types, lazy exports."""

from __future__ import annotations

import os
import re
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
