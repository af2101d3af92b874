"""Feature taps: the right modules, one forward pass, no hooks left behind."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DenseNet121
from torch import nn

from medkd3d.engines import FeatureTaps, feature_info_taps, forward_with_features, returning_features


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_densenet121_taps_match_a_manual_pass_and_are_removed():
    net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    stem_calls = _count_calls(net.features.conv0)
    paths = ["features.denseblock2", "features.denseblock4"]
    with torch.no_grad(), FeatureTaps(net, paths) as taps:
        logits = net(x)
        block2, block4 = taps.features
        assert _hook_count(net) == 2
    assert stem_calls[0] == 1  # the taps did not run any part of the network again
    assert _hook_count(net) == 0 and not taps.active

    expected = {}
    with torch.no_grad():
        h = x
        for name, layer in net.features.named_children():
            h = layer(h)
            expected[name] = h
        reference_logits = net.class_layers(h)
    torch.testing.assert_close(block2, expected["denseblock2"])
    torch.testing.assert_close(block4, expected["denseblock4"])
    torch.testing.assert_close(logits, reference_logits)
    assert block2.shape[1] == 512 and block4.shape[1] == 1024


def test_unknown_module_path_names_the_model_and_suggests(tiny_net):
    with pytest.raises(ValueError, match=r"TinyNet3d has no submodule 'stme'.*'stem'"):
        FeatureTaps(tiny_net(), ["stme"])
    with pytest.raises(ValueError, match="at least one"):
        FeatureTaps(tiny_net(), [])


def test_taps_look_through_wrappers_and_keep_path_order(tiny_net):
    net = tiny_net()
    wrapped = nn.DataParallel(net)  # on CPU it just calls the module; paths are the inner model's
    x = torch.randn(2, 2, 8, 8, 8)
    with FeatureTaps(wrapped, ["stage", "stem"]) as taps:
        wrapped(x)
        stage, stem = taps.pop()
        with pytest.raises(RuntimeError, match="produced no output"):
            taps.features  # noqa: B018 - pop() forgot them
    reference = net.forward_features(x)
    torch.testing.assert_close(stem, reference[0])
    torch.testing.assert_close(stage, reference[1])
    assert _hook_count(net) == 0


def test_tuple_outputs_are_recorded_as_first_element_and_detach_option():
    class Block(nn.Module):
        def forward(self, x):
            return x * 2, x.sum()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 3)
            self.block = Block()

        def forward(self, x):
            return self.block(self.linear(x))[0]

    net, x = Net(), torch.randn(4, 3)
    with FeatureTaps(net, "block", detach=True) as taps:
        out = net(x)
        (feature,) = taps.features
    torch.testing.assert_close(feature, out.detach())
    assert not feature.requires_grad and out.requires_grad


def test_forward_with_features_is_one_pass_and_equals_forward(tiny_net):
    net = tiny_net()
    stem_calls = _count_calls(net.stem)
    x = torch.randn(2, 2, 8, 8, 8)
    logits, features = forward_with_features(net, x)
    assert stem_calls[0] == 1
    assert [f.shape[1] for f in features] == [info["num_chs"] for info in net.feature_info]
    torch.testing.assert_close(logits, net(x))
    assert "forward" not in vars(net)  # the temporary forward is gone


def test_feature_info_taps_of_chosen_stages_record_those_stages_in_order(tiny_net):
    net = tiny_net()
    x = torch.randn(2, 2, 8, 8, 8)
    _, features = forward_with_features(net, x)
    last = len(net.feature_info) - 1
    with torch.no_grad(), feature_info_taps(net, stages=[last, 0]) as taps:
        net(x)
        tapped = taps.features
    assert len(tapped) == 2
    torch.testing.assert_close(tapped[0], features[last])
    torch.testing.assert_close(tapped[1], features[0])
    assert _hook_count(net) == 0
    with pytest.raises(ValueError, match="not indices"):
        feature_info_taps(net, stages=[last + 1])


def test_returning_features_needs_the_zoo_contract():
    net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2)
    with pytest.raises(TypeError, match=r"forward_features.*module paths"), returning_features(net):
        pass
    assert "forward" not in vars(net)
