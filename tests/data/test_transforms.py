"""Slice-stack dictionary transforms on hand-built volumes whose voxel values encode (channel, slice)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medkd3d.data.transforms import (
    DropNoned,
    RandSliceStackd,
    SliceStackd,
    evenly_spaced,
    extract_slice_stacks,
    foreground_area,
    stratified_random,
    valid_centre_range,
)


def coded_volume(shape=(6, 7, 20), brain=(5, 14)) -> torch.Tensor:
    """``[4, X, Y, Z]`` volume with value ``100*c + z + 1`` inside slices ``brain`` along Z and zero elsewhere."""
    channels = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1)
    depth = torch.arange(shape[2], dtype=torch.float32).view(1, 1, 1, -1)
    volume = (100 * channels + depth + 1).expand(4, *shape).clone()
    volume[..., : brain[0]] = 0
    volume[..., brain[1] + 1 :] = 0
    return volume


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_extract_slice_stacks_is_modality_major(axis: int) -> None:
    volume = torch.randn(4, 8, 9, 10)
    stacks = extract_slice_stacks(volume, [3, 5], num_slices=3, axis=axis)
    plane = [s for d, s in enumerate((8, 9, 10)) if d != axis]
    assert stacks.shape == (2, 12, *plane)
    for s, centre in enumerate([3, 5]):
        for m in range(4):
            for k in range(3):
                expected = volume[m].select(axis, centre - 1 + k)
                torch.testing.assert_close(stacks[s, m * 3 + k], expected, rtol=0, atol=0)


def test_valid_centre_range_keeps_the_window_inside() -> None:
    assert valid_centre_range(10, 3) == (1, 8)
    assert valid_centre_range(10, 4) == (2, 8)  # window c-2..c+1
    assert valid_centre_range(5, 1) == (0, 4)
    with pytest.raises(ValueError, match="only 2"):
        valid_centre_range(2, 3)


def test_foreground_area_counts_voxels_nonzero_in_any_channel() -> None:
    volume = torch.zeros(2, 3, 3, 4)
    volume[0, 0, 0, 1] = 1.0
    volume[1, 1, 1, 1] = -2.0
    volume[1, 0, 0, 3] = 5.0
    assert foreground_area(volume, axis=2).tolist() == [0, 2, 0, 1]


def test_slice_stackd_foreground_centre_and_channel_values() -> None:
    volume = coded_volume()  # brain in slices 5..14 -> middle slice 10
    out = SliceStackd("image", num_slices=3, sampling="foreground")({"image": volume, "subject": "s1"})
    image = out["image"]
    assert image.shape == (12, 6, 7)
    # channel m*K + k holds modality m of slice 9 + k (values 100*m + z + 1)
    expected = torch.tensor([100 * m + (9 + k) + 1 for m in range(4) for k in range(3)], dtype=torch.float32)
    torch.testing.assert_close(image[:, 0, 0], expected)
    assert out["slice_index"].dtype == torch.float32 and out["slice_index"].ndim == 0
    assert out["slice_index"].item() == pytest.approx((10 + 0.5) / 20)  # slice centre over the extent
    assert out["subject"] == "s1" and "volume" not in out


def test_slice_stackd_multi_stack_is_evenly_spaced_over_the_brain() -> None:
    out = SliceStackd("image", num_slices=1, num_stacks=5, sampling="foreground")({"image": coded_volume()})
    assert out["image"].shape == (5, 4, 6, 7)
    centres = out["image"][:, 0, 0, 0] - 1  # channel 0 holds z + 1
    assert centres.tolist() == [6, 8, 10, 12, 14]  # middles of 5 bins of width 2 over slices 5..14
    torch.testing.assert_close(out["slice_index"], (centres + 0.5) / 20)


def test_slice_stackd_even_ignores_the_foreground_and_largest_area_finds_the_widest_slice() -> None:
    volume = coded_volume()
    even = SliceStackd("image", num_slices=1, num_stacks=2, sampling="even")({"image": volume})
    assert (even["slice_index"] * 19).round().tolist() == [5, 15]  # middles of bins 0..9 and 10..19
    volume[:, :3, :, 5:14] = 0  # every brain slice but 14 loses half its area
    largest = SliceStackd("image", num_slices=1, sampling="largest_area")({"image": volume})
    assert (largest["slice_index"] * 19).round().item() == 14


def test_slice_stackd_keeps_volume_and_metadata() -> None:
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    volume = MetaTensor(coded_volume(), affine=affine, meta={"filename_or_obj": "t1.nii.gz"})
    out = SliceStackd("image", num_slices=3, volume_key="volume")({"image": volume})
    assert out["volume"] is volume
    assert isinstance(out["image"], MetaTensor)
    assert out["image"].meta["filename_or_obj"] == "t1.nii.gz"
    torch.testing.assert_close(out["image"].affine, affine.double())


def test_window_is_clamped_inside_the_volume() -> None:
    volume = coded_volume(shape=(4, 4, 10), brain=(0, 0))  # brain only in the first slice
    out = SliceStackd("image", num_slices=3, sampling="foreground")({"image": volume})
    assert out["slice_index"].item() == pytest.approx(1.5 / 10)  # centre 0 moved to 1 so slices 0..2 exist


def test_slice_stackd_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="sampling="):
        SliceStackd("image", sampling="tumour")
    with pytest.raises(ValueError, match="one slice"):
        SliceStackd("image", num_stacks=3, sampling="largest_area")
    with pytest.raises(ValueError, match=r"'sub-7'.*zero everywhere"):
        SliceStackd("image")({"image": torch.zeros(4, 5, 5, 5), "subject": "sub-7"})
    with pytest.raises(ValueError, match=r"\[C, X, Y, Z\]"):
        SliceStackd("image")({"image": torch.ones(4, 5, 5)})


def tumour_record(tumour_slices=(11, 12)) -> dict:
    seg = torch.zeros(1, 6, 7, 20, dtype=torch.uint8)
    seg[0, 2:4, 2:4, list(tumour_slices)] = 4
    return {"image": coded_volume(), "seg": seg, "subject": "s1"}


def test_rand_slice_stackd_samples_tumour_slices_only() -> None:
    transform = RandSliceStackd("image", num_slices=1, sampling="tumour")
    transform.set_random_state(0)
    centres = {round(transform(tumour_record())["slice_index"].item() * 19) for _ in range(40)}
    assert centres == {11, 12}


def test_rand_slice_stackd_falls_back_to_brain_without_seg_or_tumour() -> None:
    transform = RandSliceStackd("image", num_slices=1, sampling="tumour").set_random_state(0)
    no_seg = {k: v for k, v in tumour_record().items() if k != "seg"}
    empty = tumour_record(tumour_slices=())
    centres = {int(transform(r)["slice_index"].item() * 20) for r in [no_seg, empty] * 30}
    assert centres <= set(range(5, 15)) and len(centres) > 3


def test_rand_slice_stackd_multi_stack_is_sorted_and_stratified() -> None:
    transform = RandSliceStackd("image", num_slices=3, num_stacks=2, sampling="random_foreground")
    transform.set_random_state(1)
    for _ in range(20):
        out = transform({"image": coded_volume()})
        centres = (out["slice_index"] * 19).round()
        assert out["image"].shape == (2, 12, 6, 7)
        assert 5 <= centres[0] <= 9 < 10 <= centres[1] <= 14  # one centre per half of the brain slices
    few = RandSliceStackd("image", num_slices=1, num_stacks=4, sampling="tumour").set_random_state(0)
    centres = (few(tumour_record())["slice_index"] * 19).round().tolist()
    assert centres == sorted(centres) and set(centres) <= {11, 12}


@pytest.mark.parametrize(("first", "last", "count"), [(5, 14, 5), (3, 40, 8), (0, 6, 8), (7, 7, 3)])
def test_stratified_random_draws_one_slice_per_bin_around_the_evaluation_midpoints(
    first: int, last: int, count: int
) -> None:
    """Training centres are jittered evaluation centres: bin i of the extent holds draw i and midpoint i."""
    rng = np.random.RandomState(0)
    draws = np.array([stratified_random(first, last, count, rng) for _ in range(2000)])  # [N, count]
    midpoints = np.array(evenly_spaced(first, last, count))
    width = (last - first + 1) / count
    lower = np.floor(first + np.arange(count) * width)
    upper = np.ceil(first + (np.arange(count) + 1) * width) - 1
    assert draws.min() >= first and draws.max() <= last
    assert (draws >= lower).all() and (draws <= upper).all()
    assert (np.diff(draws, axis=1) >= 0).all()  # anatomical order, as the evaluation stacks
    assert ((midpoints >= lower) & (midpoints <= upper)).all()
    if width >= 1:  # a draw's expected position (slice centre + 0.5 on the extent) is its bin's midpoint
        expected = first + (np.arange(count) + 0.5) * width
        np.testing.assert_allclose(draws.mean(0) + 0.5, expected, atol=0.1 * width + 0.05)
    if width >= 2:
        assert all(len(set(draws[:, i])) > 1 for i in range(count))  # jittered, not fixed


def test_training_and_evaluation_stacks_share_the_brain_bins_without_a_segmentation() -> None:
    """The MIL student's training stacks (random) and evaluation stacks (fixed) come from the same S bins of
    the brain extent, need no segmentation, and always lie inside the brain."""
    volume = coded_volume(shape=(6, 7, 40), brain=(9, 32))  # 24 brain slices -> 4 bins of 6
    train = RandSliceStackd("image", num_slices=3, num_stacks=4, sampling="random_foreground").set_random_state(0)
    evaluate = SliceStackd("image", num_slices=3, num_stacks=4, sampling="foreground")
    fixed = (evaluate({"image": volume})["slice_index"] * 40 - 0.5).round()
    assert fixed.tolist() == [12, 18, 24, 30]
    seen = []
    for _ in range(200):
        out = train({"image": volume, "subject": "no-seg"})  # no "seg" key at all
        centres = (out["slice_index"] * 40 - 0.5).round()
        assert out["image"].shape == (4, 12, 6, 7) and (out["image"][:, 1::3] != 0).all()  # centre slices: brain
        assert ((centres - fixed).abs() <= 3).all()  # inside the evaluation stack's bin of 6 slices
        seen.append(centres)
    seen = torch.stack(seen)
    assert seen.min() == 9 and seen.max() == 32  # the whole brain extent is reachable, nothing outside it
    # on average a random stack sits at its bin's midpoint (slice c covers [c, c + 1)): the evaluation stack
    torch.testing.assert_close(seen.mean(0) + 0.5, fixed, atol=0.4, rtol=0)


def test_rand_slice_stackd_is_deterministic_under_a_seed() -> None:
    def draws(seed: int) -> list[float]:
        transform = RandSliceStackd("image", num_slices=1, sampling="uniform").set_random_state(seed)
        return [transform({"image": coded_volume()})["slice_index"].item() for _ in range(10)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_rand_slice_stackd_rejects_an_unloaded_segmentation() -> None:
    record = {"image": coded_volume(), "seg": "s1_seg.nii.gz", "subject": "s1"}
    with pytest.raises(ValueError, match=r"'s1'.*file path s1_seg\.nii\.gz.*LoadImaged"):
        RandSliceStackd("image", sampling="tumour")(record)


def test_drop_noned_removes_only_none_fields() -> None:
    record = {"image": ["a"], "seg": None, "label": 0, "class_name": None, "subject": "s"}
    assert DropNoned()(record) == {"image": ["a"], "label": 0, "subject": "s"}
    assert np.array_equal(DropNoned(keys="label")({"label": np.int64(1)})["label"], 1)
