"""Grad-CAM, Score-CAM and occlusion maps: formulas, shapes, and high values where the evidence is."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medkd3d.explain.cam import (
    LayerHooks,
    ScoreCAM,
    compute_map,
    default_target_layer,
    grad_cam,
    normalize_map,
    occlusion_map,
    score_cam,
)


class BlockFeatures(nn.Module):
    """Channel ``k`` is the half-resolution input restricted to block ``k`` of a 2 x 2 (x 2) grid."""

    def __init__(self, size: int, spatial_dims: int) -> None:
        super().__init__()
        half = size // 2
        grids = torch.meshgrid(*[torch.arange(half)] * spatial_dims, indexing="ij")
        block = sum((g >= half // 2).long() * 2**d for d, g in enumerate(grids))  # block number per position
        masks = torch.stack([block == k for k in range(2**spatial_dims)]).float()
        self.register_buffer("masks", masks)
        self.pool = nn.AvgPool2d(2) if spatial_dims == 2 else nn.AvgPool3d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x.mean(dim=1, keepdim=True)) * self.masks


class BlockModel(nn.Module):
    """A classifier whose class-1 logit depends only on the input inside one block (a CAM-style head).

    ``logit_1 = scale * mean(features[:, target]) - bias``, ``logit_0 = 0``: every method must find that block.
    """

    def __init__(self, size: int = 16, spatial_dims: int = 3, target_block: int = 5, scale: float = 40.0) -> None:
        super().__init__()
        self.features = BlockFeatures(size, spatial_dims)
        self.target_block = target_block
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).flatten(2).mean(dim=2)  # [B, K]
        logit = self.scale * pooled[:, self.target_block] - 2.0
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


class StackedBlockModel(nn.Module):
    """Multi-slice toy ``[B, S, C, H, W]``: a shared 2D block encoder per stack, logits from stack ``relevant`` only."""

    def __init__(self, size: int = 16, relevant: int = 1, target_block: int = 2) -> None:
        super().__init__()
        self.encoder = BlockModel(size, spatial_dims=2, target_block=target_block, scale=20.0)
        self.relevant = relevant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, stacks = x.shape[:2]
        logits = self.encoder(x.flatten(0, 1)).unflatten(0, (batch, stacks))
        return logits[:, self.relevant]


def block_mask(size: int, spatial_dims: int, block: int) -> torch.Tensor:
    """Full-resolution boolean mask of ``block`` (same numbering as :class:`BlockFeatures`)."""
    grids = torch.meshgrid(*[torch.arange(size)] * spatial_dims, indexing="ij")
    number = sum((g >= size // 2).long() * 2**d for d, g in enumerate(grids))
    return number == block


def positive_input(shape: tuple[int, ...]) -> torch.Tensor:
    return 0.5 + 0.5 * torch.rand(shape)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "occlusion"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_map_mass_concentrates_where_the_logit_looks(method: str, spatial_dims: int) -> None:
    size, target = 16, 3
    model = BlockModel(size, spatial_dims, target_block=target)
    x = positive_input((2, 2, *[size] * spatial_dims))
    raw = compute_map(method, model, x, class_idx=1, layer="features", batch_size=3, mask_size=8, overlap=0.0)
    assert raw.shape == (2, *[size] * spatial_dims)  # the input's spatial shape, one map per sample
    maps = normalize_map(raw)
    inside = block_mask(size, spatial_dims, target)
    for sample in maps:
        assert sample.max() == 1.0 and sample.min() == 0.0
        # chance level is 1 / 2**spatial_dims; linear upsampling leaks a little across the block border (and, for
        # Score-CAM, makes masks of neighbouring blocks reveal a rim of the target block)
        assert sample[inside].sum() / sample.sum() > 0.8
        assert inside.flatten()[sample.argmax()]  # the most important voxel lies in the block


def test_normalize_map_keeps_high_high_and_clips_negative_evidence() -> None:
    raw = torch.tensor([[-3.0, 0.0, 1.0, 3.0]])
    assert torch.equal(normalize_map(raw), torch.tensor([[0.0, 0.0, 1 / 3, 1.0]]))
    # statistics over the mask only; outside the mask is 0
    masked = normalize_map(torch.tensor([[9.0, 1.0, 2.0]]), torch.tensor([[False, True, True]]))
    assert torch.equal(masked, torch.tensor([[0.0, 0.0, 1.0]]))
    assert torch.equal(normalize_map(torch.full((1, 3), 2.0)), torch.zeros(1, 3))  # constant: no information


def reference_score_cam(model: nn.Module, x: torch.Tensor, layer: nn.Module, target: int) -> torch.Tensor:
    """Score-CAM of one sample written plainly: one forward pass per channel."""
    captured = {}
    handle = layer.register_forward_hook(lambda module, args, out: captured.update(a=out))
    with torch.no_grad():
        model(x)
        handle.remove()
        activations = captured["a"]
        baseline = model(torch.zeros_like(x)).softmax(dim=1)[0, target]
        saliency = torch.zeros(x.shape[2:])
        for k in range(activations.shape[1]):
            up = F.interpolate(activations[:, k : k + 1], size=x.shape[2:], mode="trilinear", align_corners=False)
            if up.max() > up.min():
                mask = (up - up.min()) / (up.max() - up.min())
            else:
                mask = torch.zeros_like(up)
            probability = model(x * mask).softmax(dim=1)[0, target]
            saliency += (probability - baseline) * up[0, 0]
    return torch.relu(saliency)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv3d(4, 5, 3, stride=2, padding=1),  # the explained layer: 5 channels at half resolution
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    ).eval()


@pytest.mark.parametrize("batch_size", [2, 64])
def test_batched_score_cam_equals_one_forward_per_channel(batch_size: int) -> None:
    model = tiny_cnn()
    x = torch.randn(2, 2, 8, 10, 6)
    targets = [2, 0]
    batched = score_cam(model, x, "3", class_idx=targets, batch_size=batch_size)
    expected = torch.stack([reference_score_cam(model, x[i : i + 1], model[3], t) for i, t in enumerate(targets)])
    assert expected.abs().max() > 0  # the comparison is not between two zero maps
    torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-7)


def test_score_cam_runs_the_masks_in_batches() -> None:
    model = tiny_cnn()
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    score_cam(model, torch.randn(1, 2, 8, 8, 8), "3", class_idx=0, batch_size=2)
    # original input, baseline, then 5 channel masks in chunks of 2: not one forward per channel
    assert calls == [1, 1, 2, 2, 1]


def test_score_cam_class_api_normalises_high_to_one() -> None:
    model = BlockModel(16, 3, target_block=6)
    maps = ScoreCAM(model, "features", batch_size=4)(positive_input((1, 1, 16, 16, 16)), class_idx=1)
    assert maps.shape == (1, 1, 16, 16, 16)
    assert maps.max() == 1.0 and block_mask(16, 3, 6).flatten()[maps.argmax()]


def test_grad_cam_scores_each_sample_with_its_own_class() -> None:
    model = tiny_cnn()
    x = torch.randn(2, 2, 8, 8, 8)
    together = grad_cam(model, x, "2", class_idx=[1, 2])
    alone = torch.cat([grad_cam(model, x[:1], "2", class_idx=1), grad_cam(model, x[1:], "2", class_idx=2)])
    torch.testing.assert_close(together, alone)
    assert not torch.allclose(together[1], grad_cam(model, x[1:], "2", class_idx=1)[0])


def test_grad_cam_equals_the_formula_on_a_frozen_network() -> None:
    model = tiny_cnn().requires_grad_(False)  # a loaded teacher: no parameter needs gradients
    x = torch.randn(1, 2, 8, 8, 8)
    activation = model[:4](x).requires_grad_(True)
    model[4:](activation)[0, 1].backward()
    weights = activation.grad.mean(dim=(2, 3, 4), keepdim=True)
    expected = F.interpolate(torch.relu((weights * activation).sum(1, keepdim=True)), size=(8, 8, 8), mode="trilinear")
    torch.testing.assert_close(grad_cam(model, x, "3", class_idx=1), expected[:, 0].detach())


def test_hooks_are_removed_after_each_map() -> None:
    model = tiny_cnn()
    layer = model[3]
    grad_cam(model, torch.randn(1, 2, 8, 8, 8), "3", class_idx=0)
    score_cam(model, torch.randn(1, 2, 8, 8, 8), "3", class_idx=0)
    assert not layer._forward_hooks and not layer._backward_hooks


def test_unknown_layer_names_close_matches() -> None:
    with pytest.raises(ValueError, match=r"no layer 'feature'.*'features'"):
        LayerHooks(BlockModel(), "feature")


def test_stacked_input_gives_one_map_per_stack() -> None:
    model = StackedBlockModel(size=16, relevant=1, target_block=2)
    x = positive_input((1, 3, 2, 16, 16))
    inside = block_mask(16, 2, 2)
    for method in ("gradcam", "occlusion"):
        raw = compute_map(method, model, x, class_idx=1, layer="encoder.features", stacked=True, mask_size=8, overlap=0)
        assert raw.shape == (1, 3, 16, 16)
        assert raw[0, 1].max() > 0 and raw[0, 1][inside].sum() / raw[0, 1].sum() > 0.9
        # the other stacks do not reach the logit: no gradient, and occluding them changes nothing
        assert raw[0, [0, 2]].abs().max() < 1e-6
    scorecam = compute_map("scorecam", model, x, class_idx=1, layer="encoder.features", stacked=True, batch_size=3)
    assert scorecam.shape == (1, 3, 16, 16) and scorecam[0, 1][inside].sum() / scorecam[0, 1].sum() > 0.9


def test_occlusion_map_is_the_probability_drop() -> None:
    model = BlockModel(8, 2, target_block=0)
    x = positive_input((1, 1, 8, 8))
    drop = occlusion_map(model, x, class_idx=1, mask_size=4, overlap=0.0, mode=0.0)
    occluded = x.clone()
    occluded[..., :4, :4] = 0.0  # the window over block 0 replaced by 0
    with torch.no_grad():
        expected = model(x).softmax(1)[0, 1] - model(occluded).softmax(1)[0, 1]
    torch.testing.assert_close(drop[0, :4, :4], expected.expand(4, 4))
    assert drop[0, 4:, 4:].abs().max() < 1e-6


def test_default_layer_is_the_deepest_map_that_still_localises() -> None:
    from medkd3d.networks import create_model

    model = create_model("efficientnet3d_b0", width_multiplier=0.25)
    x = torch.randn(1, 4, 32, 32, 32)
    # stages at strides 2..32 give 16, 8, 4, 2, 1 voxels per axis: the stride-8 stage is the last with >= 4
    assert default_target_layer(model, x) == "_blocks.2"
    assert default_target_layer(model, x, min_size=8) == "_blocks.1"
    with pytest.raises(ValueError, match="--layer"):
        default_target_layer(model, x, min_size=64)
