"""The report writers shared by the pipeline report, the study summary and the deployment benchmark."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from medkd3d.reporting import csv_text, format_interval, format_value, markdown_table, write_csv, write_markdown


def test_values_and_intervals() -> None:
    assert [format_value(v) for v in (0.81234, 3, "HGG", None, math.nan)] == ["0.812", "3", "HGG", "n/a", "n/a"]
    assert format_value(12.345, 1) == "12.3"
    assert format_interval(0.5, 0.93456) == "[0.500, 0.935]"
    assert format_interval(math.nan, 0.9) == format_interval(0.1, None) == "n/a"


def test_markdown_table() -> None:
    assert markdown_table(["a", "b"], [[1, "x"], ("2", None)]) == [
        "| a | b |",
        "|---|---|",
        "| 1 | x |",
        "| 2 | None |",
    ]
    with pytest.raises(ValueError, match="row 0 has 1 cells for the 2 columns"):
        markdown_table(["a", "b"], [[1]])


def test_csv_columns() -> None:
    rows = [{"a": 1, "b": 2}, {"c": 3, "a": 4}]
    assert csv_text(rows) == "a,b,c\n1,2,\n4,,3\n"  # every key, in first-appearance order
    assert csv_text(rows, ["c", "a"]) == "c,a\n,1\n3,4\n"  # chosen columns; other keys left out


def test_writers_replace_files_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = write_csv(tmp_path / "sub" / "r.csv", [{"a": 1}])
    summary = write_markdown(tmp_path / "r.md", ["# title", "", "text"])
    assert table.read_text() == "a\n1\n" and summary.read_text() == "# title\n\ntext\n"
    assert write_markdown(summary, "as is").read_text() == "as is"

    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)  # the rename into place fails: the old report stays whole
    with pytest.raises(OSError, match="disk full"):
        write_csv(table, [{"a": 2}])
    assert table.read_text() == "a\n1\n"
    assert sorted(p.name for p in table.parent.iterdir()) == ["r.csv"]  # no temporary file is left behind
