"""EfficientNet students: MONAI 3D EfficientNet with stage features, timm 2.5D/2D, multi-slice attention pooling."""

from __future__ import annotations

import pytest
import torch
from monai.networks.blocks.activation import MemoryEfficientSwish, Swish
from monai.networks.nets import EfficientNetBN, EfficientNetBNFeatures

from medkd3d.networks import create_model
from medkd3d.networks.efficientnet3d import EfficientNet3D
from medkd3d.networks.efficientnet25d import (
    EfficientNet25D,
    GatedAttentionPooling,
    MeanPooling,
    MultiSliceEfficientNet25D,
)


def _assert_features_match_info(model: torch.nn.Module, features: list[torch.Tensor], size: int, dim: int = 1) -> None:
    """Channels at ``dim`` and trailing spatial sizes follow ``feature_info``; each module path yields its feature."""
    assert len(features) == len(model.feature_info)
    for feature, info in zip(features, model.feature_info):
        assert feature.shape[dim] == info["num_chs"]
        assert all(s == -(-size // info["reduction"]) for s in feature.shape[dim + 1 :])


def test_efficientnet3d_is_monai_efficientnet_bn_with_its_stage_features() -> None:
    model = create_model("efficientnet3d_b0").eval()
    reference = EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=3, in_channels=4, num_classes=2)
    features_reference = EfficientNetBNFeatures(
        "efficientnet-b0", pretrained=False, spatial_dims=3, in_channels=4, num_classes=2
    )
    reference.load_state_dict(model.state_dict())  # same parameter names and shapes
    features_reference.load_state_dict(model.state_dict())
    reference.eval()
    features_reference.eval()

    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        torch.testing.assert_close(model(x), reference(x))
        for ours, theirs in zip(features, features_reference(x), strict=True):
            torch.testing.assert_close(ours, theirs)
    assert [info["reduction"] for info in model.feature_info] == [2, 4, 8, 16, 32]
    _assert_features_match_info(model, features, size=32)


def test_efficientnet3d_features_and_logits_come_from_one_pass() -> None:
    model = create_model("efficientnet3d_b0", width_multiplier=0.25).eval()
    calls = []
    model._conv_stem.register_forward_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (1, 2)
        assert len(calls) == 1
        features = model.forward_features(x)
    assert len(calls) == 2
    _assert_features_match_info(model, features, size=32)
    with pytest.raises(ValueError, match="efficientnet-b9"):
        EfficientNet3D("efficientnet-b9")


def test_prepare_for_export_switches_off_memory_efficient_swish() -> None:
    model = create_model("efficientnet3d_b0", width_multiplier=0.25).eval()
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        before = model(x)
    assert any(isinstance(m, MemoryEfficientSwish) for m in model.modules())
    model.prepare_for_export()
    assert not any(isinstance(m, MemoryEfficientSwish) for m in model.modules())
    assert isinstance(model._swish, Swish)
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)


@pytest.mark.parametrize("backbone", ["mobilenetv3_small_050", "test_resnet", "test_efficientnet"])
def test_efficientnet25d_accepts_timm_backbones_and_k_slices(backbone: str) -> None:
    model = EfficientNet25D(backbone, num_slices=2, num_classes=3).eval()
    assert model.in_channels == 8
    stem = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.in_channels == 8

    captured = {}
    for info in model.feature_info:
        module = model.get_submodule(info["module"])
        module.register_forward_hook(lambda _m, _a, out, path=info["module"]: captured.setdefault(path, out))
    x = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
        torch.testing.assert_close(logits, model.backbone(x))  # exactly timm's own forward
    assert logits.shape == (2, 3)
    _assert_features_match_info(model, features, size=32)
    for feature, info in zip(features, model.feature_info):  # every module path yields its feature
        torch.testing.assert_close(captured[info["module"]], feature)
    # EfficientNet transforms its last stage (conv_head, bn2) before pooling; that head input is a feature too.
    assert model.has_head_feature == (backbone == "test_efficientnet")


def test_efficientnet2d_takes_one_slice_and_transformers_are_refused() -> None:
    model = create_model("efficientnet2d", backbone="mobilenetv3_small_050")
    assert model.in_channels == 4
    assert model(torch.randn(2, 4, 32, 32)).shape == (2, 2)
    with pytest.raises(ValueError, match="test_vit"):
        EfficientNet25D("test_vit")


def test_gated_attention_pooling_weights_sum_to_one() -> None:
    pooling = GatedAttentionPooling(embed_dim=6, attention_dim=4)
    embeddings = torch.randn(3, 5, 6)
    pooled, weights = pooling(embeddings)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    assert (weights > 0).all()
    torch.testing.assert_close(pooled, (weights[..., None] * embeddings).sum(dim=1))


@pytest.mark.filterwarnings("ignore:.*trace_method.*deprecated")
def test_multi_slice_model_is_permutation_invariant_and_exposes_attention() -> None:
    model = create_model("efficientnet25d_multi", backbone="test_efficientnet", attention_dim=8).eval()
    x = torch.randn(2, 4, 12, 32, 32)
    permutation = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        logits, weights = model.forward_attention(x)
        permuted_logits, permuted_weights = model.forward_attention(x[:, permutation])
        features = model.forward_features(x)
        torch.testing.assert_close(model(x), logits)
        torch.testing.assert_close(model.forward_head(features), logits)
        assert model(x[:, :3]).shape == (2, 2)  # any number of stacks

    assert logits.shape == (2, 2) and weights.shape == (2, 4)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(permuted_logits, logits)
    torch.testing.assert_close(permuted_weights, weights[:, permutation])
    assert features[-1].shape[:2] == (2, 4)  # [B, S, C, h, w]
    _assert_features_match_info(model, features, size=32, dim=2)

    traced = torch.jit.trace_module(model, {"forward_attention": x}, check_trace=False)
    for ours, theirs in zip(traced.forward_attention(x), (logits, weights)):
        torch.testing.assert_close(ours, theirs)


def _mil_model(pooling: str) -> MultiSliceEfficientNet25D:
    torch.manual_seed(0)
    return create_model("efficientnet25d_multi", backbone="test_efficientnet", attention_dim=8, pooling=pooling)


@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_mil_student_pools_its_stacks_into_subject_logits_and_every_stack_gets_gradient(pooling: str) -> None:
    """Subject-level MIL: [B, S, 4K, H, W] -> [B, num_classes]; the subject loss reaches every stack and every
    parameter, and a subject's prediction pools only its own stacks."""
    model = _mil_model(pooling).train()
    x = torch.randn(3, 5, 12, 32, 32, requires_grad=True)
    logits, weights = model.forward_attention(x)
    assert logits.shape == (3, 2) and weights.shape == (3, 5)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    assert (weights > 0).all()
    if pooling == "mean":
        torch.testing.assert_close(weights, torch.full((3, 5), 0.2))
    features = model.forward_features(x)
    assert [f.shape[:2] for f in features] == [(3, 5)] * len(features)  # per-stack maps for feature KD
    _assert_features_match_info(model, features, size=32, dim=2)

    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1])).backward()
    assert (x.grad.abs().sum(dim=(2, 3, 4)) > 0).all(), "a stack got no gradient from its subject's loss"
    # the softmax over stacks cancels a bias shared by all attention scores: its gradient is 0 up to rounding
    shared_bias = "pooling.score.bias"
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    if pooling == "attention":
        assert grads.pop(shared_bias).abs().max() < 1e-6
    missing = [n for n, g in grads.items() if g is None or g.abs().sum() == 0]
    assert missing == []

    # pooling stays within a subject: with batch-norm statistics fixed (eval), subject 0's logits depend on its
    # own S stacks only
    model.eval()
    x.grad = None
    model(x)[0].sum().backward()
    per_stack = x.grad.abs().sum(dim=(2, 3, 4))  # [B, S]
    assert (per_stack[0] > 0).all() and (per_stack[1:] == 0).all()


def test_mean_pooling_is_the_plain_average_and_bad_inputs_are_refused() -> None:
    embeddings = torch.randn(2, 4, 6)
    pooled, weights = MeanPooling()(embeddings)
    torch.testing.assert_close(pooled, embeddings.mean(dim=1))
    torch.testing.assert_close(weights, torch.full((2, 4), 0.25))
    with pytest.raises(ValueError, match="pooling"):
        create_model("efficientnet25d_multi", backbone="test_efficientnet", pooling="max")
    model = _mil_model("mean").eval()
    with pytest.raises(ValueError, match=r"\[B, S, 12, H, W\].*SimpleInferer"):
        model(torch.randn(2, 12, 32, 32))  # one stack per item, as SliceStackInferer would send it


@pytest.mark.filterwarnings("ignore:.*legacy TorchScript-based ONNX export")
@pytest.mark.filterwarnings("ignore:The feature will be removed")
@pytest.mark.filterwarnings("ignore:.*jit.*deprecated")
def test_mean_pooled_mil_student_traces_and_exports_to_onnx_opset_17(tmp_path) -> None:
    """The contract test exports the registry default (attention); the mean-pooled variant must export too."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _mil_model("mean").eval()
    x = torch.randn(2, 4, 12, 32, 32)
    fresh = torch.randn(3, 4, 12, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        torch.testing.assert_close(traced(fresh), model(fresh), rtol=1e-4, atol=1e-5)
    path = tmp_path / "mil_mean.onnx"
    torch.onnx.export(
        model, (x,), str(path), input_names=["image"], output_names=["logits"], opset_version=17,
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}.get("", 0) == 17
    (onnx_logits,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image": fresh.numpy()}
    )
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(onnx_logits), model(fresh), rtol=1e-3, atol=1e-4)
