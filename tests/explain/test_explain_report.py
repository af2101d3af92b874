"""What ``medkd3d explain`` says about its maps: numbers with their meaning, and collapsed maps in words."""

from __future__ import annotations

import numpy as np
import pytest

from medkd3d.explain.agreement import describe_agreement, describe_map, is_constant, map_agreement, map_in_tumour


def _maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 10x10 grid: the tumour is the first two rows (20% of the voxels); the teacher puts 3 of its 4 units there."""
    seg = np.zeros((10, 10), dtype=np.int16)
    seg[:2] = 2
    teacher = np.zeros((10, 10))
    teacher[0, 0], teacher[1, 5], teacher[0, 9], teacher[9, 9] = 1.0, 1.0, 1.0, 1.0
    student = np.zeros((10, 10))  # collapsed: zero everywhere
    return teacher, student, seg


def test_is_constant() -> None:
    assert is_constant(np.zeros((3, 3)))
    assert is_constant(np.full((3, 3), 0.5))
    assert not is_constant(np.eye(3))
    region = np.zeros((3, 3), dtype=bool)
    region[0, 1:] = True  # off the diagonal: zeros only
    assert is_constant(np.eye(3), region)


def test_map_in_tumour_by_hand() -> None:
    teacher, student, seg = _maps()
    report = map_in_tumour(teacher, seg)
    assert report == {"constant": False, "voxels": 100, "mass_in_tumour": 0.75, "tumour_fraction_of_region": 0.2}
    assert map_in_tumour(student, seg)["mass_in_tumour"] is None and map_in_tumour(student, seg)["constant"]
    assert "mass_in_tumour" not in map_in_tumour(teacher)  # no segmentation: no mass to report


def test_describe_map_gives_mass_against_chance() -> None:
    teacher, _, seg = _maps()
    (line,) = describe_map("teacher map", map_in_tumour(teacher, seg))
    assert line == (
        "teacher map: 75.0% of its mass is inside the tumour segmentation (a uniform map: 20.0%, so 3.75x chance: above "
        "1 the map favours the tumour)"
    )
    # mostly outside: the teacher map held 1.4% of its mass in the tumour
    outside = np.zeros((10, 10))
    outside[5:] = 1.0
    outside[0, 0] = 0.1
    (line,) = describe_map("teacher map", map_in_tumour(outside, seg))
    assert "0.2% of its mass" in line and "0.01x chance" in line


def test_a_collapsed_student_is_flagged_in_words() -> None:
    teacher, student, seg = _maps()
    report = map_agreement(teacher, student, seg=seg)
    assert report["student_constant"] and not report["teacher_constant"] and report["pearson"] is None
    lines = describe_agreement(report)
    text = "\n".join(lines)
    assert "None" not in text
    assert "pearson r: undefined (the student map is constant" in text
    assert any(line.startswith("WARNING: the student map is constant (collapsed)") for line in lines)
    assert "student map: no mass (all zero)" in text
    assert "teacher map: 75.0% of its mass is inside the tumour segmentation" in text
    assert "two unrelated maps score about 0.10" in text and "meaningless while a map is constant" in text


def test_agreeing_maps_are_described_with_their_scale() -> None:
    teacher, _, seg = _maps()
    student = teacher * 2 + 0.5  # same pattern, other scale: r = 1, same top voxels
    lines = describe_agreement(map_agreement(teacher, student, seg=seg, fraction=0.04))
    assert lines[0] == "compared on 100 voxels (brain voxels both maps cover)"
    assert lines[1].startswith("pearson r = 1.000: voxel-wise correlation")
    assert lines[2].startswith("top-4% dice = 1.000: overlap of the 4% most important voxels")
    assert not any("WARNING" in line or "meaningless" in line for line in lines)


def test_both_maps_constant() -> None:
    report = map_agreement(np.zeros((4, 4)), np.ones((4, 4)))
    lines = describe_agreement(report)
    assert "pearson r: undefined (both maps are constant" in lines[1]
    assert sum(line.startswith("WARNING") for line in lines) == 2


@pytest.mark.parametrize("fraction", [0.1, 0.25])
def test_unrelated_maps_score_about_the_fraction(fraction: float) -> None:
    """The chance level the text names: two independent random maps overlap by about ``fraction``."""
    rng = np.random.default_rng(0)
    report = map_agreement(rng.random((40, 40, 40)), rng.random((40, 40, 40)), fraction=fraction)
    assert report["top_dice"] == pytest.approx(fraction, abs=0.02)
