"""Every registered network, traced on the CPU as the exporter traces it, runs on a GPU and matches the eager
network there (needs CUDA). The export's own parity check runs on the CPU, where its eager reference runs; this
covers the GPU side of a TorchScript artefact (a tensor that tracing baked onto the CPU would fail here)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medkd3d.export import load_runtime
from medkd3d.export.parity import PRECISION_TOLERANCES
from medkd3d.networks import create_model, get_model_entry, list_models

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
# EfficientNet-B1...B6 share B0's and B7's code path (as in tests/networks/test_contract.py)
NAMES = [name for name in list_models() if name not in list_models("efficientnet3d_b[1-6]")]


def _assert_traced_matches_eager_on_cuda(network: nn.Module, x: torch.Tensor, tmp_path: Path) -> None:
    network.eval()
    if hasattr(network, "prepare_for_export"):
        network.prepare_for_export()
    path = tmp_path / "model.ts"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing is deprecated upstream
        torch.jit.trace(network, x, check_trace=False).save(str(path))

    runtime = load_runtime(path, backend="torchscript", device="cuda")
    logits = runtime(x.numpy())
    with torch.no_grad():
        expected = network.cuda()(x.cuda()).float().cpu().numpy()

    assert runtime.description == "torchscript (cuda)"
    allowed = PRECISION_TOLERANCES["fp32"].allowed_diff(float(np.abs(expected).max()))
    assert np.abs(logits - expected).max() <= allowed


@pytest.mark.parametrize("name", NAMES)
def test_traced_network_runs_on_cuda_as_the_eager_network_there(name: str, tmp_path: Path) -> None:
    entry = get_model_entry(name)
    torch.manual_seed(0)
    network = create_model(name, **entry.tiny_kwargs)
    _assert_traced_matches_eager_on_cuda(network, torch.randn(2, *entry.tiny_input_shape), tmp_path)


@pytest.mark.parametrize("name, stage", [("hdkd_teacher3d", (0, 1)), ("hdkd_student3d", (0, 1)), ("vggvit3d", 0)])
def test_traced_network_with_a_fitted_readout_runs_on_cuda(name: str, stage, tmp_path: Path, readout_volumes) -> None:
    entry = get_model_entry(name)
    torch.manual_seed(0)
    network = create_model(name, readout_stage=stage, **entry.tiny_kwargs)
    network.readout.fit(*readout_volumes)
    _assert_traced_matches_eager_on_cuda(network, torch.randn(2, *entry.tiny_input_shape), tmp_path)
