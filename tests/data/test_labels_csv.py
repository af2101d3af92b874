"""Labels CSVs as spreadsheets save them: ``;`` or tab delimiters, Latin-1 or UTF-16 encodings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from medkd3d.data import discover_brats, generate_synthetic_brats
from medkd3d.data.discovery import sniff_delimiter

EXPECTED = {"BraTS2021_00000": 1, "BraTS2021_00001": 0, "BraTS2021_00002": 1, "BraTS2021_00003": None}


@pytest.fixture(scope="module")
def brats2021(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("brats2021")
    return generate_synthetic_brats(root, layout="brats2021", n_hgg=2, n_lgg=2, shape=(32, 32, 24), seed=1)


def _labels(root: Path, csv_path: Path) -> dict[str, int | None]:
    datalist = discover_brats(root, labels_csv=csv_path, label_column="MGMT_value")
    assert datalist["class_names"] == ["0", "1"]
    return {r["subject"]: r["label"] for r in datalist["training"]}


@pytest.mark.parametrize("delimiter", [";", "\t", "|", ","])
def test_the_delimiter_is_sniffed(brats2021: Path, tmp_path: Path, delimiter: str) -> None:
    labels = tmp_path / "labels.csv"
    rows = [("BraTS21ID", "MGMT_value", "age"), ("0", "1", "45,5"), ("1", "0", "61"), ("2", "1", "38,25")]
    if delimiter == ",":
        rows = [(a, b, f'"{c}"') for a, b, c in rows]  # a quoted decimal comma stays in its field
    labels.write_text("\n".join(delimiter.join(row) for row in rows) + "\n")
    assert _labels(brats2021, labels) == EXPECTED


def test_a_latin1_file_is_read_with_a_warning_naming_it(
    brats2021: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_bytes("BraTS21ID;MGMT_value;Kommentar\n0;1;Müller\n1;0;Größe\n2;1;\n".encode("latin-1"))
    with caplog.at_level(logging.WARNING, logger="medkd3d.data.discovery"):
        assert _labels(brats2021, labels) == EXPECTED
    assert any(str(labels) in r.getMessage() and "UTF-8" in r.getMessage() for r in caplog.records)


def test_utf16_and_utf8_bom_files_are_read(brats2021: Path, tmp_path: Path) -> None:
    text = "BraTS21ID\tMGMT_value\n0\t1\n1\t0\n2\t1\n"
    for encoding in ("utf-16", "utf-8-sig"):
        labels = tmp_path / f"labels-{encoding}.csv"
        labels.write_bytes(text.encode(encoding))
        assert _labels(brats2021, labels) == EXPECTED


def test_a_binary_file_is_refused_naming_the_file_and_the_fix(brats2021: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.xlsx.csv"
    labels.write_bytes(b"PK\x03\x04\x00\x00\xff\xfe\x80binary")
    with pytest.raises(ValueError, match=r"labels\.xlsx\.csv.*re-save it as CSV UTF-8"):
        discover_brats(brats2021, labels_csv=labels, label_column="MGMT_value")


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["subject;Grade", "a;HGG", "b;LGG"], ";"),
        (["subject;age", "a;45,5", "b;61,2"], ";"),  # decimal commas do not make it comma-separated
        (["subject,Grade", "a,HGG", "b,LGG;x"], ","),
        (["subject;Grade", "a;HGG;", "b;LGG", "c;HGG"], ";"),  # a stray trailing delimiter
        (["subject"], ","),
    ],
)
def test_sniff_delimiter(lines: list[str], expected: str) -> None:
    assert sniff_delimiter(lines) == expected
