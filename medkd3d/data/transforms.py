"""MONAI dictionary transforms that turn a preprocessed multi-modal volume into 2.5D slice stacks.

A *slice stack* is ``K`` adjacent slices of a ``[C, X, Y, Z]`` volume, taken along one spatial axis and laid
out modality-major as the ``C*K`` channels of a 2D image (channel ``m*K + k`` is modality ``m``, slice ``k``).
The multi-slice variant returns ``S`` such stacks as ``[S, C*K, H, W]`` for slice-wise encoders.

Two transforms pick the slice centres:

- :class:`SliceStackd` is deterministic and never needs a segmentation, so it is the one for validation,
  testing and deployment. It selects slices from the brain foreground (voxels that are nonzero in any
  modality, i.e. the skull-stripped brain of BraTS-style data), or evenly over the whole volume.
- :class:`RandSliceStackd` samples centres at random for training. Its ``"random_foreground"`` mode needs no
  segmentation and, with ``S`` stacks, draws one centre in each of the ``S`` equal bins of the brain extent whose
  midpoints :class:`SliceStackd` (``"foreground"``) takes at evaluation - the same stack distribution, jittered,
  as a multiple-instance student needs. ``"tumour"`` samples where the segmentation shows tumour. Because it is
  randomizable, MONAI's ``CacheDataset``/``PersistentDataset`` cache the preprocessed volume before it and draw
  new slices every epoch.

Both emit ``"slice_index"`` (the centre slice ``c`` as the fraction ``(c + 0.5) / depth`` of the volume's extent
along the slicing axis: the same fraction points at the same anatomy in a feature map of any stride, which is how
:class:`medkd3d.losses.VolumeToSliceFeatureLoss` reads it) and, when ``volume_key`` is set, keep the 3D volume the slices came from (the input of a 3D teacher in
volume-to-slice distillation).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

logger = logging.getLogger(__name__)

__all__ = [
    "DropNoned",
    "RandSliceStackd",
    "SliceStackd",
    "brain_mask",
    "evenly_spaced",
    "extract_slice_stacks",
    "foreground_area",
    "stratified_random",
    "valid_centre_range",
]

#: Deterministic slice selections of :class:`SliceStackd`.
DETERMINISTIC_SAMPLINGS = ("foreground", "largest_area", "even")
#: Random slice selections of :class:`RandSliceStackd`.
RANDOM_SAMPLINGS = ("tumour", "random_foreground", "uniform")


def brain_mask(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Foreground selector for ``CropForegroundd``: voxels nonzero in any channel, as a ``[1, ...]`` mask.

    Skull-stripped MRI (BraTS) is exactly zero outside the brain. The channels are OR-ed one by one in NumPy
    because ``torch.any`` over the channel axis of a full-size volume is several times slower than loading it.
    """
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    mask = array[0] != 0
    for channel in array[1:]:
        mask |= channel != 0
    return mask[None]


def foreground_area(volume: torch.Tensor | np.ndarray, axis: int) -> np.ndarray:
    """Count, for every slice along ``axis``, the voxels that are nonzero in at least one channel.

    Args:
        volume: ``[C, X, Y, Z]`` image (or a ``[1, X, Y, Z]`` label map).
        axis: spatial axis (0, 1 or 2) along which the slices are taken.

    Returns:
        One count per slice.
    """
    other = tuple(d for d in range(3) if d != axis)
    return brain_mask(volume)[0].sum(axis=other)


def valid_centre_range(depth: int, num_slices: int) -> tuple[int, int]:
    """First and last slice centres whose ``num_slices`` window lies inside a volume of ``depth`` slices.

    The window of centre ``c`` is ``c - num_slices // 2, ..., c - num_slices // 2 + num_slices - 1``; for even
    ``num_slices`` it extends one slice further before the centre than after it.

    Raises:
        ValueError: when the volume has fewer slices than the window.
    """
    if depth < num_slices:
        raise ValueError(f"cannot take {num_slices} adjacent slices from a volume with only {depth} along the axis")
    half = num_slices // 2
    return half, depth - num_slices + half


def extract_slice_stacks(volume: torch.Tensor, centres: Sequence[int], num_slices: int, axis: int) -> torch.Tensor:
    """Take ``num_slices`` adjacent slices around each centre and stack them modality-major.

    Args:
        volume: ``[C, X, Y, Z]`` tensor.
        centres: slice indices along ``axis``; each window must lie inside the volume
            (see :func:`valid_centre_range`).
        num_slices: ``K``, slices per stack.
        axis: spatial axis (0, 1 or 2) along which to slice.

    Returns:
        ``[S, C*K, H, W]`` tensor with ``S = len(centres)`` and channel ``m*K + k`` holding channel ``m`` of
        slice ``k`` of the window; ``H, W`` are the two remaining spatial axes in their original order.
    """
    channels = volume.shape[0]
    offsets = torch.arange(num_slices) - num_slices // 2
    index = (torch.as_tensor(list(centres), dtype=torch.long)[:, None] + offsets).flatten()  # [S*K]
    slab = volume.index_select(axis + 1, index.to(volume.device)).movedim(axis + 1, 1)  # [C, S*K, H, W]
    height, width = slab.shape[-2:]
    return (
        slab.reshape(channels, len(centres), num_slices, height, width)
        .transpose(0, 1)
        .reshape(len(centres), channels * num_slices, height, width)
    )


def evenly_spaced(first: int, last: int, count: int) -> list[int]:
    """Centres of ``count`` equal-width bins covering the slices ``first..last`` (inclusive).

    Slice ``j`` covers ``[j, j + 1)``, so the extent is ``[first, last + 1)`` and bin ``i`` is
    ``[first + i w, first + (i + 1) w)`` with ``w = (last - first + 1) / count``; the result is the slice holding
    each bin's midpoint. :func:`stratified_random` draws from the same bins.
    """
    width = (last - first + 1) / count
    return [first + int((i + 0.5) * width) for i in range(count)]


def stratified_random(first: int, last: int, count: int, rng: np.random.RandomState) -> list[int]:
    """One slice drawn uniformly from each of the ``count`` bins of :func:`evenly_spaced` (jittered centres).

    A position is drawn uniformly in each bin and the slice holding it is returned, so a slice's probability is
    its overlap with the bin and the midpoints :func:`evenly_spaced` picks are the bins' expected positions: the
    random training stacks and the deterministic evaluation stacks cover the extent the same way.

    Args:
        first: first slice of the extent.
        last: last slice of the extent (inclusive, ``>= first``).
        count: number of bins, one slice per bin; bins narrower than a slice may share it.
        rng: random state (a MONAI transform's ``R``).

    Returns:
        ``count`` non-decreasing slice indices in ``first..last``.
    """
    width = (last - first + 1) / count
    positions = first + (np.arange(count) + rng.uniform(size=count)) * width
    return [min(int(p), last) for p in positions]


class DropNoned(MapTransform):
    """Remove keys whose value is ``None`` (e.g. ``"seg": null`` or ``"label": null`` in a datalist record).

    PyTorch's collate cannot batch ``None``, and loaders must not be asked to read a missing file, so optional
    record fields are dropped before loading.
    """

    def __init__(self, keys: KeysCollection = ("seg", "label", "class_name")) -> None:
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key] is None:
                del d[key]
        return d


class _SliceStackBase(MapTransform):
    """Shared logic of :class:`SliceStackd` and :class:`RandSliceStackd`; subclasses choose the centres."""

    samplings: tuple[str, ...] = ()

    def __init__(
        self,
        keys: KeysCollection,
        num_slices: int = 3,
        axis: int = 2,
        num_stacks: int | None = None,
        sampling: str = "foreground",
        volume_key: str | None = None,
        slice_index_key: str = "slice_index",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if num_slices < 1:
            raise ValueError(f"num_slices must be >= 1, got {num_slices}")
        if axis not in (0, 1, 2):
            raise ValueError(f"axis must be a spatial axis 0, 1 or 2 of a [C, X, Y, Z] volume, got {axis}")
        if num_stacks is not None and num_stacks < 1:
            raise ValueError(f"num_stacks must be None (one stack) or >= 1, got {num_stacks}")
        if sampling not in self.samplings:
            raise ValueError(
                f"{type(self).__name__} does not know sampling={sampling!r}; choose one of {self.samplings}"
            )
        self.num_slices = num_slices
        self.axis = axis
        self.num_stacks = num_stacks
        self.sampling = sampling
        self.volume_key = volume_key
        self.slice_index_key = slice_index_key

    def select_centres(self, volume: torch.Tensor, data: Mapping[Hashable, object]) -> list[int]:
        """Return ``num_stacks or 1`` slice centres inside :func:`valid_centre_range` of ``volume``."""
        raise NotImplementedError

    def _brain_slices(self, area: np.ndarray, data: Mapping[Hashable, object]) -> np.ndarray:
        """Indices of the slices with brain, given :func:`foreground_area`; raises when there is none."""
        slices = np.flatnonzero(area)
        if slices.size == 0:
            raise ValueError(
                f"subject {data.get('subject', '?')!r}: the image is zero everywhere, so there is no brain "
                "foreground to select slices from; run `medkd3d check-data` on the dataset"
            )
        return slices

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        first_key = self.first_key(d)
        if first_key == []:
            return d
        volume = d[first_key]
        if volume.ndim != 4:
            raise ValueError(
                f"subject {d.get('subject', '?')!r}: {type(self).__name__} expects a [C, X, Y, Z] volume under "
                f"{first_key!r}, got shape {tuple(volume.shape)}; apply it after the 3D preprocessing"
            )
        depth = volume.shape[self.axis + 1]
        low, high = valid_centre_range(depth, self.num_slices)
        centres = [min(max(int(c), low), high) for c in self.select_centres(volume, d)]
        if self.volume_key is not None:
            d[self.volume_key] = volume
        for key in self.key_iterator(d):
            d[key] = self._stack(d[key], centres)
        fraction = (torch.tensor(centres, dtype=torch.float32) + 0.5) / depth
        d[self.slice_index_key] = fraction[0] if self.num_stacks is None else fraction
        return d

    def _stack(self, volume: torch.Tensor, centres: list[int]) -> torch.Tensor:
        plain = volume.as_tensor() if isinstance(volume, MetaTensor) else torch.as_tensor(volume)
        stacks = extract_slice_stacks(plain, centres, self.num_slices, self.axis)
        if self.num_stacks is None:
            stacks = stacks[0]
        # The slices keep the source's metadata (file names, the volume's affine) for traceability; their
        # position is given by the slice index, and the 3D operations applied so far cannot be inverted.
        return MetaTensor(stacks, meta=dict(volume.meta)) if isinstance(volume, MetaTensor) else stacks


class SliceStackd(_SliceStackBase):
    """Deterministic 2.5D slice stacks; needs no segmentation (use it for validation, test and deployment).

    Sampling modes (slice centres along ``axis``):

    - ``"foreground"``: ``S`` centres evenly spaced over the brain's extent (the slices where any channel is
      nonzero), at the middles of ``S`` equal bins; with one stack, the middle slice of the brain.
    - ``"largest_area"``: the slice with the largest brain cross-section (one stack only).
    - ``"even"``: ``S`` centres evenly spaced over the whole volume depth, ignoring the foreground.

    Args:
        keys: keys of ``[C, X, Y, Z]`` volumes to slice (the same centres for every key), usually ``"image"``.
        num_slices: ``K`` adjacent slices per stack; ``K = 1`` gives a plain 2D slice ``[C, H, W]``.
        axis: spatial axis to slice along (2 = axial after RAS orientation).
        num_stacks: ``None`` for one stack ``[C*K, H, W]``; ``S`` for ``[S, C*K, H, W]``.
        sampling: one of ``"foreground"``, ``"largest_area"``, ``"even"``.
        volume_key: if set, the 3D volume of the first key is kept under this key.
        slice_index_key: key of the centre fraction(s) in ``[0, 1]``: a 0-d float32 tensor, or ``[S]``.
        allow_missing_keys: do not raise when a key is absent.

    Raises:
        ValueError: for an unknown sampling, ``"largest_area"`` with several stacks, an all-zero image with
            a foreground sampling, or a volume thinner than ``num_slices`` along ``axis``.
    """

    samplings = DETERMINISTIC_SAMPLINGS

    def __init__(
        self,
        keys: KeysCollection,
        num_slices: int = 3,
        axis: int = 2,
        num_stacks: int | None = None,
        sampling: str = "foreground",
        volume_key: str | None = None,
        slice_index_key: str = "slice_index",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, num_slices, axis, num_stacks, sampling, volume_key, slice_index_key, allow_missing_keys)
        if sampling == "largest_area" and (num_stacks or 1) > 1:
            raise ValueError("sampling='largest_area' selects one slice; use 'foreground' for several stacks")

    def select_centres(self, volume: torch.Tensor, data: Mapping[Hashable, object]) -> list[int]:
        count = self.num_stacks or 1
        if self.sampling == "even":
            return evenly_spaced(*valid_centre_range(volume.shape[self.axis + 1], self.num_slices), count)
        area = foreground_area(volume, self.axis)
        brain = self._brain_slices(area, data)
        if self.sampling == "largest_area":
            return [int(np.argmax(area))]
        return evenly_spaced(int(brain[0]), int(brain[-1]), count)


class RandSliceStackd(Randomizable, _SliceStackBase):
    """Randomly sampled 2.5D slice stacks for training.

    Sampling modes (slice centres along ``axis``):

    - ``"tumour"``: centres drawn from the slices where ``seg_key`` is positive (any tumour label). A record
      without a segmentation, or whose tumour is not visible after preprocessing, falls back to
      ``"random_foreground"`` - so unsegmented training subjects still work. Inference never needs a
      segmentation: use :class:`SliceStackd` there.
    - ``"random_foreground"``: needs no segmentation. The brain's extent along ``axis`` (first to last slice
      that is nonzero in any channel) is cut into ``S`` equal bins and one centre is drawn uniformly in each
      (:func:`stratified_random`): a jittered version of :class:`SliceStackd`'s ``"foreground"`` centres, the bin
      midpoints, so training and evaluation see the same stack distribution.
    - ``"uniform"``: centres drawn from the whole volume depth.

    For ``"tumour"`` and ``"uniform"`` with ``S`` stacks the candidate slices are split into ``S`` consecutive
    groups and one centre is drawn per group, so the stacks cover the candidates in anatomical order; with fewer
    candidates than stacks, the centres are drawn with replacement and sorted.

    Args:
        keys: keys of ``[C, X, Y, Z]`` volumes to slice (the same centres for every key), usually ``"image"``.
        num_slices: ``K`` adjacent slices per stack.
        axis: spatial axis to slice along (2 = axial after RAS orientation).
        num_stacks: ``None`` for one stack ``[C*K, H, W]``; ``S`` for ``[S, C*K, H, W]``.
        sampling: one of ``"tumour"``, ``"random_foreground"``, ``"uniform"``.
        seg_key: key of the ``[1, X, Y, Z]`` segmentation used by ``"tumour"``; it must have had the same
            spatial transforms as the image.
        volume_key: if set, the 3D volume of the first key is kept under this key.
        slice_index_key: key of the centre fraction(s) in ``[0, 1]``: a 0-d float32 tensor, or ``[S]``.
        allow_missing_keys: do not raise when a key is absent.
    """

    samplings = RANDOM_SAMPLINGS

    def __init__(
        self,
        keys: KeysCollection,
        num_slices: int = 3,
        axis: int = 2,
        num_stacks: int | None = None,
        sampling: str = "tumour",
        seg_key: str = "seg",
        volume_key: str | None = None,
        slice_index_key: str = "slice_index",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, num_slices, axis, num_stacks, sampling, volume_key, slice_index_key, allow_missing_keys)
        self.seg_key = seg_key

    def randomize(self, candidates: np.ndarray) -> list[int]:
        """Draw ``num_stacks or 1`` sorted centres from the sorted candidate slices."""
        count = self.num_stacks or 1
        if candidates.size < count:
            return sorted(int(c) for c in self.R.choice(candidates, size=count, replace=True))
        return [int(self.R.choice(group)) for group in np.array_split(candidates, count)]

    def select_centres(self, volume: torch.Tensor, data: Mapping[Hashable, object]) -> list[int]:
        if self.sampling == "uniform":
            low, high = valid_centre_range(volume.shape[self.axis + 1], self.num_slices)
            return self.randomize(np.arange(low, high + 1))
        if self.sampling == "tumour":
            seg = data.get(self.seg_key)
            if isinstance(seg, (str, bytes)) or hasattr(seg, "__fspath__"):
                raise ValueError(
                    f"subject {data.get('subject', '?')!r}: {self.seg_key!r} is still the file path {seg!s}; "
                    "load it with LoadImaged and give it the image's spatial transforms before RandSliceStackd"
                )
            if seg is not None:
                tumour = np.flatnonzero(foreground_area(seg, self.axis))
                if tumour.size:
                    return self.randomize(tumour)
            logger.debug("subject %r: no tumour to sample from, sampling brain slices", data.get("subject"))
        brain = self._brain_slices(foreground_area(volume, self.axis), data)
        return stratified_random(int(brain[0]), int(brain[-1]), self.num_stacks or 1, self.R)
