"""Validation: every kind of problem, each made by corrupting a copy of a synthetic dataset, found in one pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medkd3d.data import (
    DataProblem,
    DataValidationError,
    assert_data_valid,
    check_data,
    discover_brats,
    write_datalist,
)


def _subject_file(root: Path, subject: str, modality: str) -> Path:
    return next(root.glob(f"*/{subject}/{subject}_{modality}.nii.gz"))


def _rewrite(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    image = nib.load(path)
    nib.save(nib.Nifti1Image(data, image.affine if affine is None else affine), path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a NIfTI file" * 20)


def _nan(path: Path) -> None:
    data = np.asanyarray(nib.load(path).dataobj).astype(np.float32)
    data[10, 10, 10] = np.nan
    data[11, 10, 10] = np.inf
    _rewrite(path, data)


def _zero(path: Path) -> None:
    _rewrite(path, np.zeros(nib.load(path).shape, np.int16))


def _four_d(path: Path) -> None:
    data = np.asanyarray(nib.load(path).dataobj)
    _rewrite(path, np.stack([data, data], axis=-1))


def _shape(path: Path) -> None:
    _rewrite(path, np.asanyarray(nib.load(path).dataobj)[:-1])


def _affine(path: Path) -> None:
    image = nib.load(path)
    affine = image.affine.copy()
    affine[:3, 3] += 2.0  # 2 mm shift: not co-registered
    _rewrite(path, np.asanyarray(image.dataobj), affine)


def _missing(path: Path) -> None:
    path.unlink()


# kind -> (corruption, modality it hits, text expected in the problem)
CORRUPTIONS = {
    "truncated": (_truncate, "t2", "truncated"),
    "unreadable": (_garbage, "t1", "unreadable NIfTI header"),
    "nan_inf": (_nan, "t2", "2 NaN/Inf voxels"),
    "all_zero": (_zero, "flair", "all voxels are zero"),
    "four_d": (_four_d, "t1ce", "is 4D"),
    "shape": (_shape, "t2", "t2: shape (47, 48, 40) differs from (48, 48, 40), the shape of t1, t1ce, flair, seg"),
    "affine": (_affine, "flair", "flair: affine differs from that of t1, t1ce, t2, seg by up to 2"),
    # one odd first modality is blamed alone, not the three good ones compared against it
    "t1_shape": (_shape, "t1", "t1: shape (47, 48, 40) differs from (48, 48, 40), the shape of t1ce, t2, flair, seg"),
    "t1_affine": (_affine, "t1", "t1: affine differs from that of t1ce, t2, flair, seg by up to 2"),
    "seg_shape": (_shape, "seg", "seg: shape"),
    "missing": (_missing, "t1", "missing modality t1"),
}


@pytest.fixture(scope="module")
def corrupted(synthetic_brats_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A copy of the shared dataset with one corruption per subject; returns the root and kind -> subject."""
    root = Path(shutil.copytree(synthetic_brats_root, tmp_path_factory.mktemp("corrupted") / "data"))
    subjects = sorted(p.name for p in root.glob("*/*") if p.is_dir())
    victims = dict(zip(CORRUPTIONS, subjects))
    for kind, subject in victims.items():
        corrupt, modality, _ = CORRUPTIONS[kind]
        corrupt(_subject_file(root, subject, modality))
    return root, victims


@pytest.fixture(scope="module")
def problems(corrupted: tuple[Path, dict[str, str]]) -> list[DataProblem]:
    return check_data(corrupted[0])


def test_the_clean_dataset_has_no_problems(synthetic_brats_root: Path) -> None:
    assert check_data(synthetic_brats_root) == []
    datalist = assert_data_valid(synthetic_brats_root)
    assert len(datalist["training"]) == 12


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_each_file_problem_is_reported_with_subject_file_and_fix(
    kind: str, corrupted: tuple[Path, dict[str, str]], problems: list[DataProblem]
) -> None:
    root, victims = corrupted
    _, modality, expected = CORRUPTIONS[kind]
    mine = [p for p in problems if p.subject == victims[kind]]
    assert len(mine) == 1, mine
    problem = mine[0]
    assert expected in problem.problem
    assert problem.hint
    if kind != "missing":
        assert problem.file == str(_subject_file(root, victims[kind], modality))
    line = str(problem)
    assert line.startswith(victims[kind]) and "(fix: " in line


def test_all_problems_are_found_in_one_pass_and_untouched_subjects_pass(
    corrupted: tuple[Path, dict[str, str]], problems: list[DataProblem]
) -> None:
    _, victims = corrupted
    assert len(problems) == len(CORRUPTIONS)
    assert {p.subject for p in problems} == set(victims.values())
    with pytest.raises(DataValidationError) as caught:
        assert_data_valid(corrupted[0])
    assert isinstance(caught.value, ValueError)
    assert f"{len(CORRUPTIONS)} problem(s)" in str(caught.value)
    assert all(str(p) in str(caught.value) for p in problems)


def test_small_affine_differences_are_tolerated(synthetic_brats_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(synthetic_brats_root, tmp_path / "data"))
    subject = sorted(p.name for p in root.glob("HGG/*"))[0]
    path = _subject_file(root, subject, "t2")
    image = nib.load(path)
    affine = image.affine.copy()
    affine[:3, 3] += 1e-5  # float rounding between converters
    _rewrite(path, np.asanyarray(image.dataobj), affine)
    assert check_data(root) == []
    assert "affine" in check_data(root, affine_atol=1e-6)[0].problem


def test_datalist_problems_duplicates_and_labels(synthetic_brats_root: Path, tmp_path: Path) -> None:
    datalist = discover_brats(synthetic_brats_root)
    records = datalist["training"]
    records.append(dict(records[0]))  # duplicate subject id
    records[1]["label"], records[1]["class_name"] = None, None  # no label
    records[2]["label"] = 2  # outside ["LGG", "HGG"]
    records[3]["label"] = "HGG"  # not an index
    records[4]["class_name"] = "LGG" if records[4]["label"] == 1 else "HGG"  # disagrees with the label
    records[5]["image"] = records[5]["image"][:3]  # a modality short
    path = write_datalist(datalist, tmp_path / "datalist.json")

    found = {p.subject: p.problem for p in check_data(path)}
    assert len(found) == 6
    assert found[records[0]["subject"]] == "subject id appears 2 times"
    assert found[records[1]["subject"]] == "subject has no label"
    assert "label 2 is outside the class list ['LGG', 'HGG']" in found[records[2]["subject"]]
    assert "label 'HGG' is outside the class list" in found[records[3]["subject"]]
    assert "disagrees with label" in found[records[4]["subject"]]
    assert "must list the 4 modalities" in found[records[5]["subject"]]

    # unlabeled inference data is fine when asked for
    unlabeled = {**datalist, "training": [dict(r, label=None, class_name=None) for r in records[6:-1]]}
    assert check_data(unlabeled, require_labels=False) == []
    assert len(check_data(unlabeled)) == len(unlabeled["training"])


def test_a_missing_file_in_a_datalist_is_reported(synthetic_brats_root: Path) -> None:
    datalist = discover_brats(synthetic_brats_root)
    datalist["training"] = datalist["training"][:1]
    datalist["training"][0]["image"][2] = "/nonexistent/subject_t2.nii.gz"
    (problem,) = check_data(datalist)
    assert problem.file == "/nonexistent/subject_t2.nii.gz" and "t2: file not found" in problem.problem


def test_problem_lines_read_well() -> None:
    problem = DataProblem("BraTS19_X_1", "/d/x_t1.nii.gz", "t1: all voxels are zero", "export it again")
    assert str(problem) == "BraTS19_X_1: /d/x_t1.nii.gz: t1: all voxels are zero (fix: export it again)"
    assert str(DataProblem("BraTS19_X_1", None, "subject has no label")) == "BraTS19_X_1: subject has no label"
