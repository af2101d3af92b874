"""Dataset construction with optional in-memory or on-disk caching of the deterministic preprocessing.

MONAI's ``CacheDataset`` and ``PersistentDataset`` run a ``Compose`` up to (not including) its first
randomizable transform once, store that result, and run only the remaining (random) transforms per epoch.
The medkd3d pipelines put every deterministic step (loading, orientation, foreground crop, resampling,
resizing, normalisation) before the first random one, so the cache holds the preprocessed volume and the
augmentations and random slice sampling still change every epoch.

Memory of an in-memory cache: items x channels x voxels x 4 bytes (float32). A full BraTS 2019 training set
at ``spatial_size`` 128^3 takes 335 x 4 x 128^3 x 4 B ~ 11.2 GB (10.5 GiB), which fits in the RAM of a
training node; at the native 240 x 240 x 155 it would be ~48 GB. A loaded segmentation (``load_seg``, for
tumour-guided slice sampling) is cached as uint8 and adds ~6%. Use ``cache="disk"`` when it does not fit, or
``cache_rate`` to cache only part of the data.

A cached training epoch still pays for its random augmentations: on one CPU thread the random affine at 128^3
dominates, so it is only ~3x faster than an uncached epoch, while a deterministic evaluation epoch is >20x
faster (``benchmarks/bench_data.py``). Spread the augmentations over ``DataLoader`` workers, or run them on
the GPU after the cached prefix (``ToDeviced``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.utils import convert_to_tensor

__all__ = ["CACHE_MODES", "build_dataset", "estimate_cache_bytes"]

#: ``"none"``: plain ``Dataset``; ``"memory"``: ``CacheDataset``; ``"disk"``: ``PersistentDataset``.
CACHE_MODES = ("none", "memory", "disk")


class _ConsistentPersistentDataset(PersistentDataset):
    """``PersistentDataset`` whose freshly computed items have the tensor types of the cached ones.

    MONAI converts an item to ``MetaTensor``s when it writes the cache file but returns the freshly computed item
    unconverted, so a plain-tensor label comes back as a ``MetaTensor`` from the second epoch on. A batch mixing
    both kinds (a subject cached by an earlier run or epoch next to a new one) is refused by ``list_data_collate``.
    """

    def _cachecheck(self, item_transformed: Any) -> Any:
        item = super()._cachecheck(item_transformed)
        return convert_to_tensor(item, convert_numeric=False, track_meta=self.track_meta)


def estimate_cache_bytes(
    num_items: int, spatial_size: Sequence[int], channels: int = 4, dtype: np.dtype | type = np.float32
) -> int:
    """Bytes an in-memory cache of ``num_items`` preprocessed volumes takes (image data only).

    Example: ``estimate_cache_bytes(335, (128, 128, 128))`` is 11,240,734,720 (~11.2 GB).
    """
    return int(num_items * channels * np.prod(spatial_size) * np.dtype(dtype).itemsize)


def build_dataset(
    records: Sequence[Mapping[str, Any]],
    transform: Callable,
    cache: str = "none",
    cache_dir: str | os.PathLike | None = None,
    num_workers: int | None = 1,
    cache_rate: float = 1.0,
    progress: bool = False,
) -> Dataset:
    """Build a MONAI dataset over datalist records, caching the deterministic part of ``transform``.

    Args:
        records: datalist records (e.g. one side of :func:`medkd3d.data.split_records`).
        transform: a ``Compose`` from :mod:`medkd3d.data.pipelines` (or any MONAI transform chain).
        cache: ``"none"`` (``Dataset``: everything runs every epoch), ``"memory"`` (``CacheDataset``: the
            deterministic prefix is computed up front and kept in RAM) or ``"disk"`` (``PersistentDataset``:
            computed on first access and stored as ``.pt`` files in ``cache_dir``).
        cache_dir: folder of the disk cache (required for ``"disk"``; only point it at a folder you trust,
            as its files are unpickled). Cache file names hash both the record and the settings of the
            deterministic transforms (taken when the dataset is built), so a changed ``spatial_size`` or reader
            never reuses stale files, and the folder can be shared between runs.
        num_workers: threads that fill the in-memory cache; ``None`` uses one per CPU.
        cache_rate: fraction of the records to keep in the in-memory cache (the rest are computed per epoch).
        progress: show a progress bar while filling the in-memory cache.

    Returns:
        The dataset; item ``i`` is ``transform(records[i])``.

    Raises:
        ValueError: for an unknown cache mode or ``"disk"`` without ``cache_dir``.
    """
    records = list(records)
    if cache == "none":
        return Dataset(records, transform)
    if cache == "memory":
        return CacheDataset(
            records, transform, cache_rate=cache_rate, num_workers=num_workers, progress=progress
        )
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir to store the preprocessed items in")
        # weights_only=False: the cached items are MetaTensors with NIfTI metadata, which torch's restricted
        # unpickler rejects (MONAI would then treat every file as corrupt and recompute it each epoch). The
        # files are written by this process into the user's own cache_dir.
        return _ConsistentPersistentDataset(
            records, transform, cache_dir=cache_dir, hash_transform=pickle_hashing, track_meta=True,
            weights_only=False,
        )
    raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
