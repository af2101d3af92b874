"""NIfTI writing, atomic and byte-reproducible (used by the data layer and the explanation maps)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from medkd3d.utils import atomic_write_bytes

__all__ = ["NIFTI_GZIP_LEVEL", "save_nifti"]

#: zlib level for NIfTI files: level 1 is ~4x faster than the default 9 and only ~15% larger on MRI volumes.
NIFTI_GZIP_LEVEL = 1


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Save a 3D array as NIfTI-1 (gzip-compressed when ``path`` ends in ``.gz``), atomically and byte-reproducibly.

    The gzip header carries no time stamp, so the same array always gives the same bytes.

    Args:
        array: the voxel data; its dtype is kept.
        affine: 4x4 voxel-to-world (RAS mm) matrix, written as both qform and sform.
        path: destination ``.nii`` or ``.nii.gz`` file.

    Returns:
        The destination path.
    """
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    data = image.to_bytes()
    if str(path).lower().endswith(".gz"):
        data = gzip.compress(data, compresslevel=NIFTI_GZIP_LEVEL, mtime=0)
    return atomic_write_bytes(path, data)
