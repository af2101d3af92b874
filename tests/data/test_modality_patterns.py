"""Own preprocessed data whose file names carry no BraTS modality token: ``medkd3d datalist --modality NAME=GLOB``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medkd3d.cli import main
from medkd3d.data import DataValidationError
from medkd3d.data.discovery import discover_brats, parse_modality_patterns

#: file suffix per modality in the "own data" folders (no BraTS token for T1ce, FLAIR or the mask)
_OWN_FILES = {"t1": "T1w", "t1ce": "gd", "t2": "T2w", "flair": "dark-fluid", "seg": "tumour_mask"}
_PATTERNS = {"t1ce": "*_gd.nii.gz", "flair": "*_DARK-FLUID.nii.gz", "seg": "*_mask.nii.gz"}


def _own_dataset(root: Path, subjects: dict[str, str]) -> Path:
    """``root/<subject>/<subject>_<suffix>.nii.gz`` per subject and a ``labels.csv`` (discovery reads names only)."""
    for subject in subjects:
        (root / subject).mkdir(parents=True)
        for suffix in _OWN_FILES.values():
            (root / subject / f"{subject}_{suffix}.nii.gz").write_bytes(b"")
    (root / "labels.csv").write_text("subject,grade\n" + "".join(f"{s},{g}\n" for s, g in subjects.items()))
    return root


def test_without_patterns_the_missing_modality_is_named(tmp_path: Path) -> None:
    root = _own_dataset(tmp_path / "own", {"sub01": "HGG"})
    with pytest.raises(DataValidationError) as caught:
        discover_brats(root)
    text = str(caught.value)
    assert "sub01" in text and "missing modality t1ce" in text and "sub01_gd.nii.gz" in text
    assert "--modality t1ce=GLOB" in text  # the fix is named


def test_patterns_map_the_files(tmp_path: Path) -> None:
    root = _own_dataset(tmp_path / "own", {"sub01": "HGG", "sub02": "LGG"})
    datalist = discover_brats(root, modality_patterns=_PATTERNS)
    records = {r["subject"]: r for r in datalist["training"]}
    assert sorted(records) == ["sub01", "sub02"]
    # t1 and t2 are still recognised by name (T1w, T2w); the others by their (case-insensitive) patterns
    assert [Path(p).name for p in records["sub02"]["image"]] == [
        "sub02_T1w.nii.gz",
        "sub02_gd.nii.gz",
        "sub02_T2w.nii.gz",
        "sub02_dark-fluid.nii.gz",
    ]
    assert Path(records["sub01"]["seg"]).name == "sub01_tumour_mask.nii.gz"
    assert (records["sub01"]["class_name"], records["sub02"]["class_name"]) == ("HGG", "LGG")


def test_a_pattern_that_matches_nothing_names_subject_and_pattern(tmp_path: Path) -> None:
    root = _own_dataset(tmp_path / "own", {"sub01": "HGG"})
    (root / "sub01" / "sub01_gd.nii.gz").rename(root / "sub01" / "sub01_contrast.nii.gz")
    with pytest.raises(DataValidationError) as caught:
        discover_brats(root, modality_patterns=_PATTERNS)
    text = str(caught.value)
    assert "sub01" in text and "no file matches --modality t1ce=*_gd.nii.gz" in text
    assert "sub01_contrast.nii.gz" in text  # what the folder holds


def test_a_file_matching_two_patterns_is_a_problem(tmp_path: Path) -> None:
    root = _own_dataset(tmp_path / "own", {"sub01": "HGG"})
    with pytest.raises(DataValidationError) as caught:
        discover_brats(root, modality_patterns={**_PATTERNS, "t1": "sub01_*"})
    text = str(caught.value)
    assert "sub01_gd.nii.gz" in text and "--modality t1=sub01_*" in text and "--modality t1ce=*_gd.nii.gz" in text


def test_a_pattern_matching_two_files_is_a_problem(tmp_path: Path) -> None:
    root = _own_dataset(tmp_path / "own", {"sub01": "HGG"})
    with pytest.raises(DataValidationError, match=r"2 files match --modality t2=\*_T\*"):
        discover_brats(root, modality_patterns={**_PATTERNS, "t2": "*_T*"})


def test_parse_modality_patterns() -> None:
    assert parse_modality_patterns(["T1CE = *_gd.nii.gz", "seg=*_mask.nii"]) == {
        "t1ce": "*_gd.nii.gz",
        "seg": "*_mask.nii",
    }
    with pytest.raises(ValueError, match="NAME=GLOB"):
        parse_modality_patterns(["t1ce"])
    with pytest.raises(ValueError, match="NAME=GLOB"):
        parse_modality_patterns(["t1ce="])
    with pytest.raises(ValueError, match="unknown modality 't3'"):
        parse_modality_patterns(["t3=*_t3.nii.gz"])
    with pytest.raises(ValueError, match="given twice"):
        parse_modality_patterns(["t1=*_a.nii", "t1=*_b.nii"])


def test_datalist_command_with_modality_patterns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _own_dataset(tmp_path / "own", {"sub01": "HGG", "sub02": "LGG"})
    out = tmp_path / "datalist.json"
    argv = ["datalist", str(root), "--out", str(out), "--labels", str(root / "labels.csv")]
    argv += [f"--modality={name}={pattern}" for name, pattern in _PATTERNS.items()]
    assert main(argv) == 0
    assert "2 subjects (LGG: 1, HGG: 1)" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert [Path(p).name for p in written["training"][0]["image"]][1] == "sub01_gd.nii.gz"
    # a malformed item is one error line, not a traceback
    assert main(["datalist", str(root), "--out", str(out), "--modality", "t1ce"]) == 1
    assert "write NAME=GLOB" in capsys.readouterr().err


def test_check_data_command_takes_the_same_modality_patterns(
    synthetic_brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    root = Path(shutil.copytree(synthetic_brats_root, tmp_path / "data"))
    for t1ce in root.glob("*/*/*_t1ce.nii.gz"):  # own data: contrast-enhanced T1 without a BraTS token
        t1ce.rename(t1ce.with_name(t1ce.name.replace("_t1ce", "_gd")))
    assert main(["check-data", str(root)]) == 1
    assert "missing modality t1ce" in capsys.readouterr().out
    assert main(["check-data", str(root), "--modality", "t1ce=*_gd.nii.gz"]) == 0
    assert "OK" in capsys.readouterr().out
    # parsed by the same code as `medkd3d datalist --modality`: a malformed item is one error line
    assert main(["check-data", str(root), "--modality", "t1ce"]) == 1
    assert "write NAME=GLOB" in capsys.readouterr().err
