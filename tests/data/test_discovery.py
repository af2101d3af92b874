"""BraTS discovery: every layout written by synth, messy real-world names, strictness, datalist files."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from medkd3d.data import (
    DataValidationError,
    detect_layout,
    discover_brats,
    generate_synthetic_brats,
    load_datalist,
    match_modality,
    write_datalist,
)

SHAPE = (48, 48, 40)
SUFFIXES = ("_t1.nii.gz", "_t1ce.nii.gz", "_t2.nii.gz", "_flair.nii.gz")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny dataset per synthetic layout (2 HGG + 2 LGG each)."""
    base = tmp_path_factory.mktemp("layouts")
    return {
        layout: generate_synthetic_brats(base / layout, layout=layout, n_hgg=2, n_lgg=2, shape=SHAPE, seed=1)
        for layout in ("brats2019", "brats2020", "brats2021")
    }


def _copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / root.name))


def _assert_well_formed(datalist: dict, root: Path) -> None:
    assert datalist["modalities"] == ["t1", "t1ce", "t2", "flair"]
    assert datalist["root"] == str(root.resolve())
    for record in datalist["training"]:
        assert len(record["image"]) == 4
        for path, modality in zip(record["image"], ("t1", "t1ce", "t2", "flair")):
            assert Path(path).is_absolute() and Path(path).is_file()
            assert match_modality(Path(path).name) == modality
        assert record["seg"] is None or Path(record["seg"]).is_file()


@pytest.mark.parametrize(
    ("layout", "first_subject"),
    [("brats2019", "BraTS19_CBICA_000_1"), ("brats2020", "BraTS20_Training_001"), ("brats2021", "BraTS2021_00000")],
)
def test_each_synthetic_layout_is_detected_and_labelled(
    layouts: dict[str, Path], layout: str, first_subject: str
) -> None:
    root = layouts[layout]
    assert detect_layout(root) == layout
    datalist = discover_brats(root)
    _assert_well_formed(datalist, root)
    assert datalist["layout"] == layout
    assert datalist["class_names"] == ["LGG", "HGG"]
    records = {r["subject"]: r for r in datalist["training"]}
    assert len(records) == 4 and first_subject in records
    assert records[first_subject]["label"] == 1 and records[first_subject]["class_name"] == "HGG"
    assert sorted(r["label"] for r in records.values()) == [0, 0, 1, 1]
    for record in records.values():  # the files are the subject's own, in T1, T1ce, T2, FLAIR order
        assert [Path(p).name for p in record["image"]] == [record["subject"] + s for s in SUFFIXES]
        assert Path(record["seg"]).name == record["subject"] + "_seg.nii.gz"


def test_brats2019_grade_comes_from_the_folder(layouts: dict[str, Path]) -> None:
    for record in discover_brats(layouts["brats2019"])["training"]:
        assert Path(record["image"][0]).parent.parent.name == record["class_name"]


def test_brats2021_labels_from_a_user_csv_with_integer_codes(layouts: dict[str, Path], tmp_path: Path) -> None:
    # the RSNA-MICCAI file: unpadded ids, MGMT_value 0/1 (values chosen here, not by the grade)
    labels = tmp_path / "mgmt.csv"
    labels.write_text("BraTS21ID,MGMT_value\n0,1\n1,0\n2,1\n")
    datalist = discover_brats(layouts["brats2021"], labels_csv=labels, label_column="MGMT_value")
    assert datalist["class_names"] == ["0", "1"]
    by_subject = {r["subject"]: (r["label"], r["class_name"]) for r in datalist["training"]}
    assert by_subject == {
        "BraTS2021_00000": (1, "1"),
        "BraTS2021_00001": (0, "0"),
        "BraTS2021_00002": (1, "1"),
        "BraTS2021_00003": (None, None),
    }  # not in the CSV: unlabeled


def test_brats2021_without_a_labels_csv_is_unlabeled(layouts: dict[str, Path], tmp_path: Path) -> None:
    root = _copy(layouts["brats2021"], tmp_path)
    (root / "train_labels.csv").unlink()
    datalist = discover_brats(root)
    assert datalist["class_names"] == []
    assert all(r["label"] is None and r["class_name"] is None for r in datalist["training"])


def test_brats2019_found_from_the_folder_above_the_release(layouts: dict[str, Path], tmp_path: Path) -> None:
    release = tmp_path / "MICCAI_BraTS_2019_Data_Training"
    shutil.copytree(layouts["brats2019"], release)
    assert detect_layout(tmp_path) == "brats2019"
    datalist = discover_brats(tmp_path)
    assert [(r["subject"], r["class_name"]) for r in datalist["training"]] == [
        (r["subject"], r["class_name"]) for r in discover_brats(release)["training"]
    ]


def test_brats2020_validation_mapping_without_grade_is_unlabeled(layouts: dict[str, Path], tmp_path: Path) -> None:
    root = _copy(layouts["brats2020"], tmp_path)
    (root / "name_mapping.csv").rename(root / "name_mapping_validation_data.csv")
    text = (root / "name_mapping_validation_data.csv").read_text().splitlines()
    (root / "name_mapping_validation_data.csv").write_text("\n".join(line.split(",", 1)[1] for line in text) + "\n")
    assert detect_layout(root) == "brats2020"
    assert all(r["label"] is None for r in discover_brats(root)["training"])


def test_generic_layout_with_any_subject_names(layouts: dict[str, Path], tmp_path: Path) -> None:
    source = discover_brats(layouts["brats2020"])["training"]
    root = tmp_path / "study"
    rows = ["patient,diagnosis"]
    for number, record in enumerate(source):
        folder = root / f"patient{number:02d}"
        folder.mkdir(parents=True)
        for path in record["image"]:
            shutil.copy(path, folder / Path(path).name.replace(record["subject"], f"patient{number:02d}"))
        rows.append(f"patient{number:02d},{'glioblastoma' if record['label'] else 'astrocytoma'}")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    assert detect_layout(root) == "generic"
    datalist = discover_brats(root, labels_csv=labels, subject_column="patient")  # label column: the only other one
    assert datalist["class_names"] == ["astrocytoma", "glioblastoma"]
    assert [r["label"] for r in datalist["training"]] == [r["label"] for r in source]
    assert all(r["seg"] is None for r in datalist["training"])


@pytest.mark.parametrize(
    ("name", "modality"),
    [
        ("BraTS19_2013_10_1_t1.nii.gz", "t1"),
        ("BraTS19_2013_10_1_T1CE.NII.GZ", "t1ce"),
        ("sub-01_T1Gd.nii", "t1ce"),
        ("case_t1c.nii.gz", "t1ce"),
        ("case_t1_ce.nii.gz", "t1ce"),
        ("BraTS20_Training_010_t2.nii", "t2"),
        ("patient_T2_FLAIR.nii.gz", "flair"),  # the t2 of t2_flair is not T2
        ("patient-t2f.nii.gz", "flair"),  # BraTS 2023 names
        ("patient-t2w.nii.gz", "t2"),
        ("patient-t1n.nii.gz", "t1"),
        ("Flair.nii.gz", "flair"),
        ("W39_1998.09.19_Segm.nii", "seg"),  # the misnamed segmentation of BraTS 2020 subject 355
        ("BraTS19_2013_10_1_seg.nii.gz", "seg"),
        ("BraTS19_2013_10_1_t1.json", None),
        ("t1_brain_mask_probability.nii.gz", None),
    ],
)
def test_match_modality_reads_the_modality_from_the_end_of_the_name(name: str, modality: str | None) -> None:
    assert match_modality(name) == modality


def test_tolerates_nii_capitalisation_and_off_pattern_names(layouts: dict[str, Path], tmp_path: Path) -> None:
    root = _copy(layouts["brats2020"], tmp_path)
    folder = root / "BraTS20_Training_002"
    subject = folder.name
    # uncompressed .nii, odd capitalisation, names without the subject id, the BraTS 2020 misnamed seg
    t1 = folder / f"{subject}_t1.nii.gz"
    (folder / f"{subject}_t1.nii").write_bytes(gzip.decompress(t1.read_bytes()))
    t1.unlink()
    (folder / f"{subject}_t1ce.nii.gz").rename(folder / f"{subject}_T1CE.NII.GZ")
    (folder / f"{subject}_t2.nii.gz").rename(folder / "scan_T2.nii.gz")
    (folder / f"{subject}_flair.nii.gz").rename(folder / "axial_t2_flair.nii.gz")
    seg = folder / f"{subject}_seg.nii.gz"
    (folder / "W39_1998.09.19_Segm.nii").write_bytes(gzip.decompress(seg.read_bytes()))
    seg.unlink()
    (folder / "notes.txt").write_text("not an image")

    record = next(r for r in discover_brats(root)["training"] if r["subject"] == subject)
    assert [Path(p).name for p in record["image"]] == [
        f"{subject}_t1.nii",
        f"{subject}_T1CE.NII.GZ",
        "scan_T2.nii.gz",
        "axial_t2_flair.nii.gz",
    ]
    assert Path(record["seg"]).name == "W39_1998.09.19_Segm.nii"
    assert record["label"] == 1


def test_missing_and_duplicate_modalities_fail_naming_every_subject(layouts: dict[str, Path], tmp_path: Path) -> None:
    root = _copy(layouts["brats2019"], tmp_path)
    missing = root / "LGG" / "BraTS19_TCIA09_000_1"
    (missing / "BraTS19_TCIA09_000_1_flair.nii.gz").unlink()
    doubled = root / "HGG" / "BraTS19_TCIA01_001_1"
    shutil.copy(doubled / "BraTS19_TCIA01_001_1_t1.nii.gz", doubled / "old_T1.nii.gz")
    with pytest.raises(DataValidationError) as caught:
        discover_brats(root)
    message = str(caught.value)
    assert "2 problem(s)" in message
    assert "BraTS19_TCIA09_000_1" in message and "missing modality flair" in message
    assert "BraTS19_TCIA01_001_1" in message and "BraTS19_TCIA01_001_1_t1.nii.gz, old_T1.nii.gz" in message
    assert {p.subject for p in caught.value.problems} == {"BraTS19_TCIA09_000_1", "BraTS19_TCIA01_001_1"}


def test_bad_roots_and_csvs_have_clear_errors(layouts: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a folder"):
        discover_brats(tmp_path / "nowhere")
    with pytest.raises(DataValidationError, match="no subject folders"):
        discover_brats(tmp_path)
    labels = tmp_path / "labels.csv"
    labels.write_text("BraTS21ID,MGMT_value,age\n0,1,50\n")
    with pytest.raises(ValueError, match="label-column"):  # two candidate columns: the user must choose
        discover_brats(layouts["brats2021"], labels_csv=labels)
    with pytest.raises(ValueError, match="no label column 'grade_2'"):
        discover_brats(layouts["brats2021"], labels_csv=labels, label_column="grade_2")


def test_write_and_load_round_trip_with_relative_paths(layouts: dict[str, Path], tmp_path: Path) -> None:
    datalist = discover_brats(layouts["brats2019"])
    path = write_datalist(datalist, tmp_path / "lists" / "datalist.json")
    raw = json.loads(path.read_text())
    assert not Path(raw["training"][0]["image"][0]).is_absolute()
    assert not Path(raw["root"]).is_absolute()
    assert (path.parent / raw["training"][0]["seg"]).resolve() == Path(datalist["training"][0]["seg"])
    assert load_datalist(path) == datalist
    assert [p.name for p in path.parent.iterdir()] == ["datalist.json"]  # no temporary file left


def test_monai_reads_the_datalist_file(layouts: dict[str, Path], tmp_path: Path) -> None:
    from monai.data import load_decathlon_datalist

    datalist = discover_brats(layouts["brats2020"])
    path = write_datalist(datalist, tmp_path / "datalist.json")
    records = load_decathlon_datalist(path, data_list_key="training")
    assert [r["image"] for r in records] == [r["image"] for r in datalist["training"]]
    assert [r["label"] for r in records] == [r["label"] for r in datalist["training"]]


def test_load_datalist_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="medkd3d datalist"):
        load_datalist(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_datalist(broken)
    broken.write_text('{"validation": []}')
    with pytest.raises(ValueError, match="no 'training' list"):
        load_datalist(broken)


def _grade_csv(root: Path, path: Path, typo: dict[str, str] | None = None, column: str = "Grade") -> Path:
    """A labels CSV of a BraTS 2021 copy, with the grades of the synthetic subjects and some values replaced."""
    grades = {r["subject"]: r["class_name"] for r in discover_brats(root)["training"]}
    rows = [f"BraTS21ID,{column}"] + [f"{s},{(typo or {}).get(s, g)}" for s, g in sorted(grades.items())]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_unknown_grade_is_an_error_naming_subject_file_line_and_allowed_values(
    layouts: dict[str, Path], tmp_path: Path
) -> None:
    """A typo (XGG) must not become a third class that renumbers HGG."""
    root = layouts["brats2021"]
    labels = _grade_csv(root, tmp_path / "grades.csv", typo={"BraTS2021_00002": "XGG"})
    with pytest.raises(DataValidationError) as raised:
        discover_brats(root, labels_csv=labels)
    message = str(raised.value)
    assert "BraTS2021_00002" in message and str(labels) in message
    assert "line 4" in message  # header, then subjects 00000, 00001, 00002
    assert "'XGG'" in message and "['LGG', 'HGG']" in message and "declare the classes" in message
    assert len(raised.value.problems) == 1

    # a column of another name holding grades is held to the grades as well
    other = _grade_csv(root, tmp_path / "other.csv", typo={"BraTS2021_00001": "hgg!"}, column="tumour_grade")
    with pytest.raises(DataValidationError, match="BraTS2021_00001"):
        discover_brats(root, labels_csv=other, label_column="tumour_grade")


def test_unknown_mgmt_code_is_an_error(layouts: dict[str, Path], tmp_path: Path) -> None:
    labels = tmp_path / "mgmt.csv"
    labels.write_text("BraTS21ID,MGMT_value\n0,1\n1,0\n2,2\n")
    with pytest.raises(DataValidationError, match=r"BraTS2021_00002.*'2'.*\['0', '1'\]"):
        discover_brats(layouts["brats2021"], labels_csv=labels, label_column="MGMT_value")


def test_declared_classes_allow_other_labels_and_fix_the_order(layouts: dict[str, Path], tmp_path: Path) -> None:
    root = layouts["brats2021"]
    labels = _grade_csv(root, tmp_path / "grades.csv", typo={"BraTS2021_00002": "XGG"})
    datalist = discover_brats(root, labels_csv=labels, class_names=["LGG", "HGG", "XGG"])
    assert datalist["class_names"] == ["LGG", "HGG", "XGG"]
    by_subject = {r["subject"]: (r["label"], r["class_name"]) for r in datalist["training"]}
    assert by_subject["BraTS2021_00002"] == (2, "XGG")
    assert {by_subject[s] for s in by_subject if s != "BraTS2021_00002"} <= {(0, "LGG"), (1, "HGG")}
    # declared classes are enforced too
    with pytest.raises(DataValidationError, match=r"'XGG'.*\['HGG', 'LGG'\]"):
        discover_brats(root, labels_csv=labels, class_names=["HGG", "LGG"])


def test_check_data_reports_the_unknown_label(layouts: dict[str, Path], tmp_path: Path) -> None:
    from medkd3d.data import check_data

    root = layouts["brats2021"]
    labels = _grade_csv(root, tmp_path / "grades.csv", typo={"BraTS2021_00003": "XGG"})
    problems = check_data(root, labels_csv=labels, num_workers=1)
    assert [p.subject for p in problems] == ["BraTS2021_00003"] and "XGG" in problems[0].problem
    assert check_data(root, labels_csv=labels, num_workers=1, class_names=["LGG", "HGG", "XGG"]) == []


def test_data_commands_refuse_unknown_labels_unless_declared(
    layouts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medkd3d.cli import main

    root = layouts["brats2021"]
    labels = _grade_csv(root, tmp_path / "grades.csv", typo={"BraTS2021_00000": "XGG"})
    out = tmp_path / "datalist.json"
    assert main(["datalist", str(root), "--labels", str(labels), "--out", str(out)]) != 0
    assert "XGG" in capsys.readouterr().err and not out.exists()
    declared = ["--class-names", "LGG,HGG,XGG"]
    assert main(["datalist", str(root), "--labels", str(labels), "--out", str(out), *declared]) == 0
    assert load_datalist(out)["class_names"] == ["LGG", "HGG", "XGG"]
