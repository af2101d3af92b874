"""3D VGG, 3D ViT and the VGG-ViT hybrid teacher: configurations, sizes, geometry and the seed's baseline."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from torch import nn

from medkd3d.networks import create_model
from medkd3d.networks.vgg3d import VGG3D
from medkd3d.networks.vggvit3d import VGGViT3D
from medkd3d.networks.vit3d import Attention, ViT3D

TINY_VIT = {"img_size": 16, "patch_size": 8, "hidden_size": 24, "num_layers": 2, "num_heads": 2}
TINY_HYBRID = {
    "img_size": 32,
    "vgg_depth": 11,
    "width_multiplier": 1 / 16,
    "patch_size": 8,
    "vit_hidden_size": 24,
    "vit_layers": 1,
    "vit_heads": 2,
    "msgff_dim": 16,
    "msgff_heads": 2,
    "max_tokens_per_axis": 2,
}


@pytest.mark.parametrize(("name", "convs"), [("vgg11_3d", 8), ("vgg13_3d", 10), ("vgg16_3d", 13), ("vgg19_3d", 16)])
def test_vgg_configurations_have_the_papers_convolution_counts(name: str, convs: int) -> None:
    model = create_model(name, width_multiplier=1 / 16)
    assert sum(isinstance(m, nn.Conv3d) for m in model.modules()) == convs
    assert sum(isinstance(m, nn.BatchNorm3d) for m in model.modules()) == convs


def test_vgg_parameter_count_matches_hand_computation() -> None:
    model = VGG3D(depth=11, in_channels=4, num_classes=2, width_multiplier=1 / 16, head_hidden_dim=None)
    # VGG11 widths / 16: 4 | 8 | 16 16 | 32 32 | 32 32; 3x3x3 convolutions without bias, then batch norm.
    pairs = [(4, 4), (4, 8), (8, 16), (16, 16), (16, 32), (32, 32), (32, 32), (32, 32)]
    expected = sum(cin * cout * 27 + 2 * cout for cin, cout in pairs) + (32 * 2 + 2)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_vgg_default_width_and_strides() -> None:
    model = VGG3D()
    assert [info["num_chs"] for info in model.feature_info] == [16, 32, 64, 128, 128]
    assert [info["reduction"] for info in model.feature_info] == [2, 4, 8, 16, 32]


def test_vgg_accepts_any_input_size() -> None:
    model = VGG3D(depth=11, width_multiplier=1 / 16, head_hidden_dim=8).eval()
    x = torch.randn(1, 4, 20, 24, 31)  # odd sizes, like the 155 slices of a raw BraTS volume
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
    for feature, info in zip(features, model.feature_info):
        assert tuple(feature.shape[2:]) == tuple(math.ceil(n / info["reduction"]) for n in (20, 24, 31))
    assert logits.shape == (1, 2)


def test_vgg_without_classes_returns_pooled_features() -> None:
    model = VGG3D(depth=11, num_classes=0, width_multiplier=1 / 16).eval()
    x = torch.randn(2, 4, 16, 16, 16)
    with torch.no_grad():
        pooled = model(x)
        last = model.forward_features(x)[-1]
    torch.testing.assert_close(pooled, last.mean(dim=(2, 3, 4)))


def test_vgg_rejects_unknown_depth() -> None:
    with pytest.raises(ValueError, match="depth=12 is not a VGG configuration"):
        VGG3D(depth=12)


def test_vit_returns_raw_unbounded_logits() -> None:
    # MONAI's ViT ends in Tanh by default; a classifier must return raw logits.
    torch.manual_seed(0)
    model = ViT3D(**TINY_VIT).eval()
    nn.init.constant_(model.head.bias, 5.0)
    with torch.no_grad():
        assert (model(torch.randn(2, 4, 16, 16, 16)) > 1.0).all()


def test_attention_is_softmax_of_scaled_dot_products() -> None:
    torch.manual_seed(0)
    attention = Attention(dim=8, num_heads=2, dropout_rate=0.5).eval()
    x = torch.randn(3, 5, 8)
    q, k, v = attention.qkv(x).reshape(3, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)  # [B, heads, N, head_dim] each
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(4), dim=-1)
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(3, 5, 8))
    with torch.no_grad():
        torch.testing.assert_close(attention(x), expected)
        assert torch.equal(attention(x), attention(x))  # no dropout in evaluation
        attention.train()
        attention.proj_drop = nn.Identity()  # what is left random is the dropout on the attention weights
        assert not torch.equal(attention(x), attention(x))


def test_vit_token_map_keeps_the_patch_layout() -> None:
    model = ViT3D(**TINY_VIT).eval()
    outputs = {}
    model.blocks[-1].register_forward_hook(lambda module, args, out: outputs.setdefault("tokens", out))
    with torch.no_grad():
        token_map, cls_token = model.forward_features(torch.randn(2, 4, 16, 16, 16))
    tokens = outputs["tokens"]  # [B, 1 + 2*2*2, D], patches in row-major (x, y, z) order after the class token
    assert token_map.shape == (2, 24, 2, 2, 2)
    for i, j, k in [(0, 0, 0), (0, 0, 1), (1, 0, 1), (1, 1, 0)]:
        torch.testing.assert_close(token_map[:, :, i, j, k], tokens[:, 1 + i * 4 + j * 2 + k])
    torch.testing.assert_close(cls_token.flatten(1), tokens[:, 0])


@pytest.mark.filterwarnings("ignore:torch.meshgrid")  # inside MONAI's sin-cos embedding
def test_vit_position_embedding_makes_it_see_where_patches_are() -> None:
    # Rolling the volume by one whole patch only permutes the patch tokens: a ViT without position embedding
    # cannot tell (its class token is permutation invariant); a learnable or sin-cos embedding can.
    x = torch.randn(1, 4, 16, 16, 16)
    rolled = x.roll(8, dims=2)
    for pos_embed_type, sensitive in (("none", False), ("learnable", True), ("sincos", True)):
        torch.manual_seed(0)
        model = ViT3D(**TINY_VIT, pos_embed_type=pos_embed_type).eval()
        with torch.no_grad():
            same = torch.allclose(model(x), model(rolled), atol=1e-5)
        assert same == (not sensitive), pos_embed_type


@pytest.mark.filterwarnings("ignore:torch.meshgrid")
def test_vit_sincos_embedding_is_fixed() -> None:
    model = ViT3D(**TINY_VIT, pos_embed_type="sincos")
    embedding = model.patch_embedding.position_embeddings
    assert not embedding.requires_grad
    torch.testing.assert_close(embedding.data, build_sincos_position_embedding([2, 2, 2], 24, 3).data)


def test_vit_explains_size_problems() -> None:
    with pytest.raises(ValueError, match="patch_size=6 must divide img_size"):
        ViT3D(**{**TINY_VIT, "patch_size": 6})
    model = ViT3D(**TINY_VIT)
    with pytest.raises(ValueError, match=r"spatial size \[24, 16, 16\] does not match img_size=\(16, 16, 16\)"):
        model(torch.randn(1, 4, 24, 16, 16))


def test_hybrid_baseline_is_the_seeds_plain_concatenation() -> None:
    torch.manual_seed(0)
    model = VGGViT3D(**TINY_HYBRID, msgff=False).eval()
    assert model.msgff is None and model.last_gates is None
    x = torch.randn(2, 4, 32, 32, 32)
    with torch.no_grad():
        logits = model(x)
        pooled_vgg = model.vgg.forward_features(x)[-1].mean(dim=(2, 3, 4))
        class_token = model.vit.norm(model.vit.forward_features(x)[-1].flatten(1))
        expected = model.head(torch.cat((pooled_vgg, class_token), dim=1))
    torch.testing.assert_close(logits, expected)


def test_hybrid_features_expose_vgg_stages_and_vit_context() -> None:
    model = VGGViT3D(**TINY_HYBRID)
    reductions = [info["reduction"] for info in model.feature_info]
    modules = [info["module"] for info in model.feature_info]
    assert reductions == [2, 4, 8, 16, 32, 8, 32]
    assert modules[:5] == [f"vgg.stages.{i}" for i in range(5)]
    assert modules[5:] == ["vit.blocks.0", "vit.blocks.0"]
    # MSGFF fuses VGG stages 2, 3, 4 and the ViT token map, at their sizes for a 32^3 input.
    assert model.msgff.feature_sizes == [(4, 4, 4), (2, 2, 2), (1, 1, 1), (4, 4, 4)]


def test_hybrid_masking_the_local_branch_changes_the_prediction() -> None:
    model = VGGViT3D(**TINY_HYBRID).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(2, 4, 32, 32, 32))
        reference = model.forward_head(features)
        for index in (2, 3, 4, 5):  # the scales MSGFF fuses
            masked = [torch.zeros_like(f) if i == index else f for i, f in enumerate(features)]
            assert not torch.allclose(model.forward_head(masked), reference, atol=1e-5), index


@pytest.mark.filterwarnings("ignore:.*jit.*deprecated")
@pytest.mark.parametrize("msgff", [True, False])
def test_hybrid_scripts_with_and_without_msgff(msgff: bool) -> None:
    """Both hybrid variants compile with ``torch.jit.script`` (the model zoo's export check) and match eager."""
    torch.manual_seed(0)
    model = VGGViT3D(**TINY_HYBRID, msgff=msgff).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 4, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x), rtol=1e-4, atol=1e-5)
