"""Scripted TorchScript of every bundle network, the way MONAI's model zoo checks bundles.

The zoo runs ``python -m monai.bundle ckpt_export network_def ...`` without ``--use_trace``, i.e. ``torch.jit.script``.
Each bundle's ``network_def`` comes from its own ``train.json`` with the ``quick`` profile merged (the real network
families, timm's ``efficientnet_b0`` for the 2.5D student included, at 32^3), goes through MONAI's ``ckpt_export``
and must give the eager network's logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export

from medkd3d.bundles import BUNDLE_NAMES

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"


def _configs(bundle: str) -> list[str]:
    configs = BUNDLES_DIR / bundle / "configs"
    return [str(configs / "train.json"), str(configs / "profiles" / "quick.json")]


def _network_and_input(bundle: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The bundle's ``network_def`` (train.json + quick profile) in eval mode and a random input batch of 2."""
    parser = ConfigParser()
    parser.read_config(_configs(bundle))
    parser["bundle_root"] = str(BUNDLES_DIR / bundle)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    spatial = list(parser.get_parsed_content("spatial_size"))
    if parser.get_parsed_content("network_def#name") == "efficientnet25d_multi":
        # a subject's S slice stacks of K adjacent slices of the 4 modalities, in the axial plane
        stacks, slices = parser.get_parsed_content("num_stacks"), parser.get_parsed_content("num_slices")
        shape = [2, stacks, 4 * slices, *spatial[:2]]
    else:
        shape = [2, parser.get_parsed_content("network_def#in_channels"), *spatial]
    return network, torch.randn(shape)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_scripted_network_matches_eager(bundle: str) -> None:
    network, x = _network_and_input(bundle)
    scripted = torch.jit.script(network)
    with torch.no_grad():
        expected = network(x)
        torch.testing.assert_close(scripted(x), expected, rtol=1e-4, atol=1e-5)
    assert expected.shape == (2, 2)


@pytest.mark.parametrize("bundle", ["brats_teacher_vggvit3d", "brats_student_effnet25d"])
def test_model_zoo_ckpt_export_scripts_the_network(bundle: str, tmp_path: Path) -> None:
    """MONAI's own ``ckpt_export`` (default: scripted) on a checkpoint of the network; the export reloads as eager."""
    network, x = _network_and_input(bundle)
    ckpt = tmp_path / "model.pt"
    torch.save(network.state_dict(), ckpt)
    exported = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(ckpt),
        meta_file=str(BUNDLES_DIR / bundle / "configs" / "metadata.json"),
        config_file=_configs(bundle),
        bundle_root=str(BUNDLES_DIR / bundle),
    )
    loaded = torch.jit.load(str(exported))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network(x), rtol=1e-4, atol=1e-5)
