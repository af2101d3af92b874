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

import functools
import logging
import os
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.utils import convert_to_tensor

__all__ = ["CACHE_MODES", "build_dataset", "cache_safe_globals", "estimate_cache_bytes"]

logger = logging.getLogger(__name__)

#: ``"none"``: plain ``Dataset``; ``"memory"``: ``CacheDataset``; ``"disk"``: ``PersistentDataset``.
CACHE_MODES = ("none", "memory", "disk")


@functools.cache
def cache_safe_globals() -> tuple[Any, ...]:
    """Allow exactly the types a cached item holds besides tensors in torch's ``weights_only`` unpickler.

    A cached item is a dict of ``MetaTensor``s (MONAI registers ``MetaTensor``/``MetaObj`` itself) whose metadata
    and ``applied_operations`` hold numeric numpy arrays (affines, original sizes) and MONAI's ``TraceKeys`` /
    ``SpaceKeys`` enums. These are data types, not callables: with them allowed, ``torch.load(weights_only=True)``
    reads a cache file without ever importing or calling anything else, so a planted pickle cannot run code.
    Object arrays stay refused (their dtype class is not allowed). Registered once per process (also in
    ``DataLoader`` workers, which call it on their first cache read).

    Returns:
        The registered globals.
    """
    from monai.utils import SpaceKeys, TraceKeys

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    numeric = [type(np.dtype(code)) for code in "?bhilqBHILQefdgFDG"]
    allowed = (multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *numeric, TraceKeys, SpaceKeys)
    torch.serialization.add_safe_globals(list(allowed))
    return allowed


class _SafePersistentDataset(PersistentDataset):
    """``PersistentDataset`` that reads its files with ``weights_only=True`` and gives consistent tensor types.

    Safety: a cache file is loaded by torch's restricted unpickler with only the data types of
    :func:`cache_safe_globals` allowed, so a file planted in the cache folder cannot run code; a file that does not
    load that way (planted, corrupt, or written by another version) is reported, removed and recomputed.

    Consistency: MONAI converts an item to ``MetaTensor``s when it writes the cache file but returns the freshly
    computed item unconverted, so a plain-tensor label comes back as a ``MetaTensor`` from the second epoch on. A
    batch mixing both kinds (a subject cached by an earlier run or epoch next to a new one) is refused by
    ``list_data_collate``; every item is therefore converted the same way.
    """

    # ``_cachecheck`` is MONAI's private per-item hook (``_transform`` calls it); no public one covers a cache hit
    # and MONAI's own ``weights_only`` load re-raises a truncated file. tests/misc/test_monai_private_api.py pins it.
    def _cachecheck(self, item_transformed: Any) -> Any:
        cache_safe_globals()
        if self.cache_dir is not None:
            path = self.cache_dir / f"{self.hash_func(item_transformed).decode('utf-8')}{self.transform_hash}.pt"
            if path.is_file():
                try:
                    item = torch.load(path, weights_only=True)
                    return convert_to_tensor(item, convert_numeric=False, track_meta=self.track_meta)
                except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as error:
                    # never retried with weights_only=False: an unreadable file is recomputed, not trusted
                    logger.warning(
                        "Cache file %s is not a preprocessed item that loads safely (weights_only=True: %s); it is "
                        "removed and the item recomputed. If you did not put it there, check who can write to %s.",
                        path, str(error).splitlines()[-1] if str(error) else type(error).__name__, self.cache_dir,
                    )  # fmt: skip
                    path.unlink(missing_ok=True)
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
        cache_dir: folder of the disk cache (required for ``"disk"``). Its files are read with
            ``torch.load(weights_only=True)`` (see :func:`cache_safe_globals`), so a planted file cannot run code;
            one that does not load safely is removed and recomputed, with a warning. Cache file names hash both the record and the settings of the
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
        return CacheDataset(records, transform, cache_rate=cache_rate, num_workers=num_workers, progress=progress)
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir to store the preprocessed items in")
        # weights_only=True: the MetaTensors' metadata types are allowed by cache_safe_globals, nothing else
        return _SafePersistentDataset(
            records,
            transform,
            cache_dir=cache_dir,
            hash_transform=pickle_hashing,
            track_meta=True,
            weights_only=True,
        )
    raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
