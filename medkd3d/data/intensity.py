"""Channel-wise z-scoring over the nonzero (brain) voxels, as MONAI's ``NormalizeIntensityd`` does it, faster.

``NormalizeIntensityd(nonzero=True, channel_wise=True)`` selects and scatters the brain voxels of each channel
with PyTorch boolean indexing on a ``MetaTensor``, which costs ~10x NumPy's boolean indexing of the same memory
(and every ``MetaTensor`` operation adds metadata bookkeeping). :class:`NormalizeNonzerod` does the selection and
the scatter in NumPy, on the tensor's own memory, and everything numeric (the mean, the population standard
deviation, ``(x - mean) / std``) with the same PyTorch calls on the same values in the same order: its output is
bit-identical to MONAI's (``tests/data/test_readers.py`` checks it against ``NormalizeIntensityd``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform
from monai.utils import convert_to_tensor

__all__ = ["NormalizeNonzerod", "normalize_nonzero_"]


def normalize_nonzero_(volume: torch.Tensor) -> torch.Tensor:
    """Z-score every channel of a float32 CPU ``[C, ...]`` tensor over its nonzero voxels, in place.

    Zero voxels stay zero; a channel without nonzero voxels is left as it is, and one whose nonzero voxels are
    all equal is only shifted (its standard deviation counts as 1), as in ``NormalizeIntensity``.

    Args:
        volume: float32 CPU tensor, channel first.

    Returns:
        ``volume``, normalised.
    """
    for channel in volume:
        values = channel.numpy()
        mask = values != 0
        brain = torch.from_numpy(values[mask])
        if brain.numel() == 0:
            continue
        mean = torch.mean(brain).item()
        std = torch.std(brain, unbiased=False).item()
        values[mask] = ((brain - mean) / (std if std != 0.0 else 1.0)).numpy()
    return volume


class NormalizeNonzerod(MapTransform):
    """``NormalizeIntensityd(keys, nonzero=True, channel_wise=True)`` with the same output, several times faster.

    Each channel becomes ``(x - mean) / std`` on its nonzero voxels, ``mean`` and the population ``std`` being
    taken over those voxels; zero voxels stay zero. The image becomes float32 (a float32 image is normalised in
    place, as ``NormalizeIntensityd`` does), and a ``MetaTensor`` keeps its metadata.

    Args:
        keys: keys of the channel-first images to normalise.
        allow_missing_keys: skip keys that are absent.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor | np.ndarray]) -> dict[Hashable, torch.Tensor]:
        """Normalise ``data[key]`` for every key.

        Args:
            data: a record whose ``keys`` hold ``[C, ...]`` tensors or arrays.

        Returns:
            The record, with each image a float32 tensor (a ``MetaTensor`` stays one).
        """
        out = dict(data)
        for key in self.key_iterator(out):
            image = convert_to_tensor(out[key], track_meta=get_track_meta())
            if image.dtype != torch.float32:
                image = image.to(torch.float32)
            plain = image.as_tensor() if isinstance(image, MetaTensor) else image
            if plain.device.type == "cpu":
                normalize_nonzero_(plain)
            else:  # NumPy needs CPU memory: normalise a copy and write it back
                plain.copy_(normalize_nonzero_(plain.cpu()))
            out[key] = image
        return out
