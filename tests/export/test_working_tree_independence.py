"""Tests and benchmarks do not depend on what a user trained into ``bundles/*/models`` (issue 12).

A user who follows a bundle's README has ``models/model.pt`` (and ``eval/``) in the bundle folder, trained at the
bundle's sizes, not the tests' tiny ones. Each test here plants such a checkpoint in a temporary copy of a bundle
(never in the repository's ``bundles/``) and checks that random-weight benchmarks and the test fixtures ignore it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from medkd3d.export.bench import run_benchmark
from medkd3d.export.bench_worker import BenchSettings, WorkerSpec, load_bench_bundle, run_worker
from medkd3d.export.bundle import tiny_overrides

REPO = Path(__file__).resolve().parents[2]
STUDENT = "brats_student_effnet3d"


def _trained_copy(tmp_path: Path, name: str = STUDENT, checkpoint: bool = True) -> Path:
    """A copy of bundle ``name`` with a checkpoint that fits no tiny network (as if trained at other sizes)."""
    copy = Path(
        shutil.copytree(REPO / "bundles" / name, tmp_path / name, ignore=shutil.ignore_patterns("models", "eval"))
    )
    if checkpoint:
        (copy / "models").mkdir()
        torch.save({"model": {"w": torch.zeros(3)}}, copy / "models" / "model.pt")
        (copy / "eval").mkdir()
        (copy / "eval" / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    return copy


def test_random_weights_never_read_the_bundle_checkpoint(tmp_path: Path) -> None:
    copy = _trained_copy(tmp_path)
    overrides = tiny_overrides(copy)
    model = load_bench_bundle(copy, overrides, None)
    assert model.checkpoint is None and model.deployment.export_info["checkpoint"] is None
    # the measuring worker (eager) builds its network the same way
    settings = BenchSettings(threads=1, batch=1, warmup=0, min_repeats=1, max_repeats=1, max_seconds=1.0)
    spec = WorkerSpec("eager", str(copy), (4, 32, 32, 32), settings=settings, overrides=overrides)
    assert run_worker(spec)["repeats"] == 1
    # ... and an explicit checkpoint is still loaded (and refused when it does not fit)
    with pytest.raises(RuntimeError, match="does not match"):
        load_bench_bundle(copy, overrides, copy / "models" / "model.pt")


def test_checkpoint_weights_are_opt_in(tmp_path: Path) -> None:
    """``--weights checkpoint`` measures the trained checkpoint, so it reads it, and a missing one is an error."""
    with pytest.raises(RuntimeError, match="does not match"):
        run_benchmark(
            [_trained_copy(tmp_path / "a")],
            runtimes=["eager"],
            out_dir=tmp_path / "out",
            size="tiny",
            weights="checkpoint",
        )
    with pytest.raises(FileNotFoundError, match="not found: train the model first"):
        run_benchmark(
            [_trained_copy(tmp_path / "b", checkpoint=False)],
            runtimes=["eager"],
            out_dir=tmp_path,
            size="tiny",
            weights="checkpoint",
        )
    with pytest.raises(ValueError, match="weights must be one of random, checkpoint"):
        run_benchmark([REPO / "bundles" / STUDENT], runtimes=["eager"], out_dir=tmp_path, weights="trained")


def test_test_fixture_ignores_a_trained_checkpoint(tiny_bundle_class, synthetic_brats_root: Path, tmp_path: Path):
    """The export tests' tiny bundles start from random weights and save their own checkpoint in a tmp folder."""
    copy = _trained_copy(tmp_path)
    (tmp_path / "own").mkdir()
    tiny = tiny_bundle_class(STUDENT, synthetic_brats_root, tmp_path / "own", root=copy)
    assert tiny.checkpoint == tmp_path / "own" / "model.pt" and tiny.load().checkpoint == tiny.checkpoint
    assert torch.load(copy / "models" / "model.pt", weights_only=True)["model"].keys() == {"w"}  # left alone
