"""``place_network``: a 3D network channels-last computes what it computed before, 2D networks are left alone, and
the bundles' ``quick`` profiles turn it on on a CPU only (training, inference and a distilled student's teacher)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medkd3d.bundles import bundle_parser
from medkd3d.networks import create_model, has_3d_convolutions, place_network

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
CHANNELS_LAST = torch.channels_last_3d


def _conv3d_weights(network: nn.Module) -> list[torch.Tensor]:
    """The 3D convolution weights whose two layouts differ (a 1x1x1 or depthwise kernel is in both)."""
    convs = [m for m in network.modules() if isinstance(m, nn.Conv3d)]
    return [m.weight for m in convs if m.weight.shape[1] > 1 and m.weight[0, 0].numel() > 1]


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet10_3d", {"norm": "batch", "width_multiplier": 0.25}),
        ("vggvit3d", {"img_size": [32, 32, 32], "width_multiplier": 0.125, "vit_hidden_size": 48, "vit_layers": 1}),
        ("hdkd_student3d", {"embed_dim": 32, "num_heads": 2, "transformer_depth": 1}),
    ],
)
def test_channels_last_network_matches_the_usual_layout(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    usual = create_model(name, in_channels=4, num_classes=2, **kwargs)
    fast = create_model(name, in_channels=4, num_classes=2, **kwargs)
    fast.load_state_dict(usual.state_dict())
    place_network(fast, "cpu", channels_last=True)
    assert all(w.is_contiguous(memory_format=CHANNELS_LAST) for w in _conv3d_weights(fast))
    assert not any(w.is_contiguous() for w in _conv3d_weights(fast))
    assert all(w.is_contiguous() for w in _conv3d_weights(usual))

    # eval mode: no dropout masks, whose random draws follow the memory layout
    x = torch.randn(2, 4, 32, 32, 32)
    logits = []
    for network in (usual.eval(), fast.eval()):
        logits.append(network(x))
        logits[-1].logsumexp(dim=1).sum().backward()
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-5)
    for (key, a), b in zip(usual.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=f"gradient of {key}")
    # same values in the state dict: checkpoints load into a network of the usual layout
    torch.testing.assert_close(fast.state_dict(), usual.state_dict())


def test_2d_networks_and_channels_last_off_keep_their_layout() -> None:
    conv2d = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU())
    assert not has_3d_convolutions(conv2d)
    assert place_network(conv2d, "cpu", channels_last=True)[0].weight.is_contiguous()
    conv3d = nn.Sequential(nn.Conv3d(4, 8, 3))
    assert has_3d_convolutions(conv3d)
    assert place_network(conv3d, "cpu", channels_last=False)[0].weight.is_contiguous()
    assert place_network(conv3d, "cpu", channels_last=True)[0].weight.is_contiguous(memory_format=CHANNELS_LAST)


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
@pytest.mark.parametrize(
    "profiles, device, expected",
    # off by default: the full-size 3D student, EfficientNet-B0 with group norm, ran 2x slower channels-last on a CPU
    [((), "cpu", False), ((), "cuda:0", False), (("quick",), "cpu", True), (("quick",), "cuda:0", False)],
)
def test_bundles_use_channels_last_in_the_quick_profile_on_a_cpu(
    config: str, profiles: tuple[str, ...], device: str, expected: bool
) -> None:
    for root in sorted(BUNDLES_DIR.glob("brats_*")):
        parser = bundle_parser(root, {"device": f"$torch.device('{device}')"}, config, profiles=profiles)
        assert parser.get_parsed_content("channels_last") is expected, root.name
        assert parser["network"]["channels_last"] == "@channels_last", root.name
        if config == "train.json" and "teacher" in parser.config:
            assert parser["teacher"]["channels_last"] == "@channels_last", root.name


def test_bundle_network_is_channels_last_on_a_cpu() -> None:
    overrides = {"spatial_size": [16, 16, 16], "network_def#width_multiplier": 0.25, "device": "$torch.device('cpu')"}
    parser = bundle_parser(BUNDLES_DIR / "brats_student_effnet3d", overrides, "train.json", profiles=["quick"])
    network = parser.get_parsed_content("network")
    assert network is parser.get_parsed_content("network_def")
    assert all(w.is_contiguous(memory_format=CHANNELS_LAST) for w in _conv3d_weights(network))
