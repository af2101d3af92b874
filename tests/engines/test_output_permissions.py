"""Metrics files and the soft-target cache get a plain file's permissions (umask), not a temporary file's 0600."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from medkd3d.engines import SoftTargetCache
from medkd3d.engines.evaluation import write_metrics

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_metrics_files_are_readable_by_others(tmp_path: Path, umask_022: None) -> None:
    json_path, csv_path = write_metrics({"auc": 0.75, "per_class": {"HGG": {"f1": 0.5}}}, tmp_path / "eval", "metrics")
    assert _mode(json_path) == 0o644 and _mode(csv_path) == 0o644
    assert csv_path.read_text() == "metric,value\nauc,0.75\nper_class/HGG/f1,0.5\n"
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["metrics.csv", "metrics.json"]  # no temp left


def test_soft_target_cache_is_readable_by_others(tmp_path: Path, umask_022: None) -> None:
    cache = SoftTargetCache({"sub-000": torch.zeros(1, 2), "sub-001": torch.ones(1, 2)})
    path = cache.save(tmp_path / "cache" / "teacher_logits.pt")
    assert _mode(path) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["teacher_logits.pt"]
    torch.testing.assert_close(SoftTargetCache.load(path).lookup(["sub-001"]), torch.ones(1, 1, 2))
