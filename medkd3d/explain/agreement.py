"""Teacher-student agreement of explanation maps: did distillation transfer *where* the teacher looks?

For two maps of the same subject on the same grid (e.g. the teacher's and the student's Grad-CAM) and an
optional region mask ``R`` (e.g. the brain, intersected with the voxels both maps cover):

- **Pearson correlation** ``r = cov(a, b) / (std(a) std(b))`` over the voxels of ``R``;
- **top-fraction overlap**: the ``k = ceil(f * |R|)`` highest voxels of each map (``f = 0.1``: the top 10%; ties
  at the cut-off are broken by voxel order, and voxels of value 0 never count as "top"), compared by
  ``Dice = 2 |A ∩ B| / (|A| + |B|)`` and ``IoU = |A ∩ B| / |A ∪ B|``;
- **mass in tumour**, when a segmentation exists: ``sum(m over R ∩ T) / sum(m over R)`` with ``T = seg > 0``,
  for each map, next to ``|R ∩ T| / |R|``, what a uniform map would score (the chance level).

Undefined values (a constant map has no correlation, an all-zero map has no mass) are ``None``. A map that is
constant on the region - a *collapsed* map, typically the all-zero Grad-CAM of a student with no evidence for the
class anywhere - is flagged (``teacher_constant`` / ``student_constant``), and :func:`describe_agreement` says so in
words instead of printing an undefined number.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "describe_agreement",
    "describe_map",
    "is_constant",
    "map_agreement",
    "map_in_tumour",
    "mass_inside",
    "pearson_correlation",
    "top_fraction_mask",
    "top_fraction_overlap",
]


def _region(shape: tuple[int, ...], mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"the region mask has shape {mask.shape} but the maps have shape {shape}")
    return mask


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"maps of shapes {a.shape} and {b.shape} cannot be compared; compute both on the same grid "
            "(medkd3d explain writes every map on the subject's original image grid)"
        )
    return a, b


def pearson_correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """Pearson correlation of two maps over the voxels of ``mask`` (all voxels when ``None``).

    Returns:
        ``r`` in ``[-1, 1]``, or ``None`` when either map is constant on the region (or it is empty).
    """
    a, b = _check_pair(a, b)
    region = _region(a.shape, mask)
    x, y = a[region], b[region]
    if x.size == 0:
        return None
    x, y = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / denominator) if denominator > 0 else None


def top_fraction_mask(values: np.ndarray, fraction: float = 0.1, mask: np.ndarray | None = None) -> np.ndarray:
    """The ``ceil(fraction * |mask|)`` highest voxels of ``values`` inside ``mask`` (zeros excluded).

    Args:
        values: a map.
        fraction: share of the region's voxels to keep, in ``(0, 1]``.
        mask: the region (all voxels when ``None``).

    Returns:
        Boolean array of ``values``' shape.

    Raises:
        ValueError: for a fraction outside ``(0, 1]``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    values = np.asarray(values, dtype=np.float64)
    region = _region(values.shape, mask)
    candidates = np.flatnonzero(region.ravel())
    count = math.ceil(fraction * candidates.size)
    order = np.argsort(-values.ravel()[candidates], kind="stable")[:count]
    chosen = candidates[order]
    chosen = chosen[values.ravel()[chosen] > 0]
    top = np.zeros(values.size, dtype=bool)
    top[chosen] = True
    return top.reshape(values.shape)


def top_fraction_overlap(
    a: np.ndarray, b: np.ndarray, fraction: float = 0.1, mask: np.ndarray | None = None
) -> dict[str, float | None]:
    """Dice and IoU of the top-``fraction`` voxel sets of two maps (see the module docstring).

    Returns:
        ``{"dice": ..., "iou": ...}``; ``None`` when both sets are empty (both maps zero on the region).
    """
    a, b = _check_pair(a, b)
    top_a, top_b = top_fraction_mask(a, fraction, mask), top_fraction_mask(b, fraction, mask)
    intersection = int(np.logical_and(top_a, top_b).sum())
    union = int(np.logical_or(top_a, top_b).sum())
    total = int(top_a.sum() + top_b.sum())
    return {
        "dice": 2 * intersection / total if total else None,
        "iou": intersection / union if union else None,
    }


def mass_inside(values: np.ndarray, inside: np.ndarray, mask: np.ndarray | None = None) -> float | None:
    """Fraction of a map's mass that lies in ``inside``: ``sum(values[R ∩ inside]) / sum(values[R])``.

    Args:
        values: a non-negative map.
        inside: boolean region, e.g. ``seg > 0``.
        mask: the region ``R`` (all voxels when ``None``).

    Returns:
        The fraction in ``[0, 1]``, or ``None`` when the map has no mass on ``R``.
    """
    values = np.asarray(values, dtype=np.float64)
    inside = _region(values.shape, inside)
    region = _region(values.shape, mask)
    total = float(values[region].sum())
    return float(values[region & inside].sum()) / total if total > 0 else None


def is_constant(values: np.ndarray, mask: np.ndarray | None = None) -> bool:
    """Whether a map has a single value on ``mask`` (all voxels when ``None``): it marks no voxel as more important.

    An empty region counts as constant (there is nothing to point at).
    """
    values = np.asarray(values, dtype=np.float64)
    inside = values[_region(values.shape, mask)]
    return inside.size == 0 or float(inside.max() - inside.min()) == 0.0


def map_in_tumour(values: np.ndarray, seg: np.ndarray | None = None, mask: np.ndarray | None = None) -> dict[str, Any]:
    """What one map says on its own: whether it is constant and, with a segmentation, its mass in the tumour.

    Args:
        values: a non-negative map.
        seg: optional segmentation on the same grid; the tumour is ``seg > 0``.
        mask: the region (e.g. the brain voxels the map covers); all voxels when ``None``.

    Returns:
        ``{"constant", "voxels"}`` and, with ``seg``, ``"mass_in_tumour"`` (``None`` for a map without mass) and
        ``"tumour_fraction_of_region"`` (what a uniform map scores: the chance level).
    """
    values = np.asarray(values, dtype=np.float64)
    region = _region(values.shape, mask)
    result: dict[str, Any] = {"constant": is_constant(values, region), "voxels": int(region.sum())}
    if seg is not None:
        tumour = _region(values.shape, np.asarray(seg) > 0)
        result["mass_in_tumour"] = mass_inside(values, tumour, region)
        result["tumour_fraction_of_region"] = float((tumour & region).sum() / region.sum()) if region.any() else None
    return result


def map_agreement(
    teacher: np.ndarray,
    student: np.ndarray,
    seg: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    fraction: float = 0.1,
) -> dict[str, Any]:
    """Every agreement metric of two maps on the same grid.

    Args:
        teacher: the teacher's map.
        student: the student's map.
        seg: optional segmentation on the same grid; the tumour is ``seg > 0``.
        mask: region to compare on (e.g. brain voxels covered by both maps); all voxels when ``None``.
        fraction: the top fraction of voxels for the overlap.

    Returns:
        ``{"voxels", "pearson", "top_fraction", "top_dice", "top_iou", "teacher_constant", "student_constant"}``
        and, with ``seg``, ``"teacher_mass_in_tumour"``, ``"student_mass_in_tumour"`` and
        ``"tumour_fraction_of_region"`` (the chance level).
    """
    teacher, student = _check_pair(teacher, student)
    region = _region(teacher.shape, mask)
    overlap = top_fraction_overlap(teacher, student, fraction, region)
    result: dict[str, Any] = {
        "voxels": int(region.sum()),
        "pearson": pearson_correlation(teacher, student, region),
        "top_fraction": fraction,
        "top_dice": overlap["dice"],
        "top_iou": overlap["iou"],
        "teacher_constant": is_constant(teacher, region),
        "student_constant": is_constant(student, region),
    }
    if seg is not None:
        tumour = _region(teacher.shape, np.asarray(seg) > 0)
        result.update(
            teacher_mass_in_tumour=mass_inside(teacher, tumour, region),
            student_mass_in_tumour=mass_inside(student, tumour, region),
            tumour_fraction_of_region=float((tumour & region).sum() / region.sum()) if region.any() else None,
        )
    return result


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def describe_map(name: str, report: Mapping[str, Any]) -> list[str]:
    """Lines that say what one map's report means: its mass in the tumour against chance, or that it collapsed.

    Args:
        name: what the map is, e.g. ``"teacher map (brats_teacher_vggvit3d)"``.
        report: :func:`map_in_tumour` of the map (or the same keys).

    Returns:
        One or two lines.
    """
    lines = []
    if report.get("constant"):
        lines.append(
            f"WARNING: the {name} is constant (collapsed): it rates every voxel the same, so it shows no location "
            "(the model found no evidence for the class, or its explained layer does not vary)"
        )
    mass, chance = report.get("mass_in_tumour"), report.get("tumour_fraction_of_region")
    if "mass_in_tumour" not in report:
        return lines
    if mass is None:
        lines.append(f"{name}: no mass (all zero), so none of it is inside the tumour segmentation")
    elif chance:
        lines.append(
            f"{name}: {_percent(mass)} of its mass is inside the tumour segmentation (a uniform map: "
            f"{_percent(chance)}, so {mass / chance:.2f}x chance: above 1 the map favours the tumour)"
        )
    else:
        lines.append(f"{name}: {_percent(mass)} of its mass is inside the tumour segmentation (no tumour voxels)")
    return lines


def describe_agreement(report: Mapping[str, Any], teacher: str = "teacher", student: str = "student") -> list[str]:
    """Lines that give each number of :func:`map_agreement` with its meaning, and flag collapsed maps.

    Args:
        report: the result of :func:`map_agreement`.
        teacher: name of the teacher's map in the lines.
        student: name of the student's map.

    Returns:
        Human-readable lines (no trailing newline).
    """
    fraction = report["top_fraction"]
    collapsed = [n for n, key in ((teacher, "teacher_constant"), (student, "student_constant")) if report.get(key)]
    lines = [f"compared on {report['voxels']} voxels (brain voxels both maps cover)"]
    if report["pearson"] is None:
        why = {0: "no voxels to compare", 1: f"the {''.join(collapsed)} map is constant"}.get(
            len(collapsed), "both maps are constant"
        )
        lines.append(f"pearson r: undefined ({why}: a constant map correlates with nothing)")
    else:
        lines.append(
            f"pearson r = {report['pearson']:.3f}: voxel-wise correlation of the two maps "
            "(1 = the same pattern, 0 = unrelated, negative = opposite)"
        )
    if report["top_dice"] is None:
        lines.append(f"top-{fraction:.0%} dice: undefined (both maps are zero everywhere)")
    else:
        lines.append(
            f"top-{fraction:.0%} dice = {report['top_dice']:.3f}: overlap of the {fraction:.0%} most important voxels "
            f"of each map (1 = the same voxels; two unrelated maps score about {fraction:.2f})"
            + (" - meaningless while a map is constant" if collapsed else "")
        )
    for name, key in ((teacher, "teacher"), (student, "student")):
        own = {"constant": report.get(f"{key}_constant")}
        if f"{key}_mass_in_tumour" in report:
            own.update(
                mass_in_tumour=report[f"{key}_mass_in_tumour"],
                tumour_fraction_of_region=report.get("tumour_fraction_of_region"),
            )
        lines += describe_map(f"{name} map", own)
    return lines
