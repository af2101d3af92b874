"""Markdown tables and CSV files of medkd3d's reports, written atomically.

One owner for what every report writes - the pipeline's comparison (:mod:`medkd3d.pipeline.report`), a study's
summary (:mod:`medkd3d.ablation.report`) and the deployment benchmark (:mod:`medkd3d.export.bench`) - so the
same value reads the same everywhere (``n/a`` for a missing or NaN number, three decimals, ``[low, high]``
intervals) and no report is ever half-written: each file goes to a temporary name beside its destination and is
renamed into place (:func:`medkd3d.utils.atomic_path`).

Only the standard library: importing it never pulls in torch or MONAI.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from medkd3d.utils import atomic_write_text

__all__ = [
    "NOT_AVAILABLE",
    "csv_text",
    "format_interval",
    "format_value",
    "markdown_table",
    "write_csv",
    "write_markdown",
]

#: How a missing or undefined (``None``, NaN) value is shown.
NOT_AVAILABLE = "n/a"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: floats with ``digits`` decimals, :data:`NOT_AVAILABLE` for ``None`` and NaN, else ``str``.

    Args:
        value: the value (a metric, a count, a name...).
        digits: decimals of a float.

    Returns:
        The text, e.g. ``"0.812"``, ``"42"`` or ``"n/a"``.
    """
    if _missing(value):
        return NOT_AVAILABLE
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def format_interval(low: float | None, high: float | None, digits: int = 3) -> str:
    """A confidence interval as ``[low, high]``; :data:`NOT_AVAILABLE` when either end is undefined.

    Args:
        low: lower end.
        high: upper end.
        digits: decimals of both ends.

    Returns:
        The text, e.g. ``"[0.512, 0.934]"``.
    """
    if _missing(low) or _missing(high):
        return NOT_AVAILABLE
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a GitHub-flavoured Markdown table (cells as given: format numbers with :func:`format_value`).

    Args:
        header: column titles.
        rows: one sequence of cells per row, as many as ``header``.

    Returns:
        The header line, the separator line and one line per row.

    Raises:
        ValueError: if a row has another number of cells than ``header``.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {index} has {len(row)} cells for the {len(header)} columns {list(header)}")
        lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
    return lines


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV text with a header line, ``\\n`` line endings and empty cells for missing keys.

    Args:
        rows: one mapping per row.
        columns: the columns in order; keys of a row outside them are left out. ``None``: every key of every row,
            in first-appearance order.

    Returns:
        The CSV text.
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Write :func:`csv_text` of ``rows`` to ``path`` atomically (a temporary name, then a rename).

    Args:
        path: the CSV file; its folder is created when missing.
        rows: one mapping per row.
        columns: see :func:`csv_text`.

    Returns:
        ``path``.
    """
    return atomic_write_text(path, csv_text(rows, columns))


def write_markdown(path: str | os.PathLike, lines: str | Sequence[str]) -> Path:
    """Write a Markdown document atomically; a sequence of lines is joined and ends with a newline.

    Args:
        path: the ``.md`` file; its folder is created when missing.
        lines: the document, as text or as its lines.

    Returns:
        ``path``.
    """
    text = lines if isinstance(lines, str) else "\n".join(lines) + "\n"
    return atomic_write_text(path, text)
