"""Global head pooling: values against hand computation, widths, and the networks that take ``head_pooling``."""

from __future__ import annotations

import pytest
import torch

from medkd3d.networks import create_model
from medkd3d.networks.pooling import GLOBAL_POOLINGS, check_global_pooling, global_pool, pooled_width
from medkd3d.networks.registry import get_model_entry


def test_global_pool_matches_hand_computation():
    x = torch.zeros(2, 3, 4, 4, 4)
    x[0, 1, 2, 3, 1] = 8.0  # one bright voxel: the mean is 8 / 64, the maximum 8
    x[1] = -1.0
    assert torch.allclose(global_pool(x, "avg")[0], torch.tensor([0.0, 0.125, 0.0]))
    assert torch.allclose(global_pool(x, "max")[0], torch.tensor([0.0, 8.0, 0.0]))
    both = global_pool(x, "avgmax")
    assert both.shape == (2, 6)
    assert torch.allclose(both[0], torch.tensor([0.0, 0.125, 0.0, 0.0, 8.0, 0.0]))
    assert torch.allclose(both[1], torch.full((6,), -1.0))


@pytest.mark.parametrize("mode", GLOBAL_POOLINGS)
def test_pooled_width_is_the_output_width(mode):
    assert global_pool(torch.randn(1, 5, 3, 3), mode).shape[1] == pooled_width(5, mode)


def test_unknown_pooling_is_refused_with_the_owner_named():
    with pytest.raises(ValueError, match="VGG3D: head_pooling must be one of"):
        check_global_pooling("mean", "VGG3D")
    with pytest.raises(ValueError, match="EfficientNet3D"):
        create_model("efficientnet3d_b0", **get_model_entry("efficientnet3d_b0").tiny_kwargs, head_pooling="sum")


@pytest.mark.parametrize("name", ["vgg11_3d", "efficientnet3d_b0", "hdkd_teacher3d"])
def test_networks_take_an_avgmax_head(name):
    """With ``avgmax`` the classifier gets more inputs, the logits keep their shape and the network scripts."""
    entry = get_model_entry(name)
    torch.manual_seed(0)
    avg = create_model(name, **entry.tiny_kwargs, head_pooling="avg")
    both = create_model(name, **entry.tiny_kwargs, head_pooling="avgmax")
    # only the classifier's first layer grows: it takes C more inputs
    extra = sum(p.numel() for p in both.parameters()) - sum(p.numel() for p in avg.parameters())
    assert extra > 0
    both.eval()
    x = torch.randn(2, *entry.tiny_input_shape)
    logits = both(x)
    assert logits.shape == (2, 2)
    scripted = torch.jit.script(both)
    assert torch.allclose(scripted(x), logits, atol=1e-5)
