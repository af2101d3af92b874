"""2.5D explanations: per-stack maps land at the slices their stacks are centred on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose
from torch import nn

from medkd3d.data.pipelines import slice_stack_transforms, volume_transforms
from medkd3d.data.transforms import RandSliceStackd, SliceStackd, extract_slice_stacks
from medkd3d.explain.cam import grad_cam, normalize_map
from medkd3d.explain.explainer import ExplainModel, explain_volume
from medkd3d.explain.slices import place_slice_maps, slice_centres, split_slice_pipeline


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_slice_maps_are_placed_at_their_centres(axis: int) -> None:
    shape = (6, 7, 8)
    section = tuple(s for d, s in enumerate(shape) if d != axis)
    maps = torch.arange(3 * section[0] * section[1], dtype=torch.float32).reshape(3, *section) + 1
    volume, covered = place_slice_maps(maps, [1, 4, 4], axis, shape)
    assert volume.shape == shape and covered.shape == shape
    torch.testing.assert_close(volume.select(axis, 1), maps[0])
    torch.testing.assert_close(volume.select(axis, 4), (maps[1] + maps[2]) / 2)  # two stacks on one slice: mean
    others = [i for i in range(shape[axis]) if i not in (1, 4)]
    assert torch.all(volume.index_select(axis, torch.tensor(others)) == 0)  # zero, not NaN
    assert covered.select(axis, 1).all() and covered.select(axis, 4).all()
    assert not covered.index_select(axis, torch.tensor(others)).any()


def test_stack_maps_fill_the_slices_their_stack_was_cut_from() -> None:
    maps = torch.stack([torch.full((4, 5), 1.0), torch.full((4, 5), 3.0)])
    volume, covered = place_slice_maps(maps, [2, 4], axis=2, volume_shape=(4, 5, 8), num_slices=3)
    # stack 0 came from slices 1, 2, 3 and stack 1 from 3, 4, 5; slice 3 is shared
    assert volume[0, 0].tolist() == [0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 0.0, 0.0]
    assert covered[0, 0].tolist() == [False, True, True, True, True, True, False, False]
    # even K: the window reaches one slice further before the centre, as in extract_slice_stacks
    volume, _ = place_slice_maps(maps[:1], [1], axis=2, volume_shape=(4, 5, 8), num_slices=2)
    assert volume[0, 0].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_place_slice_maps_rejects_mismatched_maps() -> None:
    with pytest.raises(ValueError, match="expected"):
        place_slice_maps(torch.zeros(2, 5, 5), [0, 1], axis=2, volume_shape=(6, 6, 4))
    with pytest.raises(ValueError, match="must lie in"):
        place_slice_maps(torch.zeros(1, 6, 6), [4], axis=2, volume_shape=(6, 6, 4))
    with pytest.raises(ValueError, match="must lie in"):
        place_slice_maps(torch.zeros(1, 6, 6), [0], axis=2, volume_shape=(6, 6, 4), num_slices=3)


def test_slice_centres_are_the_slices_the_transform_took() -> None:
    volume = torch.zeros(4, 10, 10, 30)
    volume[:, 2:8, 2:8, 5:25] = torch.rand(4, 6, 6, 20) + 0.1
    out = SliceStackd("image", num_slices=3, axis=2, num_stacks=4)({"image": volume})
    centres = slice_centres(out["slice_index"], depth=30)
    torch.testing.assert_close(out["image"], extract_slice_stacks(volume, centres, 3, 2))
    assert all(5 <= c < 25 for c in centres)  # "foreground" sampling stays on the brain


def test_split_slice_pipeline() -> None:
    prefix, slicer, suffix = split_slice_pipeline(slice_stack_transforms((32, 32, 32), num_slices=3, num_stacks=4))
    assert isinstance(slicer, SliceStackd) and slicer.num_stacks == 4 and slicer.num_slices == 3
    assert not any(isinstance(t, SliceStackd) for t in prefix.transforms) and not suffix.transforms
    assert split_slice_pipeline(volume_transforms((32, 32, 32)))[1] is None
    with pytest.raises(ValueError, match="random"):
        split_slice_pipeline(Compose([RandSliceStackd("image", sampling="uniform")]))


class SliceNet(nn.Module):
    """A tiny 2.5D classifier over ``[B, 4*K, H, W]`` stacks."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(nn.Conv2d(in_channels, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_2p5d_maps_land_at_the_stack_centres_and_match_per_stack_grad_cam() -> None:
    volume = torch.zeros(4, 12, 14, 20)
    volume[:, 1:11, 1:13, 3:17] = torch.rand(4, 10, 12, 14) + 0.5
    pipeline = Compose([SliceStackd("image", num_slices=3, axis=2, num_stacks=3)])
    model = ExplainModel(SliceNet(12), pipeline, stacks_as_batch=True)
    result = explain_volume(model, volume, method="gradcam", target_class=1, layer="features")

    stacks = pipeline({"image": volume})
    centres = slice_centres(stacks["slice_index"], 20)
    assert result.slice_centres == centres and result.slice_axis == 2
    assert len(set(centres)) == 3 and min(np.diff(centres)) >= 3  # three separate windows of three slices
    windows = [c + k for c in centres for k in (-1, 0, 1)]
    assert result.coverage.any(dim=(0, 1)).nonzero().flatten().tolist() == windows
    # each window holds that stack's own Grad-CAM, normalised jointly over all stacks
    expected = normalize_map(grad_cam(model.network, stacks["image"], "features", class_idx=1)[None])[0]
    for i, c in enumerate(centres):
        for z in (c - 1, c, c + 1):
            torch.testing.assert_close(result.map[:, :, z], expected[i])
    assert result.map[:, :, [z for z in range(20) if z not in windows]].abs().max() == 0


def test_num_stacks_override_covers_more_slices() -> None:
    volume = torch.rand(4, 8, 8, 16) + 0.1
    pipeline = Compose([SliceStackd("image", num_slices=1, axis=2)])  # one stack at inference
    model = ExplainModel(SliceNet(4), pipeline)
    assert len(explain_volume(model, volume, layer="features").slice_centres) == 1
    dense = explain_volume(model, volume, layer="features", num_stacks=16)
    assert dense.slice_centres == list(range(16)) and dense.coverage.all()  # K = 1: one slice per stack
