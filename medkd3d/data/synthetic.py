"""Synthetic BraTS: brain MRI with gliomas, written in the exact folder and file naming of BraTS 2019/2020/2021.

Anatomy comes from the MNI152 2009 template and its grey/white-matter probability maps that nilearn ships
(real anatomy, offline); without nilearn a procedural brain (ellipsoid with cortex, white matter, ventricles)
stands in. Each subject gets:

* modality-specific tissue contrast - T1: WM > GM > CSF; T2: CSF brightest; FLAIR: CSF suppressed, GM > WM;
  T1ce: T1 plus contrast uptake in enhancing tumour;
* a tumour with peritumoral edema (BraTS label 2), necrotic / non-enhancing core (1) and enhancing tumour (4),
  drawn from grade-specific phenotype distributions: HGG larger, ring-enhancing, necrotic, with more edema;
  LGG smaller, T2/FLAIR-hyperintense, with little or no enhancement. The distributions overlap on purpose
  (atypical enhancing LGGs, non-enhancing HGGs), so grading is learnable but not trivial;
* scanner variation: a smooth multiplicative bias field, Rician noise and a per-subject intensity scale.

Everything is drawn from a random generator seeded by ``(seed, grade, index)``, so subject ``i`` of a grade is
the same whatever the number of subjects generated, and the same seed gives byte-identical files.
Volumes are stored as int16 NIfTI (segmentations as uint8) with 1 mm spacing and the BraTS LPS orientation.
Sizes are defined in the 240x240x155 mm BraTS frame and scaled to the requested shape, so a small ``shape``
gives a down-scaled brain, not a cropped one.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medkd3d.data._io import save_nifti
from medkd3d.data.discovery import GRADE_CLASS_NAMES, MODALITIES
from medkd3d.utils import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "BRATS_SHAPE",
    "SYNTHETIC_INFO_FILE",
    "SYNTHETIC_LAYOUTS",
    "SyntheticSubject",
    "TumourPhenotype",
    "describe_synthetic",
    "generate_synthetic_brats",
    "read_synthetic_info",
    "sample_phenotype",
    "synthesize_subject",
]

#: Layouts ``generate_synthetic_brats`` can write.
SYNTHETIC_LAYOUTS: tuple[str, ...] = ("brats2019", "brats2020", "brats2021")
#: Shape (voxels) of a BraTS volume: 240x240x155 at 1 mm. Anatomy and tumour sizes are defined in this frame.
BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
#: The file holding the labels of a synthetic BraTS 2021 dataset (the name of the RSNA-MICCAI labels file).
BRATS2021_LABELS_FILE = "train_labels.csv"
#: The record of how a synthetic dataset was generated, in its root (the discovery of every layout ignores it).
SYNTHETIC_INFO_FILE = "medkd3d_synthetic.json"

# Relative signal of each tissue / tumour compartment per modality (columns follow MODALITIES: t1, t1ce, t2, flair).
# Values follow the usual appearance of 1.5-3 T clinical sequences; only their order matters for realism.
_TISSUE_SIGNAL = {
    "csf": (0.25, 0.27, 1.00, 0.12),
    "gm": (0.60, 0.62, 0.55, 0.62),
    "wm": (0.85, 0.86, 0.40, 0.48),
}
_TUMOUR_SIGNAL = {
    "edema": (0.55, 0.56, 0.85, 0.95),  # label 2: T2/FLAIR-hyperintense
    "necrosis": (0.28, 0.30, 0.95, 0.55),  # label 1: fluid-like, dark on T1, partly suppressed on FLAIR
    "non_enhancing": (0.45, 0.47, 0.82, 0.88),  # label 1: solid LGG-type tumour, bright on T2 and FLAIR
    "enhancing": (0.55, 1.30, 0.65, 0.72),  # label 4: bright on T1ce only
}
#: Relative standard deviation of each subject's tumour signals around the values above.
_TUMOUR_SIGNAL_JITTER = 0.07
#: Typical scanner units per modality (BraTS volumes are unnormalised int16).
_MODALITY_SCALE = {"t1": 600.0, "t1ce": 900.0, "t2": 1400.0, "flair": 500.0}
_SEG_EDEMA, _SEG_CORE, _SEG_ENHANCING = 2, 1, 4


# ----------------------------------------------------------------------------------------------------------------
# resampling: separable linear interpolation, ~20x faster than scipy.ndimage.affine_transform on 240x240x155


def _interp_axis(volume: np.ndarray, axis: int, size: int, start: float, step: float, zero_outside: bool) -> np.ndarray:
    """Linearly interpolate ``volume`` along ``axis`` at source positions ``start + i * step``, ``i < size``.

    Down-scaling by ``step >= 2`` first averages blocks of ``int(step)`` voxels, against aliasing. Positions outside
    the volume read 0 (``zero_outside``) or the nearest edge voxel.
    """
    source = np.moveaxis(volume, axis, 0)
    if step >= 2.0:
        factor = int(step)
        length = source.shape[0] // factor * factor
        source = source[:length].reshape(length // factor, factor, *source.shape[1:]).mean(axis=1, dtype=np.float32)
        start, step = (start - (factor - 1) / 2.0) / factor, step / factor
    n = source.shape[0]
    position = start + step * np.arange(size)
    if not zero_outside:
        position = np.clip(position, 0, n - 1)
    low = np.floor(position).astype(int)
    weight = (position - low).astype(np.float32)
    result = np.zeros((size, *source.shape[1:]), np.float32)
    for index, w in ((low, 1.0 - weight), (low + 1, weight)):
        w = w * ((index >= 0) & (index < n))
        result += source[np.clip(index, 0, n - 1)] * w[:, None, None]
    return np.moveaxis(result, 0, axis)


def _resample(
    volume: np.ndarray, shape: Sequence[int], start: Sequence[float], step: Sequence[float], zero_outside: bool = True
) -> np.ndarray:
    """Sample ``volume`` on a ``shape`` grid whose voxel ``i`` sits at source voxel ``start + i * step``."""
    for axis in range(3):
        volume = _interp_axis(volume, axis, shape[axis], start[axis], step[axis], zero_outside)
    return volume


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], control_points: int = 6) -> np.ndarray:
    """Smooth random field of roughly unit standard deviation: coarse Gaussian noise, linearly upsampled."""
    coarse = rng.standard_normal((control_points,) * 3).astype(np.float32)
    step = [control_points / n for n in shape]
    return _resample(coarse, shape, [0.5 * s - 0.5 for s in step], step, zero_outside=False)


# ----------------------------------------------------------------------------------------------------------------
# anatomy


@dataclass(frozen=True)
class _Anatomy:
    """Brain voxels of the target grid (stored LPS voxel order) and their tissue maps; cached, so read-only.

    The per-voxel maps are vectors over the brain voxels only (a fifth of the volume): the generator never
    touches the background, which stays 0 as in skull-stripped BraTS.
    """

    shape: tuple[int, int, int]
    spacing_mm: np.ndarray  # size of a target voxel in the BraTS mm frame, per axis
    index: np.ndarray  # flat (C-order) index of each brain voxel
    voxels: np.ndarray  # [N, 3] voxel coordinates of each brain voxel
    lookup: np.ndarray  # int32 volume: position of a voxel in ``index``, -1 outside the brain
    t1: np.ndarray  # T1-weighted texture in [0, 1]
    gm: np.ndarray  # grey-matter probability
    wm: np.ndarray  # white-matter probability
    csf: np.ndarray  # CSF probability (the rest of the brain: ventricles, sulci)
    monomials: np.ndarray  # [9, N] linear and quadratic monomials of the coordinates scaled to [-1, 1] (bias fields)


_MNI152_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def _read_mni152() -> dict[str, np.ndarray]:
    """nilearn's MNI152 (ICBM 2009c) T1 template and GM/WM probability maps, scaled to [0, 1], and a brain mask.

    The files are read straight from nilearn's package data, because importing ``nilearn.datasets`` pulls in
    scikit-learn and takes seconds; nilearn's loaders are the fallback should the files move.
    """
    folder = Path(importlib.util.find_spec("nilearn").submodule_search_locations[0]) / "datasets" / "data"
    paths = {name: folder / file for name, file in _MNI152_FILES.items()}
    if all(path.is_file() for path in paths.values()):
        images = {name: nib.load(path) for name, path in paths.items()}
    else:
        from nilearn import datasets

        images = {
            "t1": datasets.load_mni152_template(resolution=1),
            "gm": datasets.load_mni152_gm_template(resolution=1),
            "wm": datasets.load_mni152_wm_template(resolution=1),
        }
    maps = {name: image.get_fdata(dtype=np.float32) for name, image in images.items()}
    maps = {name: volume / volume.max() for name, volume in maps.items()}
    maps["brain"] = (maps["t1"] > 0.2).astype(np.float32)  # nilearn's load_mni152_brain_mask threshold
    return maps


def _mni152_maps(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """T1, GM, WM and brain maps of the MNI152 template, its brain centred in the BraTS field, on ``shape``."""
    maps = _read_mni152()
    corners = np.argwhere(maps["brain"] > 0.5)
    brain_centre = (corners.min(0) + corners.max(0)) / 2.0
    step = np.asarray(BRATS_SHAPE, float) / np.asarray(shape, float)
    # target voxel i lies at (i + 0.5) * step - 0.5 in the 1 mm BraTS frame, whose centre is the brain's centre
    start = 0.5 * step - 0.5 - (np.asarray(BRATS_SHAPE, float) - 1.0) / 2.0 + brain_centre
    return {k: _resample(v, shape, start, step) for k, v in maps.items()}


def _brats_mm_grid(shape: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Open grid of voxel-centre coordinates in mm of the BraTS frame, centred at 0."""
    step = np.asarray(BRATS_SHAPE, float) / np.asarray(shape, float)
    axes = [((np.arange(n) + 0.5) * s - 0.5 * b).astype(np.float32) for n, s, b in zip(shape, step, BRATS_SHAPE)]
    return np.ix_(*axes)


def _procedural_maps(shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """A stand-in brain without nilearn: an ellipsoid with folded cortex, white matter, ventricles and sulcal CSF."""
    rng = np.random.default_rng(12345)  # fixed: one anatomy for every subject, like the template
    x, y, z = _brats_mm_grid(shape)
    z = z - 5.0
    # normalised radius of the brain ellipsoid (70 x 88 x 66 mm semi-axes, like an adult brain), folded surface
    radius = np.sqrt((x / 70.0) ** 2 + (y / 88.0) ** 2 + (z / 66.0) ** 2) * (
        1.0 + 0.035 * _smooth_noise(rng, shape, 14)
    )
    brain = np.clip((1.0 - radius) / 0.02 + 0.5, 0.0, 1.0)
    depth = np.clip(1.0 - radius, 0.0, 1.0)  # 0 on the surface
    # gyri: the grey/white boundary undulates; sulci: CSF clefts where the cortex folds inwards
    gyri = _smooth_noise(rng, shape, 28)
    cortex = np.clip(0.07 + 0.035 * gyri, 0.03, None)
    wm = np.clip((depth - cortex) / 0.01, 0.0, 1.0)
    sulci = np.clip((gyri - 0.6) / 0.3, 0.0, 1.0) * (depth < cortex)
    ventricles = sum(
        np.clip((1.0 - np.sqrt(((x - sx) / 7.0) ** 2 + ((y - 5.0) / 26.0) ** 2 + ((z - 8.0) / 11.0) ** 2)) / 0.2, 0, 1)
        for sx in (-9.0, 9.0)
    )
    csf = np.clip(np.maximum(sulci, ventricles), 0.0, 1.0) * brain
    wm = wm * (1.0 - csf) * brain
    gm = np.clip(brain - wm - csf, 0.0, 1.0)
    return {"t1": 0.3 * csf + 0.65 * gm + 0.86 * wm, "gm": gm, "wm": wm, "brain": brain}


@lru_cache(maxsize=1)
def _nilearn_available() -> bool:
    if importlib.util.find_spec("nilearn") is None:
        logger.warning(
            "nilearn is not installed: synthetic brains use the procedural anatomy, so this dataset differs from one "
            "generated with nilearn from the same seed (pip install nilearn for the default MNI152 anatomy)"
        )
        return False
    return True


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sizes of at least 16 voxels, got {shape}")
    return shape


def _resolve_anatomy(source: str) -> str:
    """The anatomy ``source`` stands for: "mni152" or "procedural" ("auto": MNI152 if nilearn imports)."""
    if source not in ("auto", "mni152", "procedural"):
        raise ValueError(f"unknown anatomy {source!r}: use 'auto', 'mni152' or 'procedural'")
    if source == "mni152" and not _nilearn_available():
        raise ImportError("anatomy='mni152' needs nilearn: pip install nilearn (or use anatomy='procedural')")
    use_mni152 = source == "mni152" or (source == "auto" and _nilearn_available())
    return "mni152" if use_mni152 else "procedural"


def _load_anatomy(shape: tuple[int, int, int], source: str) -> _Anatomy:
    """The anatomy for ``shape`` from ``source``: "mni152", "procedural" or "auto" (MNI152 if nilearn imports)."""
    return _build_anatomy(shape, _resolve_anatomy(source))


@lru_cache(maxsize=4)
def _build_anatomy(shape: tuple[int, int, int], source: str) -> _Anatomy:
    """Brain voxels and tissue maps of ``source`` ("mni152" or "procedural") on ``shape``, in LPS voxel order."""
    maps = _procedural_maps(shape) if source == "procedural" else _mni152_maps(shape)
    # RAS voxel order -> the LPS order BraTS stores (axes 0 and 1 reversed)
    maps = {k: np.ascontiguousarray(np.broadcast_to(v, shape)[::-1, ::-1]) for k, v in maps.items()}
    index = np.flatnonzero(maps["brain"] > 0.5)
    lookup = np.full(shape, -1, np.int32)
    lookup.reshape(-1)[index] = np.arange(index.size, dtype=np.int32)
    gm, wm = (np.clip(maps[k].ravel()[index], 0.0, 1.0) for k in ("gm", "wm"))
    voxels = np.stack(np.unravel_index(index, shape), axis=1).astype(np.int32)
    x, y, z = (2.0 * voxels / (np.asarray(shape) - 1.0) - 1.0).astype(np.float32).T
    return _Anatomy(
        shape=shape,
        spacing_mm=np.asarray(BRATS_SHAPE, float) / shape,
        index=index,
        voxels=voxels,
        lookup=lookup,
        t1=np.clip(maps["t1"].ravel()[index], 0.0, 1.0),
        gm=gm,
        wm=wm,
        csf=np.clip(1.0 - gm - wm, 0.0, 1.0),
        monomials=np.stack((x, y, z, x * x, y * y, z * z, x * y, y * z, x * z)),
    )


# ----------------------------------------------------------------------------------------------------------------
# tumour phenotypes


@dataclass(frozen=True)
class TumourPhenotype:
    """Parameters of one synthetic glioma (sizes in mm of the BraTS frame).

    Attributes:
        grade: ``"HGG"`` or ``"LGG"``.
        core_radius_mm: mean radius of the tumour core (labels 1 and 4).
        edema_ratio: radius of the edema (label 2) relative to the core.
        necrosis_fraction: radius of the necrotic centre relative to the core (0: no necrosis).
        enhancement: tendency of the core rim to enhance, a logit: > 0 mostly enhancing, < 0 mostly not.
        irregularity: amplitude of the boundary perturbation, relative to the radius.
    """

    grade: str
    core_radius_mm: float
    edema_ratio: float
    necrosis_fraction: float
    enhancement: float
    irregularity: float


def sample_phenotype(grade: str, rng: np.random.Generator) -> TumourPhenotype:
    """Draw a tumour phenotype for ``grade``.

    The two grades' distributions overlap: ~15% of LGGs enhance (like anaplastic or pilocytic tumours) and ~10% of
    HGGs barely do; sizes and edema extents overlap broadly.

    Args:
        grade: ``"HGG"`` or ``"LGG"``.
        rng: random generator.

    Returns:
        The phenotype.

    Raises:
        ValueError: for an unknown grade.
    """
    if grade == "HGG":
        radius = float(np.clip(rng.lognormal(np.log(17.0), 0.28), 7.0, 34.0))
        edema = float(rng.uniform(1.45, 2.3))
        necrosis = float(rng.uniform(0.35, 0.75)) if rng.random() < 0.85 else 0.0
        enhancement = float(rng.uniform(-1.0, 0.2)) if rng.random() < 0.10 else float(rng.uniform(0.4, 2.0))
    elif grade == "LGG":
        radius = float(np.clip(rng.lognormal(np.log(13.0), 0.30), 6.0, 30.0))
        edema = float(rng.uniform(1.1, 1.7))
        necrosis = float(rng.uniform(0.2, 0.45)) if rng.random() < 0.12 else 0.0
        enhancement = float(rng.uniform(-0.4, 0.9)) if rng.random() < 0.15 else float(rng.uniform(-2.5, -0.8))
    else:
        raise ValueError(f"unknown grade {grade!r}: use one of {GRADE_CLASS_NAMES}")
    return TumourPhenotype(
        grade=grade,
        core_radius_mm=radius,
        edema_ratio=edema,
        necrosis_fraction=necrosis,
        enhancement=enhancement,
        irregularity=float(rng.uniform(0.06, 0.2)),
    )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _tumour_fields(
    anatomy: _Anatomy, phenotype: TumourPhenotype, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Soft memberships (0..1) of the tumour compartments at the brain voxels around the tumour.

    Returns:
        The positions of those voxels in the anatomy's brain-voxel vectors, and per compartment (``edema``,
        ``core``, ``necrosis``, ``enhancing``) its membership there, plus a smooth ``texture`` field.
    """
    # centre in the cerebral white matter, not in the cerebellum or brainstem (the lowest third of the brain)
    height = anatomy.voxels[:, 2]
    cerebral = height >= height.min() + 0.35 * (height.max() - height.min())
    centre = anatomy.voxels[rng.choice(np.flatnonzero((anatomy.wm > 0.5) & cerebral))]

    # a randomly rotated ellipsoid (normalised radius 1 on the core surface) with a bumpy boundary,
    # radius * exp(amplitude * noise) with the noise clipped to +-2, so the box below holds the whole tumour
    axes = phenotype.core_radius_mm * rng.uniform(0.75, 1.25, size=3)
    amplitude_core, amplitude_edema = phenotype.irregularity, 1.3 * phenotype.irregularity
    extent_mm = axes.max() * phenotype.edema_ratio * np.exp(2.0 * amplitude_edema) + 2.0
    half = np.ceil(extent_mm / anatomy.spacing_mm).astype(int) + 1
    box = tuple(slice(max(c - h, 0), min(c + h + 1, n)) for c, h, n in zip(centre, half, anatomy.shape))
    box_shape = tuple(s.stop - s.start for s in box)
    in_box = anatomy.lookup[box]
    in_brain = in_box >= 0
    positions = in_box[in_brain]

    offsets_mm = ((anatomy.voxels[positions] - centre) * anatomy.spacing_mm).astype(np.float32)
    radius = np.linalg.norm(offsets_mm @ _random_rotation(rng).T.astype(np.float32) / axes.astype(np.float32), axis=1)

    def field(control_points: int) -> np.ndarray:
        return _smooth_noise(rng, box_shape, control_points)[in_brain]

    radius_core = radius * np.exp(amplitude_core * np.clip(field(5), -2.0, 2.0))
    radius_edema = radius * np.exp(amplitude_edema * np.clip(field(5), -2.0, 2.0))
    width = 1.0 / phenotype.core_radius_mm  # ~1 mm soft boundary, in normalised radius units
    core = _sigmoid((1.0 - radius_core) / width)
    # edema spreads through the parenchyma and spares the ventricles and sulci
    edema = np.maximum(_sigmoid((phenotype.edema_ratio - radius_edema) / width) * (1.0 - anatomy.csf[positions]), core)
    necrosis = _sigmoid((phenotype.necrosis_fraction - radius_core) / width) * (phenotype.necrosis_fraction > 0)
    enhancing = _sigmoid((phenotype.enhancement + 1.2 * field(6)) / 0.15)
    fields = {"edema": edema, "core": core, "necrosis": necrosis, "enhancing": enhancing, "texture": field(9)}
    return positions, fields


# ----------------------------------------------------------------------------------------------------------------
# subjects


@dataclass(frozen=True)
class SyntheticSubject:
    """One synthetic subject as written to disk.

    Attributes:
        images: int16 volume per modality (keys ``t1``, ``t1ce``, ``t2``, ``flair``), in the stored (LPS) voxel order.
        seg: uint8 BraTS segmentation (0 background, 1 necrotic/non-enhancing core, 2 edema, 4 enhancing).
        affine: the 4x4 voxel-to-RAS affine of every volume (1 mm voxels).
        phenotype: the tumour parameters the subject was drawn from.
    """

    images: dict[str, np.ndarray]
    seg: np.ndarray
    affine: np.ndarray
    phenotype: TumourPhenotype


def synthesize_subject(
    grade: str,
    shape: Sequence[int] = BRATS_SHAPE,
    seed: int | Sequence[int] | np.random.SeedSequence = 0,
    anatomy: str = "auto",
) -> SyntheticSubject:
    """Synthesise the four MRI modalities and the segmentation of one glioma patient.

    Args:
        grade: ``"HGG"`` or ``"LGG"``.
        shape: volume shape in voxels; the 240x240x155 BraTS field is scaled onto it.
        seed: seed of the subject's random generator (anything ``numpy.random.default_rng`` accepts).
        anatomy: ``"mni152"`` (nilearn's template), ``"procedural"`` or ``"auto"`` (MNI152 when nilearn imports).

    Returns:
        The subject.

    Raises:
        ValueError: for an unknown grade or anatomy, or a shape that is not three sizes of at least 16.
    """
    shape = _check_shape(shape)
    rng = np.random.default_rng(seed)
    phenotype = sample_phenotype(grade, rng)
    atlas = _load_anatomy(shape, anatomy)
    where, tumour = _tumour_fields(atlas, phenotype, rng)
    texture = 1.0 + 0.06 * tumour["texture"]

    images: dict[str, np.ndarray] = {}
    for m, modality in enumerate(MODALITIES):
        # healthy tissue: mixture of tissue signals, with the template's own texture on T1-weighted contrasts
        signal = sum(getattr(atlas, tissue) * contrast[m] for tissue, contrast in _TISSUE_SIGNAL.items())
        if modality in ("t1", "t1ce"):
            signal = 0.5 * signal + 0.5 * atlas.t1
        # tumour compartments painted over each other, outside in; each subject's tumour signals vary a little
        jitter = 1.0 + _TUMOUR_SIGNAL_JITTER * rng.standard_normal(len(_TUMOUR_SIGNAL))
        edema_s, necrosis_s, non_enhancing_s, enhancing_s = (v[m] * j for v, j in zip(_TUMOUR_SIGNAL.values(), jitter))
        core_signal = tumour["enhancing"] * enhancing_s + (1.0 - tumour["enhancing"]) * non_enhancing_s
        local = signal[where]
        local += tumour["edema"] * (edema_s * texture - local)
        local += tumour["core"] * (core_signal * texture - local)
        local += tumour["necrosis"] * (necrosis_s - local)
        signal[where] = local

        # scanner: smooth bias field, Rician noise, arbitrary units
        log_bias = rng.normal(0.0, 0.1, size=len(atlas.monomials)).astype(np.float32) @ atlas.monomials
        signal *= np.exp(log_bias - log_bias.mean())
        noise = rng.standard_normal((2, signal.size), dtype=np.float32) * rng.uniform(0.01, 0.035)
        signal = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2) * (
            _MODALITY_SCALE[modality] * rng.lognormal(0.0, 0.2)
        )
        volume = np.zeros(shape, np.int16)  # background 0, as in skull-stripped BraTS
        volume.reshape(-1)[atlas.index] = np.clip(np.rint(signal), 1, np.iinfo(np.int16).max).astype(np.int16)
        images[modality] = volume

    labels = np.zeros(where.size, np.uint8)
    core = tumour["core"] > 0.5
    labels[tumour["edema"] > 0.5] = _SEG_EDEMA
    labels[core] = _SEG_CORE
    labels[core & (tumour["enhancing"] > 0.5)] = _SEG_ENHANCING
    labels[tumour["necrosis"] > 0.5] = _SEG_CORE
    seg = np.zeros(shape, np.uint8)
    seg.reshape(-1)[atlas.index[where]] = labels

    # BraTS volumes are LPS: voxel axes 0 and 1 run towards the patient's left and posterior
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1.0
    return SyntheticSubject(images, seg, affine, phenotype)


# ----------------------------------------------------------------------------------------------------------------
# datasets


@dataclass(frozen=True)
class _PlannedSubject:
    grade: str
    index: int  # index within the grade: fixes the subject's random stream
    subject_id: str
    folder: str  # relative to the dataset root


# institutions of the BraTS 2019 ids, disjoint between the grades so that ids are unique
_BRATS19_INSTITUTIONS = {
    "HGG": ("CBICA", "TCIA01", "TCIA02", "TCIA08", "TMC", "2013"),
    "LGG": ("TCIA09", "TCIA10", "TCIA12", "TCIA13"),
}


def _brats2019_id(grade: str, index: int) -> str:
    institutions = _BRATS19_INSTITUTIONS[grade]
    return f"BraTS19_{institutions[index % len(institutions)]}_{index:03d}_1"


def _plan(layout: str, n_hgg: int, n_lgg: int) -> list[_PlannedSubject]:
    """Subject ids and folders in the naming of ``layout`` (HGG first, as in the BraTS 2020 numbering)."""
    planned = []
    for grade, count in (("HGG", n_hgg), ("LGG", n_lgg)):
        for index in range(count):
            number = len(planned)
            if layout == "brats2019":
                subject = _brats2019_id(grade, index)
                folder = f"{grade}/{subject}"
            elif layout == "brats2020":
                subject = folder = f"BraTS20_Training_{number + 1:03d}"
            else:
                subject = folder = f"BraTS2021_{number:05d}"
            planned.append(_PlannedSubject(grade, index, subject, folder))
    return planned


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _write_label_files(root: Path, layout: str, planned: Sequence[_PlannedSubject]) -> None:
    if layout == "brats2020":
        # the columns of the real name_mapping.csv; the 2019 id is the subject's id in a synthetic 2019 dataset
        header = (
            "Grade",
            "BraTS_2017_subject_ID",
            "BraTS_2018_subject_ID",
            "TCGA_TCIA_subject_ID",
            "BraTS_2019_subject_ID",
            "BraTS_2020_subject_ID",
        )
        rows = [(p.grade, "NA", "NA", "NA", _brats2019_id(p.grade, p.index), p.subject_id) for p in planned]
        atomic_write_text(root / "name_mapping.csv", _csv_text(header, rows))
    elif layout == "brats2021":
        # BraTS 2021 has no grade; the RSNA-MICCAI labels file has BraTS21ID,MGMT_value. The synthetic tumours
        # carry a grade phenotype, not an MGMT status, so the label column here is the grade.
        rows = [(p.subject_id.rsplit("_", 1)[1], p.grade) for p in planned]
        atomic_write_text(root / BRATS2021_LABELS_FILE, _csv_text(("BraTS21ID", "Grade"), rows))


def _subject_seed(seed: int, grade: str, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, GRADE_CLASS_NAMES.index(grade), index])


def generate_synthetic_brats(
    out_dir: str | os.PathLike,
    layout: str = "brats2019",
    n_hgg: int = 10,
    n_lgg: int = 10,
    shape: Sequence[int] = BRATS_SHAPE,
    seed: int = 0,
    anatomy: str = "auto",
    num_workers: int = 1,
    progress: bool | None = None,
) -> Path:
    """Write a synthetic BraTS dataset in the folder and file naming of a BraTS release.

    * ``brats2019``: ``{HGG,LGG}/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz`` with ids like ``BraTS19_TCIA01_000_1``;
    * ``brats2020``: ``BraTS20_Training_NNN/`` folders and ``name_mapping.csv`` (columns ``Grade``,
      ``BraTS_2020_subject_ID``, ...);
    * ``brats2021``: ``BraTS2021_NNNNN/`` folders and ``train_labels.csv`` with columns ``BraTS21ID,Grade``
      (real BraTS 2021 has no grade: for synthetic data the grade stands in for a label such as ``MGMT_value``).

    Args:
        out_dir: dataset root; created if needed. Existing files of the same names are replaced.
        layout: one of :data:`SYNTHETIC_LAYOUTS`.
        n_hgg: number of high-grade subjects.
        n_lgg: number of low-grade subjects.
        shape: volume shape in voxels (BraTS: 240x240x155).
        seed: dataset seed; subject ``i`` of a grade depends only on ``(seed, grade, i)``.
        anatomy: brain anatomy source, see :func:`synthesize_subject`.
        num_workers: subjects synthesised in parallel threads (NumPy and zlib release the GIL); the files do not
            depend on it.
        progress: show a progress bar; by default when more than 20 subjects are written.

    Returns:
        The dataset root.

    Raises:
        ValueError: for an unknown layout or negative counts.
    """
    if layout not in SYNTHETIC_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: use one of {SYNTHETIC_LAYOUTS}")
    if n_hgg < 0 or n_lgg < 0 or n_hgg + n_lgg == 0:
        raise ValueError(f"need a non-negative number of subjects per grade and at least one, got {n_hgg=}, {n_lgg=}")
    from tqdm.auto import tqdm

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    planned = _plan(layout, n_hgg, n_lgg)
    shape = _check_shape(shape)
    anatomy = _resolve_anatomy(anatomy)  # the same data everywhere "auto" resolves the same way: recorded below
    _load_anatomy(shape, anatomy)  # build the cached anatomy once, before the threads need it

    def write(subject: _PlannedSubject) -> None:
        synthetic = synthesize_subject(subject.grade, shape, _subject_seed(seed, subject.grade, subject.index), anatomy)
        folder = root / subject.folder
        for modality, volume in synthetic.images.items():
            save_nifti(volume, synthetic.affine, folder / f"{subject.subject_id}_{modality}.nii.gz")
        save_nifti(synthetic.seg, synthetic.affine, folder / f"{subject.subject_id}_seg.nii.gz")

    show = progress if progress is not None else len(planned) > 20
    # without the bar, a log line about every tenth of the subjects says how far it is and how long is left
    log_every, start = max(1, -(-len(planned) // 10)), time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        bar = tqdm(pool.map(write, planned), total=len(planned), desc="synth", unit="subject", disable=not show)
        for done, _ in enumerate(bar, start=1):
            if not show and (done % log_every == 0 or done == len(planned)):
                elapsed = time.perf_counter() - start
                eta = elapsed / done * (len(planned) - done)
                logger.info("synth: %d/%d subjects, %.1f s elapsed, ETA %.1f s", done, len(planned), elapsed, eta)
    _write_label_files(root, layout, planned)
    info = {"layout": layout, "n_hgg": n_hgg, "n_lgg": n_lgg, "shape": list(shape), "seed": seed, "anatomy": anatomy}
    atomic_write_text(root / SYNTHETIC_INFO_FILE, json.dumps(info, indent=2) + "\n")
    logger.info(
        "wrote %d synthetic subjects (%s, shape %s, %s anatomy) to %s",
        len(planned),
        layout,
        tuple(shape),
        anatomy,
        root,
    )
    return root


def read_synthetic_info(root: str | os.PathLike) -> dict[str, Any] | None:
    """How the synthetic dataset in ``root`` was generated: the arguments of :func:`generate_synthetic_brats` with
    ``anatomy`` resolved ("mni152" or "procedural"); ``None`` for a dataset without that record (real data, or one
    generated before the record existed).

    The anatomy matters: without nilearn, ``anatomy="auto"`` falls back to the procedural brain, and the same seed
    then gives other data.

    Raises:
        ValueError: if the record is not valid JSON.
    """
    path = Path(root) / SYNTHETIC_INFO_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); delete it or regenerate the dataset") from None


def describe_synthetic(root: str | os.PathLike) -> str | None:
    """One line on how the synthetic dataset in ``root`` was generated, for reports (``"synthetic: seed 0, 160 HGG
    + 160 LGG, 64x64x48 voxels, mni152 anatomy"``); ``None`` without the record (see :func:`read_synthetic_info`)."""
    info = read_synthetic_info(root)
    if info is None:
        return None
    shape = "x".join(str(size) for size in info.get("shape", ()))
    return (
        f"synthetic: seed {info.get('seed')}, {info.get('n_hgg')} HGG + {info.get('n_lgg')} LGG, {shape} voxels, "
        f"{info.get('anatomy')} anatomy"
    )
