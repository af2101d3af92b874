"""Shared fixtures: tiny synthetic BraTS datasets made by ``medkd3d synth``'s Python API, seeded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

#: Shape of every synthetic test volume: small enough for a fast suite, large enough for a brain and a tumour.
TINY_SHAPE = (48, 48, 40)


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
