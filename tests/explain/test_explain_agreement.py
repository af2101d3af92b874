"""Teacher-student map agreement on hand-made maps, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medkd3d.explain.agreement import (
    map_agreement,
    mass_inside,
    pearson_correlation,
    top_fraction_mask,
    top_fraction_overlap,
)


def test_pearson_by_hand() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([2.0, 1.0, 4.0, 3.0])
    # means 2.5; deviations (-1.5, -0.5, 0.5, 1.5) and (-0.5, -1.5, 1.5, 0.5): cov 0.75+0.75+0.75+0.75 = 3, var 5 each
    assert pearson_correlation(a, b) == pytest.approx(3 / 5)
    assert pearson_correlation(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson_correlation(a, -a) == pytest.approx(-1.0)
    # restricted to the first three voxels: (1,2,3) vs (2,1,4): cov (-1)(-1/3)+0+(1)(5/3) = 2, var 2 and 14/3
    mask = np.array([True, True, True, False])
    assert pearson_correlation(a, b, mask) == pytest.approx(2 / math.sqrt(2 * 14 / 3))
    assert pearson_correlation(a, np.ones(4)) is None  # a constant map has no correlation


def test_top_fraction_overlap_by_hand() -> None:
    teacher = np.zeros((4, 5))
    student = np.zeros((4, 5))
    teacher.flat[[0, 1]] = [5.0, 4.0]  # 10% of 20 voxels = 2 voxels: {0, 1}
    student.flat[[1, 7]] = [9.0, 8.0]  # {1, 7}
    result = top_fraction_overlap(teacher, student, fraction=0.1)
    assert result == {"dice": pytest.approx(2 * 1 / 4), "iou": pytest.approx(1 / 3)}
    # with a 50% region the top 10% is ceil(0.1 * 10) = 1 voxel each: {0} and {1}, disjoint
    region = np.zeros((4, 5), dtype=bool)
    region.flat[:10] = True
    assert top_fraction_overlap(teacher, student, 0.1, region) == {"dice": 0.0, "iou": 0.0}


def test_top_fraction_mask_skips_zero_voxels_and_breaks_ties_by_order() -> None:
    values = np.array([0.0, 3.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    assert np.flatnonzero(top_fraction_mask(values, 0.2)).tolist() == [1, 2]
    assert np.flatnonzero(top_fraction_mask(values, 0.5)).tolist() == [1, 2, 3, 9]  # 5 wanted, only 4 nonzero
    assert top_fraction_overlap(np.zeros(10), np.zeros(10)) == {"dice": None, "iou": None}
    with pytest.raises(ValueError, match="fraction"):
        top_fraction_mask(values, 0.0)


def test_mass_inside_tumour_by_hand() -> None:
    values = np.array([[1.0, 2.0], [3.0, 4.0]])
    tumour = np.array([[False, True], [False, True]])
    assert mass_inside(values, tumour) == pytest.approx(6 / 10)
    region = np.array([[True, True], [False, True]])
    assert mass_inside(values, tumour, region) == pytest.approx(6 / 7)
    assert mass_inside(np.zeros((2, 2)), tumour) is None


def test_map_agreement_collects_everything() -> None:
    rng = np.random.default_rng(0)
    teacher = rng.random((6, 6, 6))
    student = teacher + 0.1 * rng.random((6, 6, 6))
    seg = np.zeros((6, 6, 6), dtype=np.uint8)
    seg[:2] = 2
    seg[2, :3] = 4
    region = np.ones((6, 6, 6), dtype=bool)
    region[5] = False
    result = map_agreement(teacher, student, seg=seg, mask=region, fraction=0.1)
    assert result["voxels"] == 180
    assert result["pearson"] == pytest.approx(pearson_correlation(teacher, student, region))
    assert result["top_dice"] == pytest.approx(top_fraction_overlap(teacher, student, 0.1, region)["dice"])
    tumour = seg > 0
    assert result["teacher_mass_in_tumour"] == pytest.approx(teacher[tumour].sum() / teacher[region].sum())
    assert result["student_mass_in_tumour"] == pytest.approx(student[tumour].sum() / student[region].sum())
    assert result["tumour_fraction_of_region"] == pytest.approx((72 + 18) / 180)
    assert "teacher_mass_in_tumour" not in map_agreement(teacher, student)
    with pytest.raises(ValueError, match="same grid"):
        map_agreement(teacher, student[:5])
