"""Multi-Scale Geometric Feature Fusion: geometry, cross-scale attention, the four fusion modes and the gates."""

from __future__ import annotations

import pytest
import torch

from medkd3d.networks import create_model, get_model_entry
from medkd3d.networks.msgff import FUSION_MODES, MultiScaleGeometricFeatureFusion, token_centres

CHANNELS = (4, 8, 6)
SIZES = ((8, 8, 6), (4, 4, 3), (2, 2, 2))
BATCH = 3


def make_msgff(fusion: str = "gated", num_layers: int = 1, **kwargs) -> MultiScaleGeometricFeatureFusion:
    torch.manual_seed(0)
    return MultiScaleGeometricFeatureFusion(
        CHANNELS, SIZES, dim=16, fusion=fusion, num_heads=2, num_layers=num_layers, max_tokens_per_axis=4, **kwargs
    ).eval()


def make_features(seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, c, *size, generator=generator) for c, size in zip(CHANNELS, SIZES)]


def test_token_centres_are_normalised_pooled_voxel_centres() -> None:
    # 4 voxels pooled by 2: tokens cover [0, 2) and [2, 4) -> centres 1/4 and 3/4 of the axis.
    torch.testing.assert_close(token_centres((4,), (2,)), torch.tensor([[0.25], [0.75]]))
    # 5 voxels pooled by 2 (floor mode): the 5th voxel is dropped, centres stay where the pooled voxels are.
    torch.testing.assert_close(token_centres((5,), (2,)), torch.tensor([[0.2], [0.6]]))
    # Row-major order, like feature.flatten(2): the last axis varies fastest.
    centres = token_centres((2, 2, 2), (1, 1, 1))
    torch.testing.assert_close(centres[:2], torch.tensor([[0.25, 0.25, 0.25], [0.25, 0.25, 0.75]]))
    assert centres.shape == (8, 3)


def test_large_maps_are_pooled_to_at_most_max_tokens_per_axis() -> None:
    msgff = make_msgff()
    # (8, 8, 6) pooled by (2, 2, 2) -> 4*4*3 tokens; (4, 4, 3) and (2, 2, 2) keep every voxel.
    assert msgff.pool_kernels == [(2, 2, 2), (1, 1, 1), (1, 1, 1)]
    assert msgff.token_counts == [48, 48, 8]


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_each_fusion_mode_follows_its_formula(fusion: str) -> None:
    msgff = make_msgff(fusion)
    features = make_features()
    with torch.no_grad():
        fused, gates = msgff(features, return_gates=True)
        descriptors = msgff.encode(features)
    assert descriptors.shape == (BATCH, len(CHANNELS), 16)
    assert fused.shape == (BATCH, msgff.out_channels)
    if fusion == "concat":
        assert msgff.out_channels == len(CHANNELS) * 16 and gates is None
        torch.testing.assert_close(fused, descriptors.flatten(1))
    elif fusion == "sum":
        assert gates is None
        torch.testing.assert_close(fused, descriptors.sum(dim=1))
    else:
        assert gates.shape == (BATCH, len(CHANNELS))
        assert (gates >= 0).all()
        torch.testing.assert_close(gates.sum(dim=1), torch.ones(BATCH))
        torch.testing.assert_close(fused, (gates.unsqueeze(-1) * descriptors).sum(dim=1))
        torch.testing.assert_close(msgff.last_gates, gates)
        # Input-conditioned: different inputs get different weights.
        assert not torch.allclose(gates[0], gates[1])


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_masking_a_scale_changes_the_output(fusion: str) -> None:
    msgff = make_msgff(fusion)
    features = make_features()
    with torch.no_grad():
        reference, gates = msgff(features, return_gates=True)
        for scale in range(len(features)):
            masked = [torch.zeros_like(f) if i == scale else f for i, f in enumerate(features)]
            output, masked_gates = msgff(masked, return_gates=True)
            assert not torch.allclose(output, reference, atol=1e-4), f"zeroing scale {scale} had no effect"
            if gates is not None:
                assert not torch.allclose(masked_gates, gates, atol=1e-5)


def test_cross_scale_attention_relates_scales() -> None:
    features = make_features()
    changed = [features[0] + 1.0, *features[1:]]
    for num_layers, related in ((1, True), (0, False)):
        msgff = make_msgff("concat", num_layers=num_layers)
        with torch.no_grad():
            before, after = msgff.encode(features), msgff.encode(changed)
        # Scale 0 changed; the descriptors of scales 1 and 2 move only if attention mixes scales.
        assert not torch.allclose(before[:, 0], after[:, 0])
        others_unchanged = torch.allclose(before[:, 1:], after[:, 1:], atol=1e-6)
        assert others_unchanged == (not related), f"num_layers={num_layers}"


def test_geometry_makes_fusion_sensitive_to_positions() -> None:
    # Without position embeddings, attention + per-scale averaging would be invariant to where a pattern sits.
    msgff = make_msgff("gated")
    features = make_features()
    flipped = [features[0].flip(2), *features[1:]]
    with torch.no_grad():
        assert not torch.allclose(msgff(features), msgff(flipped), atol=1e-4)


def test_works_in_two_dimensions() -> None:
    msgff = MultiScaleGeometricFeatureFusion((3, 5), ((16, 12), (4, 3)), dim=8, num_heads=2, max_tokens_per_axis=4)
    fused, gates = msgff([torch.randn(2, 3, 16, 12), torch.randn(2, 5, 4, 3)], return_gates=True)
    assert fused.shape == (2, 8) and gates.shape == (2, 2)
    assert msgff.token_counts == [4 * 4, 4 * 3]  # (16, 12) pooled by (4, 3)


def test_bad_arguments_and_inputs_are_explained() -> None:
    with pytest.raises(ValueError, match="fusion='mean' is not one of"):
        MultiScaleGeometricFeatureFusion(CHANNELS, SIZES, fusion="mean")
    with pytest.raises(ValueError, match="3 in_channels and 2 feature_sizes"):
        MultiScaleGeometricFeatureFusion(CHANNELS, SIZES[:2])
    msgff = make_msgff()
    features = make_features()
    with pytest.raises(ValueError, match=r"spatial sizes .* but the block was built for"):
        msgff([features[0][..., :4], *features[1:]])


@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_hybrid_teacher_with_each_fusion_mode(fusion: str) -> None:
    entry = get_model_entry("vggvit3d")
    model = create_model("vggvit3d", **{**entry.tiny_kwargs, "fusion": fusion}).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, *entry.tiny_input_shape))
    assert logits.shape == (2, 2)
    if fusion in ("attention", "gated"):
        # 3 VGG stages + the ViT token map.
        assert model.last_gates.shape == (2, 4)
        torch.testing.assert_close(model.last_gates.sum(dim=1), torch.ones(2))
    else:
        assert model.last_gates is None


@pytest.mark.filterwarnings("ignore:.*jit.*deprecated")
def test_tracing_leaves_the_recorded_gates_alone() -> None:
    msgff = make_msgff("gated")
    features = make_features()
    with torch.no_grad():
        msgff(features)
        recorded = msgff.last_gates.clone()
        traced = torch.jit.trace(msgff, (make_features(seed=5),), check_trace=False)
        torch.testing.assert_close(msgff.last_gates, recorded)
        torch.testing.assert_close(traced(features), msgff(features))


@pytest.mark.filterwarnings("ignore:.*jit.*deprecated")
@pytest.mark.parametrize("fusion", FUSION_MODES)
def test_every_fusion_mode_scripts_and_keeps_its_size_check(fusion: str) -> None:
    """``torch.jit.script`` compiles each mode (only its own scorer module exists) and gives the eager result."""
    msgff = make_msgff(fusion)
    scripted = torch.jit.script(msgff)
    features = make_features()
    with torch.no_grad():
        fused, gates = scripted(features, return_gates=True)
        expected, expected_gates = msgff(features, return_gates=True)
        torch.testing.assert_close(fused, expected)
        torch.testing.assert_close(scripted(features), expected)
    assert (gates is None) == (expected_gates is None)
    if gates is not None:
        torch.testing.assert_close(gates, expected_gates)
    with pytest.raises(Exception, match="but the block was built for"):  # TorchScript re-raises as torch.jit.Error
        scripted([f[..., :1] for f in features])
