"""``read_datalist``: the one place that tells a datalist JSON from a dataset folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medkd3d.data import DataValidationError, check_data, discover_brats, read_datalist, write_datalist


def test_a_folder_and_its_datalist_give_the_same_records(synthetic_brats_root: Path, tmp_path: Path) -> None:
    from_folder = read_datalist(synthetic_brats_root)
    assert from_folder == discover_brats(synthetic_brats_root)
    path = write_datalist(from_folder, tmp_path / "datalist.json")  # relative paths in the file
    from_file = read_datalist(path)
    assert from_file["training"] == from_folder["training"]
    assert [r["label"] for r in from_file["training"]].count(1) == 6


def test_discovery_options_apply_to_a_folder(tmp_path: Path) -> None:
    root = tmp_path / "own"
    (root / "sub01").mkdir(parents=True)
    for suffix in ("T1w", "gd", "T2w", "flair"):
        (root / "sub01" / f"sub01_{suffix}.nii.gz").write_bytes(b"")
    (root / "labels.csv").write_text("subject,grade\nsub01,HGG\n")
    with pytest.raises(DataValidationError, match="missing modality t1ce"):
        read_datalist(root)
    datalist = read_datalist(root, modality_patterns={"t1ce": "*_gd.nii.gz"})
    assert Path(datalist["training"][0]["image"][1]).name == "sub01_gd.nii.gz"


def test_a_missing_source_names_both_choices(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist; pass a datalist JSON .* or the folder"):
        read_datalist(tmp_path / "nowhere")


def test_check_data_reports_discovery_problems_of_a_folder(synthetic_brats_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(synthetic_brats_root, tmp_path / "data"))
    t1ce = next(root.glob("HGG/*/*_t1ce.nii.gz"))
    t1ce.unlink()
    problems = check_data(root)  # reported, not raised: check-data lists every problem
    assert [p.subject for p in problems] == [t1ce.parent.name]
    assert "missing modality t1ce" in str(problems[0])
