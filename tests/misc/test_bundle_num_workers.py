"""The bundles default to no more data-loading workers than the machine offers (PyTorch warns of freezes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
CONFIGS = sorted(BUNDLES.glob("*/configs/train.json")) + sorted(BUNDLES.glob("*/configs/inference.json"))


def _num_workers(config: Path) -> int:
    parser = ConfigParser()
    parser.read_config(config)
    return parser.get_parsed_content("num_workers")


def test_every_bundle_has_train_and_inference_configs() -> None:
    assert len(CONFIGS) >= 10


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parents[1].name}/{p.name}")
def test_num_workers_follows_the_cpus_available(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    else:
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert _num_workers(config) == 2
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    else:
        monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert _num_workers(config) == 4  # capped: more workers than this rarely help a 3D pipeline
