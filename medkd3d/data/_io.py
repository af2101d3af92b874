"""Atomic file writing: nothing half-written is ever visible under the final name."""

from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

#: zlib level for NIfTI files: level 1 is ~4x faster than the default 9 and only ~15% larger on MRI volumes.
NIFTI_GZIP_LEVEL = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it to ``path``.

    Args:
        path: destination file; its parent folder is created when missing.
        data: the complete file content.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


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
