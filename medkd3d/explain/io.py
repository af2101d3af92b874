"""Writing explanations: NIfTI maps with the input's affine, tri-planar PNG overlays, JSON reports - all atomic.

Every file is written to a temporary name in its destination folder and renamed into place, so an interrupted
run never leaves a half-written map or figure under the final name.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medkd3d.data._io import save_nifti
from medkd3d.utils import atomic_write_bytes

__all__ = ["save_map_nifti", "save_overlay_png", "write_json"]


def _json_safe(value: Any) -> Any:
    """NaN/inf become ``null`` (strict JSON has no NaN); numpy scalars and arrays become Python values."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented strict JSON, atomically."""
    return atomic_write_bytes(path, (json.dumps(_json_safe(payload), indent=2) + "\n").encode("utf-8"))


def save_map_nifti(values: np.ndarray, affine: np.ndarray, path: str | os.PathLike) -> Path:
    """Save a ``[X, Y, Z]`` map as float32 NIfTI-1 with ``affine`` as qform and sform, atomically.

    Args:
        values: the map, on the grid that ``affine`` describes (the input image's).
        affine: 4x4 voxel-to-world matrix (RAS mm) of the input image.
        path: ``.nii`` or ``.nii.gz`` destination (gzip-compressed when it ends in ``.gz``).

    Returns:
        The destination path.

    Raises:
        ValueError: if ``values`` is not 3D or ``affine`` not 4x4.
    """
    values = np.asarray(values, dtype=np.float32)
    affine = np.asarray(affine, dtype=np.float64)
    if values.ndim != 3 or affine.shape != (4, 4):
        raise ValueError(f"a map NIfTI needs a 3D map and a 4x4 affine, got {values.shape} and {affine.shape}")
    return save_nifti(values, affine, path)


def _canonical(values: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The array reoriented to RAS (so every figure shows the same anatomy the same way) and its voxel sizes."""
    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(values, dtype=np.float32), affine))
    return np.asarray(image.dataobj), np.asarray(image.header.get_zooms()[:3], dtype=float)


def save_overlay_png(
    background: np.ndarray,
    values: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike,
    title: str = "",
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Path:
    """Tri-planar (sagittal, coronal, axial) overlay of a ``[0, 1]`` map on an image, as a PNG.

    The planes cross at the map's most important voxel. Both arrays are reoriented to RAS for display; the map is
    drawn with ``cmap`` from 0 (low importance) to 1 (high importance), with a colour bar saying so.

    Args:
        background: ``[X, Y, Z]`` image (e.g. the FLAIR volume) on the map's grid.
        values: ``[X, Y, Z]`` map in ``[0, 1]``.
        affine: their shared voxel-to-world matrix.
        path: ``.png`` destination.
        title: figure title.
        alpha: opacity of the map.
        cmap: matplotlib colour map of the map.

    Returns:
        The destination path.

    Raises:
        ValueError: if the arrays' shapes differ.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if np.shape(background) != np.shape(values):
        raise ValueError(f"overlay background {np.shape(background)} and map {np.shape(values)} differ in shape")
    image, zooms = _canonical(background, affine)
    cam, _ = _canonical(values, affine)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
    low, high = np.percentile(image[image != 0], [1, 99]) if np.any(image) else (0.0, 1.0)

    figure = Figure(figsize=(12, 4.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 3)
    planes = (("sagittal", 0), ("coronal", 1), ("axial", 2))
    for ax, (name, axis) in zip(axes, planes):
        shown = [d for d in range(3) if d != axis]
        section = np.take(image, peak[axis], axis=axis).T
        heat = np.take(cam, peak[axis], axis=axis).T
        aspect = zooms[shown[1]] / zooms[shown[0]]
        ax.imshow(section, cmap="gray", origin="lower", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        overlay = ax.imshow(
            np.ma.masked_less_equal(heat, 0.0), cmap=cmap, origin="lower", vmin=0.0, vmax=1.0, alpha=alpha,
            aspect=aspect, interpolation="nearest",
        )  # fmt: skip
        ax.set_title(f"{name} (slice {peak[axis]})")
        ax.set_axis_off()
    colorbar = figure.colorbar(overlay, ax=list(axes), fraction=0.02, pad=0.01)
    colorbar.set_label("importance (0 = low, 1 = high)")
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())
