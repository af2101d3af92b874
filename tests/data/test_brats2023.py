"""BraTS 2023+ naming (``BraTS-GLI-XXXXX-YYY``, modalities ``t1n/t1c/t2w/t2f``) as docs/real_data.md describes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medkd3d.cli import main
from medkd3d.data.discovery import detect_layout, discover_brats


def _brats2023(root: Path, numbers: list[int]) -> Path:
    for number in numbers:
        subject = f"BraTS-GLI-{number:05d}-000"
        (root / subject).mkdir(parents=True)
        for modality in ("t1n", "t1c", "t2w", "t2f", "seg"):
            (root / subject / f"{subject}-{modality}.nii.gz").write_bytes(b"")
    return root


def test_brats2023_files_and_mgmt_labels(tmp_path: Path) -> None:
    root = _brats2023(tmp_path / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData", [0, 12, 100])
    labels = tmp_path / "train_labels.csv"  # the RSNA-MICCAI MGMT labels, numbered as BraTS 2021
    labels.write_text("BraTS21ID,MGMT_value\n0,0\n12,1\n100,0\n")
    assert detect_layout(root) == "generic"
    datalist = discover_brats(root, labels_csv=labels)
    records = {r["subject"]: r for r in datalist["training"]}
    image = [Path(p).name for p in records["BraTS-GLI-00012-000"]["image"]]
    assert image == [f"BraTS-GLI-00012-000-{m}.nii.gz" for m in ("t1n", "t1c", "t2w", "t2f")]
    assert Path(records["BraTS-GLI-00012-000"]["seg"]).name == "BraTS-GLI-00012-000-seg.nii.gz"
    # the patient number is the 5 digits, not the time point 000 (which would give every subject id 0's label)
    assert {s: r["class_name"] for s, r in records.items()} == {
        "BraTS-GLI-00000-000": "0",
        "BraTS-GLI-00012-000": "1",
        "BraTS-GLI-00100-000": "0",
    }
    assert datalist["class_names"] == ["0", "1"]


def test_labeled_only_leaves_out_subjects_the_csv_does_not_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _brats2023(tmp_path / "data", [0, 12, 100])
    labels = tmp_path / "train_labels.csv"
    labels.write_text("BraTS21ID,MGMT_value\n12,1\n100,0\n")  # no row for subject 00000
    out = tmp_path / "datalist.json"
    argv = ["datalist", str(root), "--out", str(out), "--labels", str(labels), "--label-column", "MGMT_value"]
    assert main([*argv, "--labeled-only"]) == 0
    printed = capsys.readouterr().out
    assert "left out 1 subjects without a label: BraTS-GLI-00000-000" in printed
    assert "2 subjects (0: 1, 1: 1)" in printed
    assert [r["subject"] for r in json.loads(out.read_text())["training"]] == [
        "BraTS-GLI-00012-000",
        "BraTS-GLI-00100-000",
    ]
    # without the flag the unlabeled subject stays (for inference), counted as such
    assert main(argv) == 0
    assert "unlabeled: 1" in capsys.readouterr().out
    empty = tmp_path / "empty.csv"
    empty.write_text("BraTS21ID,MGMT_value\n999,1\n")
    assert main(["datalist", str(root), "--out", str(out), "--labels", str(empty), "--labeled-only"]) == 1
    assert "no subject of" in capsys.readouterr().err
