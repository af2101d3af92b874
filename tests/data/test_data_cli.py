"""The data commands through ``medkd3d.cli.main``: synth -> datalist -> check-data, exit codes, help texts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medkd3d.cli import main

TINY = ["--shape", "48", "48", "40"]


def test_synth_datalist_check_data_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "brats20"
    assert (
        main(
            ["synth", "--out", str(root), "--layout", "brats2020", "--n-hgg", "2", "--n-lgg", "1", *TINY, "--seed", "5"]
        )
        == 0
    )
    assert (root / "name_mapping.csv").is_file()
    assert "2 HGG + 1 LGG" in capsys.readouterr().out

    datalist = tmp_path / "datalist.json"
    assert main(["datalist", str(root), "--out", str(datalist)]) == 0
    assert "3 subjects (LGG: 1, HGG: 2), layout brats2020" in capsys.readouterr().out
    content = json.loads(datalist.read_text())
    assert [r["class_name"] for r in content["training"]] == ["HGG", "HGG", "LGG"]

    assert main(["check-data", str(datalist)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["check-data", str(root)]) == 0


def test_brats2021_with_explicit_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "brats21"
    assert main(["synth", "--out", str(root), "--layout", "brats2021", "--n-hgg", "1", "--n-lgg", "1", *TINY]) == 0
    labels = tmp_path / "mgmt.csv"
    labels.write_text("BraTS21ID,MGMT_value\n00000,0\n")
    datalist = tmp_path / "datalist.json"
    argv = ["datalist", str(root), "--out", str(datalist), "--labels", str(labels), "--label-column", "MGMT_value"]
    assert main(argv) == 0
    assert "2 subjects (0: 1, 1: 0, unlabeled: 1)" in capsys.readouterr().out  # MGMT is 0/1, even if 1 is absent
    # one subject has no MGMT status: an error for training, fine for inference
    assert main(["check-data", str(datalist)]) == 1
    assert "BraTS2021_00001: subject has no label" in capsys.readouterr().out
    assert main(["check-data", str(datalist), "--allow-unlabeled"]) == 0


def test_check_data_fails_on_a_corrupt_file(
    synthetic_brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(shutil.copytree(synthetic_brats_root, tmp_path / "data"))
    flair = next(root.glob("LGG/*/*_flair.nii.gz"))
    flair.write_bytes(flair.read_bytes()[:200])
    assert main(["check-data", str(root), "--workers", "2"]) == 1
    captured = capsys.readouterr()
    assert f"{flair.parent.name}: {flair}: flair: unreadable or truncated" in captured.out
    assert "1 problem(s)" in captured.err


def test_datalist_fails_listing_subjects_with_missing_modalities(
    synthetic_brats_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(shutil.copytree(synthetic_brats_root, tmp_path / "data"))
    t1ce = next(root.glob("HGG/*/*_t1ce.nii.gz"))
    t1ce.unlink()
    out = tmp_path / "datalist.json"
    assert main(["datalist", str(root), "--out", str(out)]) == 1
    assert f"{t1ce.parent.name}: {t1ce.parent}: missing modality t1ce" in capsys.readouterr().err
    assert not out.exists()
    assert main(["check-data", str(tmp_path / "nowhere.json")]) == 1
    assert "nowhere.json does not exist; pass a datalist JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "words"),
    [
        ("synth", ["--layout", "--n-hgg", "--n-lgg", "--shape", "--seed", "brats2021", "name_mapping.csv"]),
        ("datalist", ["ROOT", "--out", "--labels", "--label-column", "--subject-column", "t1gd"]),
        ("check-data", ["ROOT|DATALIST", "truncated", "NaN/Inf", "affines", "--allow-unlabeled", "Exits with 1"]),
    ],
)
def test_help_texts(command: str, words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])
    assert caught.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for word in words:
        assert word in text
