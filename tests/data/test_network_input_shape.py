"""``network_input_shape``: the input a model gets, derived once from the preprocessing settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from medkd3d.data import discover_brats, network_input_shape, slice_stack_transforms, volume_transforms


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ((4, 32, 24, 16), 1)),  # a volume
        ({"num_slices": 3}, ((12, 32, 24), 1)),  # one axial stack: the plane of axes 0 and 1
        ({"num_slices": 3, "slice_axis": 0}, ((12, 24, 16), 1)),  # a sagittal stack
        ({"num_slices": 3, "num_stacks": 8}, ((8, 12, 32, 24), 1)),  # all stacks of a subject in one input
        ({"num_slices": 3, "num_stacks": 8, "stacks_as_batch": True}, ((12, 32, 24), 8)),  # one stack at a time
        ({"num_slices": 1, "channels": 2}, ((2, 32, 24), 1)),
    ],
)
def test_shapes_by_hand(kwargs: dict, expected: tuple) -> None:
    assert network_input_shape((32, 24, 16), **kwargs) == expected


@pytest.mark.parametrize(
    ("size", "kwargs", "match"),
    [
        ((32, 32), {}, r"spatial_size must be \(X, Y, Z\)"),
        ((32, 32, 32), {"num_slices": 3, "slice_axis": 3}, "slice_axis must be a spatial axis"),
        ((32, 32, 32), {"num_slices": 0}, "num_slices"),
        ((32, 32, 32), {"num_slices": 3, "num_stacks": 0}, "num_stacks"),
    ],
)
def test_bad_settings_are_refused(size: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        network_input_shape(size, **kwargs)


def test_the_pipelines_make_what_it_says(synthetic_brats_root: Path) -> None:
    record = discover_brats(synthetic_brats_root)["training"][0]
    size = (24, 20, 16)
    volume = volume_transforms(size)(record)["image"]
    assert (tuple(volume.shape), 1) == network_input_shape(size)
    stacks = slice_stack_transforms(size, num_slices=3, axis=1, num_stacks=2)(record)["image"]
    assert (tuple(stacks.shape), 1) == network_input_shape(size, num_slices=3, slice_axis=1, num_stacks=2)
