"""2.5D explanations: per-stack maps placed back into the volume at the slices they came from.

A 2.5D network never sees the volume, only slice stacks chosen by :class:`~medkd3d.data.transforms.SliceStackd`:
``K`` adjacent slices around each centre ``c`` (slices ``c - K//2 ... c - K//2 + K - 1``). To overlay its
explanation on the MRI, the 2D map of a stack is written into each of the ``K`` slices the stack was cut from, in
an otherwise empty ``[X, Y, Z]`` volume; where stacks overlap, their maps are averaged. Slices that no stack came
from stay **0** (never NaN, so every NIfTI viewer and every sum works) and are reported by the boolean *coverage*
volume, which the agreement metrics use to compare maps only where both exist. A ``K``-slice-thick slab also
survives the interpolation of the inverse preprocessing onto the original grid, where a one-voxel plane could be
thinned below visibility.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import Compose

from medkd3d.data.transforms import RandSliceStackd, SliceStackd

__all__ = ["place_slice_maps", "slice_centres", "split_slice_pipeline", "with_num_stacks"]


def split_slice_pipeline(preprocessing: Compose) -> tuple[Compose, SliceStackd | None, Compose]:
    """Split a preprocessing pipeline at its slice selection.

    Args:
        preprocessing: a bundle's inference ``preprocessing`` (e.g. from
            :func:`medkd3d.data.pipelines.slice_stack_transforms` or ``volume_transforms``).

    Returns:
        ``(volume_prefix, slice_transform, suffix)``: the 3D preprocessing up to the slice selection (the whole
        pipeline for 3D models), the :class:`SliceStackd` (``None`` for 3D models) and the transforms after it.

    Raises:
        ValueError: if the slice selection is random (:class:`RandSliceStackd`): an explanation must show the
            slices inference uses, so the pipeline must be the deterministic inference one.
    """
    transforms = list(preprocessing.flatten().transforms)
    for i, transform in enumerate(transforms):
        if isinstance(transform, RandSliceStackd):
            raise ValueError(
                "the preprocessing selects slices at random (RandSliceStackd); explanations need the deterministic "
                "inference pipeline: slice_stack_transforms(train=False) with a deterministic sampling"
            )
        if isinstance(transform, SliceStackd):
            return Compose(transforms[:i]), transform, Compose(transforms[i + 1 :])
    return Compose(transforms), None, Compose([])


def with_num_stacks(transform: SliceStackd, num_stacks: int | None) -> SliceStackd:
    """A copy of ``transform`` taking ``num_stacks`` stacks (``None``: one stack), all other settings unchanged."""
    return SliceStackd(
        keys=transform.keys,
        num_slices=transform.num_slices,
        axis=transform.axis,
        num_stacks=num_stacks,
        sampling=transform.sampling,
        volume_key=transform.volume_key,
        slice_index_key=transform.slice_index_key,
        allow_missing_keys=transform.allow_missing_keys,
    )


def slice_centres(slice_index: torch.Tensor | float | Sequence[float], depth: int) -> list[int]:
    """Slice numbers from the ``"slice_index"`` fractions ``(c + 0.5) / depth`` that the slice transforms emit.

    Args:
        slice_index: a fraction or a sequence of fractions in ``[0, 1]``.
        depth: number of slices of the preprocessed volume along the slicing axis.

    Returns:
        The centre slice indices.
    """
    fractions = torch.as_tensor(slice_index, dtype=torch.float64).reshape(-1)
    return [min(max(int(float(f) * depth), 0), depth - 1) for f in fractions]


def place_slice_maps(
    maps: torch.Tensor, centres: Sequence[int], axis: int, volume_shape: Sequence[int], num_slices: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Write per-stack 2D maps into a volume at the slices their stacks were cut from.

    Args:
        maps: ``[S, H, W]``, ``H, W`` being the two axes of ``volume_shape`` other than ``axis`` in their order.
        centres: the centre slice of each stack along ``axis``.
        axis: the slicing axis (0, 1 or 2) of the ``[X, Y, Z]`` volume.
        volume_shape: ``(X, Y, Z)``.
        num_slices: ``K``, slices per stack: stack ``i`` fills slices ``centres[i] - K//2`` to
            ``centres[i] - K//2 + K - 1`` (the window of :func:`~medkd3d.data.transforms.extract_slice_stacks`).

    Returns:
        ``(volume, covered)``: the ``[X, Y, Z]`` map (0 on slices no stack came from, the mean where stacks
        overlap) and the boolean ``[X, Y, Z]`` coverage.

    Raises:
        ValueError: if the number of maps and centres differ, a window leaves the volume, or the map size does not
            match the volume's cross-section.
    """
    volume_shape = tuple(int(s) for s in volume_shape)
    depth = volume_shape[axis]
    section = tuple(s for d, s in enumerate(volume_shape) if d != axis)
    if maps.ndim != 3 or maps.shape[0] != len(centres) or tuple(maps.shape[1:]) != section:
        raise ValueError(
            f"cannot place {tuple(maps.shape)} slice maps with {len(centres)} centres into a volume of shape "
            f"{volume_shape} along axis {axis}: expected [{len(centres)}, {section[0]}, {section[1]}]"
        )
    offsets = torch.arange(num_slices) - num_slices // 2
    index = (torch.as_tensor(list(centres), dtype=torch.long)[:, None] + offsets).flatten()
    if index.numel() and not (0 <= int(index.min()) and int(index.max()) < depth):
        raise ValueError(
            f"stacks of {num_slices} slices centred on {list(centres)} must lie in [0, {depth - 1}] along axis {axis}"
        )
    index = index.to(maps.device)
    total = torch.zeros((depth, *section), dtype=torch.float32, device=maps.device)
    count = torch.zeros(depth, dtype=torch.float32, device=maps.device)
    total.index_add_(0, index, maps.float().repeat_interleave(num_slices, dim=0))
    count.index_add_(0, index, torch.ones(index.numel(), device=maps.device))
    covered = count > 0
    total[covered] /= count[covered].reshape(-1, 1, 1)
    volume = total.movedim(0, axis)
    coverage = covered.reshape(-1, 1, 1).expand(depth, *section).movedim(0, axis)
    return volume, coverage.clone()
