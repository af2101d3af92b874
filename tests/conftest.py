"""Shared fixtures: tiny synthetic BraTS datasets made by ``medkd3d synth``'s Python API, seeded, and the benchmark scripts."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

#: Shape of every synthetic test volume: small enough for a fast suite, large enough for a brain and a tumour.
TINY_SHAPE = (48, 48, 40)


@pytest.fixture(scope="session")
def benchmark_script() -> Callable[[str], ModuleType]:
    """Import a script of ``benchmarks/`` (a folder of scripts, not a package) by name: ``benchmark_script("bench_kd")``."""
    folder = Path(__file__).resolve().parents[1] / "benchmarks"

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def synthetic_brats_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BraTS 2019-layout dataset (6 HGG, 6 LGG subjects of ``TINY_SHAPE``), shared by the whole session.

    Tests must not modify it; copy it first (``shutil.copytree``) to corrupt files.
    """
    from medkd3d.data.synthetic import generate_synthetic_brats

    root = tmp_path_factory.mktemp("brats2019")
    return generate_synthetic_brats(root, layout="brats2019", n_hgg=6, n_lgg=6, shape=TINY_SHAPE, seed=0)
