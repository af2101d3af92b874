"""Fixtures of the export tests: tiny versions of every bundle's network with a checkpoint, exported once."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p.parent.parent.name for p in (REPO / "bundles").glob("*/configs/inference.json"))


def bundle_root(name: str) -> Path:
    return REPO / "bundles" / name


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests taking ``bundle_name`` run once per bundle of the repository."""
    if "bundle_name" in metafunc.fixturenames:
        metafunc.parametrize("bundle_name", BUNDLES)


def _run_cli(argv: Sequence[str]) -> int:
    from medkd3d.export import cli

    parser = argparse.ArgumentParser(prog="medkd3d")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture
def run_cli():
    """Run ``medkd3d <argv>`` through the export sub-commands' own ``register`` (as ``medkd3d.cli`` does)."""
    return _run_cli


class TinyBundle:
    """A bundle with tiny network overrides and a checkpoint whose BatchNorm statistics were fitted on real inputs.

    A freshly initialised network has near-constant logits (an EfficientNet's are ~1e-18), which would make a
    parity check meaningless; one train-mode pass over preprocessed subjects, with BatchNorm averaging over it
    (``momentum=None``), gives it realistic statistics.
    """

    def __init__(self, name: str, data_root: Path, directory: Path, root: Path | None = None) -> None:
        from medkd3d.export.bundle import load_bundle, tiny_overrides
        from medkd3d.export.inputs import load_records, network_inputs

        self.name = name
        self.root = root or bundle_root(name)
        self.overrides = tiny_overrides(self.root)
        self.checkpoint = directory / "model.pt"
        # The test's own checkpoint path, not yet written: random initial weights, and never the bundle's
        # models/model.pt, which a user who trained the bundle has (at other sizes) in the working tree.
        model = load_bundle(self.root, checkpoint=self.checkpoint, overrides=self.overrides, random_weights=True)
        deployment = model.deployment
        preprocessing, inferer = deployment.build_preprocessing(), deployment.build_inferer()
        records = load_records(data_root)
        inputs = [torch.from_numpy(network_inputs(r, preprocessing, inferer, 2)) for r in records[:4]]
        network = model.network.train()
        norms = [m for m in network.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        for norm in norms:  # momentum None: the running statistics become the plain average over the passes
            norm.reset_running_stats()
            norm.momentum = None
        with torch.no_grad():
            network(torch.cat([batch.repeat(2, *([1] * (batch.ndim - 1))) for batch in inputs]))
        for norm in norms:
            norm.momentum = 0.1
        network.eval()
        torch.save({"model": network.state_dict()}, self.checkpoint)

    def load(self):
        from medkd3d.export.bundle import load_bundle

        return load_bundle(self.root, checkpoint=self.checkpoint, overrides=self.overrides)

    def override_args(self) -> list[str]:
        import json

        return [arg for key, value in self.overrides.items() for arg in ("--override", f"{key}={json.dumps(value)}")]


@pytest.fixture(scope="session")
def tiny_bundles(synthetic_brats_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TinyBundle]:
    torch.manual_seed(0)
    return {name: TinyBundle(name, synthetic_brats_root, tmp_path_factory.mktemp(name)) for name in BUNDLES}


@pytest.fixture(scope="session")
def exported(tiny_bundles, synthetic_brats_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every bundle exported once to TorchScript and ONNX (with the automatic parity checks)."""
    from medkd3d.export.exporter import export_model

    results = {}
    for name, tiny in tiny_bundles.items():
        out = tmp_path_factory.mktemp(f"export-{name}")
        results[name] = export_model(tiny.load(), out, ["torchscript", "onnx"], parity_data=synthetic_brats_root)
    return results


@pytest.fixture(scope="session")
def tiny_bundle_class() -> type[TinyBundle]:
    """:class:`TinyBundle` itself, to build one from another bundle folder (test modules cannot import conftest)."""
    return TinyBundle
