"""Shared fixtures: tiny synthetic BraTS datasets made by ``medkd3d synth``'s Python API, seeded, the benchmark scripts, and
the log-volumes a compartment readout is fitted on."""

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


@pytest.fixture
def readout_volumes() -> tuple[torch.Tensor, torch.Tensor]:
    """Log-volumes of three compartments for 40 subjects, whose first compartment is larger in class 1, and their
    labels: what a compartment readout's regression is fitted on."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    volumes = torch.randn(40, 3, generator=generator) * torch.tensor([1.0, 3.0, 0.5]) + torch.tensor([-4.0, -2.0, -6.0])
    volumes[:, 0] += 1.5 * labels
    return volumes, labels


@pytest.fixture
def broken_onnx_export(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ONNX export of the test writes its network with the classifier bias shifted by (+1, -1): a broken
    artefact that fails its parity check (the network itself is left as it was)."""
    from medkd3d.export import exporter

    export_onnx = exporter.export_onnx

    def export(network: torch.nn.Module, example_input: torch.Tensor, path: Path, deployment, **kwargs):
        head = [m for m in network.modules() if isinstance(m, torch.nn.Linear)][-1]
        original = head.bias.detach().clone()
        with torch.no_grad():
            head.bias += torch.tensor([1.0, -1.0])
        try:
            return export_onnx(network, example_input, path, deployment, **kwargs)
        finally:
            with torch.no_grad():
                head.bias.copy_(original)

    monkeypatch.setattr(exporter, "export_onnx", export)


@pytest.fixture(scope="session")
def synthetic_brats_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BraTS 2019-layout dataset (6 HGG, 6 LGG subjects of ``TINY_SHAPE``), shared by the whole session.

    Tests must not modify it; copy it first (``shutil.copytree``) to corrupt files.
    """
    from medkd3d.data.synthetic import generate_synthetic_brats

    root = tmp_path_factory.mktemp("brats2019")
    return generate_synthetic_brats(root, layout="brats2019", n_hgg=6, n_lgg=6, shape=TINY_SHAPE, seed=0)
