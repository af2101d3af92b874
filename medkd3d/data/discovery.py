"""Find the subjects of a BraTS download (2018/2019, 2020, 2021, 2023+ or any folder of subjects), write a datalist.

The datalist is a MONAI-style JSON file::

    {"description": "medkd3d datalist", "layout": "brats2019", "root": "...",
     "modalities": ["t1", "t1ce", "t2", "flair"], "class_names": ["LGG", "HGG"],
     "training": [{"subject": "...", "image": [t1, t1ce, t2, flair], "seg": "... or null",
                   "label": 1, "class_name": "HGG"}, ...]}

In the file, paths are relative to the file's folder (so ``monai.data.load_decathlon_datalist`` reads it too);
:func:`load_datalist` returns them absolute.

Discovery is tolerant where real downloads are messy - ``.nii`` or ``.nii.gz``, any capitalisation, common
modality spellings (``t1ce``/``t1gd``/``t1c``, ``t2flair``, the BraTS 2023 ``t1n/t1c/t2w/t2f``), files whose name
does not start with the subject id (the modality is read from the last name token; the misnamed BraTS 2020
segmentation ``W39_1998.09.19_Segm.nii`` is recognised) - and strict where it matters: each of the four modalities
exactly once per subject. Data whose file names carry no modality token (``sub01_gd.nii.gz``) is described by one
shell pattern per modality (``modality_patterns={"t1ce": "*_gd.nii.gz"}``, ``--modality t1ce='*_gd.nii.gz'``).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medkd3d.data._problems import DataProblem, DataValidationError
from medkd3d.utils import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "DISCOVERY_LAYOUTS",
    "GRADE_CLASS_NAMES",
    "KNOWN_LABEL_SETS",
    "MODALITIES",
    "detect_layout",
    "discover_brats",
    "load_datalist",
    "match_modality",
    "parse_modality_patterns",
    "read_datalist",
    "write_datalist",
]

#: Modalities of a datalist record's ``image``, in this order.
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
#: Classes of glioma grading; the index is the integer label (HGG = 1, the positive class).
GRADE_CLASS_NAMES: tuple[str, ...] = ("LGG", "HGG")
#: Values of ``layout`` that :func:`discover_brats` accepts.
DISCOVERY_LAYOUTS: tuple[str, ...] = ("auto", "brats2019", "brats2020", "brats2021", "generic")
#: Subject-id columns recognised in a labels CSV, in order of preference (compared case-insensitively).
SUBJECT_COLUMNS: tuple[str, ...] = (
    "BraTS_2020_subject_ID",
    "BraTS21ID",
    "BraTS_2019_subject_ID",
    "subject",
    "subject_id",
    "ID",
)

# Last name token(s) -> modality. Two-token spellings (``t2_flair``, ``t1_ce``) are tried before one token, so
# the ``t2`` of ``t2_flair`` never counts as T2.
_MODALITY_TOKENS: dict[str, str] = {
    **dict.fromkeys(("t1", "t1w", "t1n", "t1native"), "t1"),
    **dict.fromkeys(("t1ce", "t1gd", "t1c", "t1post", "t1wce", "t1contrast"), "t1ce"),
    **dict.fromkeys(("t2", "t2w"), "t2"),
    **dict.fromkeys(("flair", "t2flair", "t2f"), "flair"),
    **dict.fromkeys(("seg", "segm", "segmentation", "label", "labels", "gt"), "seg"),
}
_MISSING_VALUES = frozenset({"", "na", "n/a", "nan", "none", "null", "unknown"})
#: Label columns (compared case-insensitively) whose values are a known set, in label order. A value outside the
#: set is an error - a typo such as ``XGG`` would otherwise become a class of its own and renumber the others -
#: unless the classes are declared explicitly (``class_names``). A column of another name whose values include a
#: grade is held to the grades too.
KNOWN_LABEL_SETS: dict[str, tuple[str, ...]] = {
    "grade": GRADE_CLASS_NAMES,
    "mgmt_value": ("0", "1"),
    "mgmt": ("0", "1"),
}


@dataclass
class _LabelTable:
    """The labels of a CSV: ``values`` and 1-based ``lines`` by the CSV's subject id, from ``column`` of ``path``."""

    path: Path
    column: str
    values: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)


def _is_name_mapping(path: Path) -> bool:
    """BraTS 2020 ``name_mapping.csv`` (training, with ``Grade``) or ``name_mapping_validation_data.csv`` (without)."""
    name = path.name.lower()
    return name.startswith("name_mapping") and name.endswith(".csv") and path.is_file()


def nifti_stem(name: str) -> str | None:
    """The file name without ``.nii``/``.nii.gz`` (any case), or ``None`` if it is not a NIfTI file."""
    lower = name.lower()
    for suffix in (".nii.gz", ".nii"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def match_modality(file_name: str) -> str | None:
    """The modality (``t1``, ``t1ce``, ``t2``, ``flair`` or ``seg``) a NIfTI file name stands for.

    The modality is read from the last token(s) of the name (tokens split at anything but letters and digits,
    case-insensitive), so ``BraTS19_2013_2_1_T1CE.NII.GZ``, ``scan_t2_flair.nii`` and ``W39_1998.09.19_Segm.nii``
    are all recognised, whatever precedes the modality.

    Args:
        file_name: a file name (no folder).

    Returns:
        The modality, or ``None`` for a non-NIfTI file or an unrecognised name.
    """
    stem = nifti_stem(file_name)
    if stem is None:
        return None
    tokens = [t for t in re.split(r"[^a-z0-9]+", stem.lower()) if t]
    if len(tokens) >= 2 and tokens[-2] + tokens[-1] in _MODALITY_TOKENS:
        return _MODALITY_TOKENS[tokens[-2] + tokens[-1]]
    return _MODALITY_TOKENS.get(tokens[-1]) if tokens else None


def parse_modality_patterns(items: Sequence[str]) -> dict[str, str]:
    """Parse ``NAME=GLOB`` items (``t1ce=*_gd.nii.gz``) into the ``modality_patterns`` of :func:`discover_brats`.

    Args:
        items: one item per modality; ``NAME`` is one of :data:`MODALITIES` or ``seg`` (case-insensitive), ``GLOB``
            a shell pattern (``*``, ``?``, ``[...]``) matched against the file names of each subject folder.

    Returns:
        Modality -> pattern.

    Raises:
        ValueError: for an item without ``=``, an unknown modality, an empty pattern or a modality given twice.
    """
    patterns: dict[str, str] = {}
    names = (*MODALITIES, "seg")
    for item in items:
        name, sep, pattern = item.partition("=")
        name, pattern = name.strip().lower(), pattern.strip()
        if not sep or not pattern:
            raise ValueError(f"--modality {item!r}: write NAME=GLOB, e.g. --modality 't1ce=*_gd.nii.gz'")
        if name not in names:
            raise ValueError(f"--modality {item!r}: unknown modality {name!r}; use one of {', '.join(names)}")
        if name in patterns:
            raise ValueError(f"--modality {name} is given twice ({patterns[name]!r} and {pattern!r}); keep one")
        patterns[name] = pattern
    return patterns


def _modality_of(file_name: str, patterns: Mapping[str, str]) -> list[str]:
    """The modalities a file stands for: those whose pattern it matches (case-insensitive), else by its name.

    A modality with a pattern is found by its pattern only, so a name token never adds a second file to it.
    """
    matched = [m for m, pattern in patterns.items() if fnmatch.fnmatch(file_name.lower(), pattern.lower())]
    if matched:
        return matched
    modality = match_modality(file_name)
    return [modality] if modality is not None and modality not in patterns else []


def _missing_problem(folder: Path, subject: str, modality: str, patterns: Mapping[str, str]) -> DataProblem:
    """The problem of a subject folder without a file for ``modality``."""
    present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    if modality in patterns:
        return DataProblem(
            subject,
            str(folder),
            f"no file matches --modality {modality}={patterns[modality]} (folder holds: {present})",
            "correct the pattern (shell-style, matched against file names, case-insensitive), or remove the subject",
        )
    return DataProblem(
        subject,
        str(folder),
        f"missing modality {modality} (folder holds: {present})",
        f"add <subject>_{modality}.nii.gz to the folder, give its file pattern (--modality {modality}=GLOB), "
        "or remove the subject",
    )


def _dangling_link(path: Path) -> DataProblem:
    """The problem of a symbolic link whose target does not exist."""
    subject = path.parent.name if nifti_stem(path.name) is not None else path.name
    return DataProblem(
        subject,
        str(path),
        f"broken symbolic link to {os.readlink(path)} (the target does not exist)",
        "mount or copy the target, fix the link, or remove it",
    )


def _subject_folders(root: Path) -> tuple[list[Path], list[DataProblem]]:
    """Folders under ``root`` (any depth, hidden ones skipped) that directly hold NIfTI files, sorted.

    Symbolic links to folders are followed - datasets are often assembled from links into a shared store - but
    each real folder is visited once, so a link to an ancestor (a loop) or a second link to the same folder is
    skipped with a warning instead of recursing forever or listing a subject twice. Links whose target does not
    exist are returned as problems naming the link.

    Returns:
        The subject folders (by the path they were found under) and the broken-link problems.
    """
    folders, problems = [], []
    visited = {os.path.realpath(root)}
    for folder, dirs, files in os.walk(root, followlinks=True):
        kept = []
        for name in sorted(d for d in dirs if not d.startswith(".")):
            real = os.path.realpath(os.path.join(folder, name))
            if real in visited:
                logger.warning("skipping %s: it links to %s, which is already searched", Path(folder, name), real)
                continue
            visited.add(real)
            kept.append(name)
        dirs[:] = kept
        for name in sorted(files):  # os.walk lists a broken link among the files
            path = Path(folder, name)
            if not name.startswith(".") and path.is_symlink() and not path.exists():
                problems.append(_dangling_link(path))
        if any(nifti_stem(f) is not None for f in files):
            folders.append(Path(folder))
    return sorted(folders, key=lambda p: p.relative_to(root).as_posix()), problems


def detect_layout(root: str | os.PathLike) -> str:
    """Guess the layout of a dataset folder.

    Args:
        root: dataset root.

    Returns:
        ``"brats2019"`` (``HGG``/``LGG`` folders, also BraTS 2018), ``"brats2020"`` (a ``name_mapping.csv``),
        ``"brats2021"`` (``BraTS2021_NNNNN`` folders) or ``"generic"``.
    """
    root = Path(root)
    children = [child for child in root.iterdir() if not child.name.startswith(".")]
    folders = [child for child in children if child.is_dir()]
    # HGG/LGG in the root, or one level down (the root holds MICCAI_BraTS_2019_Data_Training/)
    if any(f.name.upper() in GRADE_CLASS_NAMES for parent in (root, *folders) for f in parent.iterdir() if f.is_dir()):
        return "brats2019"
    if any(_is_name_mapping(child) for child in children):
        return "brats2020"
    if folders and all(re.fullmatch(r"brats2021_\d+", c.name.lower()) for c in folders):
        return "brats2021"
    return "generic"


def _find_modalities(
    folder: Path, subject: str, patterns: Mapping[str, str] | None = None
) -> tuple[dict[str, Path], list[DataProblem]]:
    """The modality files of one subject folder, and the problems (missing or ambiguous modalities).

    Args:
        folder: the subject folder.
        subject: its id, for the problems.
        patterns: modality -> shell pattern of its file name (see :func:`parse_modality_patterns`); modalities
            without one are recognised by name (:func:`match_modality`).
    """
    patterns = patterns or {}
    found: dict[str, list[Path]] = {}
    problems = []
    for path in sorted(folder.iterdir()):
        modalities = _modality_of(path.name, patterns) if path.is_file() and nifti_stem(path.name) else []
        if len(modalities) > 1:
            given = ", ".join(f"--modality {m}={patterns[m]}" for m in modalities)
            problems.append(
                DataProblem(
                    subject,
                    str(path),
                    f"the file matches the patterns of {len(modalities)} modalities: {given}",
                    "make the patterns specific enough that each file matches one",
                )
            )
        elif modalities:
            found.setdefault(modalities[0], []).append(path)
        elif nifti_stem(path.name) is not None and path.exists():  # a broken link is reported by _subject_folders
            logger.debug("%s: ignoring %s (no modality in its name)", subject, path.name)
    where = str(folder)
    for modality in (*MODALITIES, "seg"):
        paths = found.get(modality, [])
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            how = f"--modality {modality}={patterns[modality]}" if modality in patterns else f"modality {modality}"
            problems.append(
                DataProblem(
                    subject,
                    where,
                    f"{len(paths)} files match {how}: {names}",
                    "keep exactly one file per modality in the subject folder (remove or rename the others, or "
                    "make the pattern more specific)",
                )
            )
        elif not paths and modality != "seg":
            problems.append(_missing_problem(folder, subject, modality, patterns))
    return {m: paths[0] for m, paths in found.items() if len(paths) == 1}, problems


#: Field delimiters a labels CSV may use: spreadsheets in many locales save ``;``, "text" exports use tabs.
CSV_DELIMITERS: tuple[str, ...] = (",", ";", "\t", "|")


def _decode_csv(path: Path) -> str:
    """The text of a labels CSV: UTF-8 (with or without BOM), UTF-16 with BOM, or else Latin-1 with a warning.

    Spreadsheets on Windows save "CSV" as Windows-1252/Latin-1 and "Unicode text" as UTF-16; decoding those as
    UTF-8 fails with a bare ``'utf-8' codec can't decode``. Every byte is a Latin-1 character, so a non-UTF-8
    file is read as Latin-1 (subject ids and grades are ASCII, which both encodings agree on) and the user is
    told so, to re-save it as UTF-8 if accented text matters.

    Raises:
        ValueError: for a file that holds NUL bytes without a UTF-16 BOM (not a text file), naming the file.
    """
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        if b"\x00" in data:
            raise ValueError(
                f"labels CSV {path} is not a text file in a known encoding ({error}); "
                "re-save it as CSV UTF-8 (comma delimited)"
            ) from None
        logger.warning(
            "labels CSV %s is not UTF-8 (byte %d); reading it as Latin-1 - re-save it as CSV UTF-8 if names look wrong",
            path,
            error.start,
        )
        return data.decode("latin-1")


def sniff_delimiter(lines: Sequence[str]) -> str:
    """The delimiter of :data:`CSV_DELIMITERS` that splits the first lines of a CSV into the most, equal columns.

    ``csv.Sniffer`` guesses from character frequencies and is easily misled (a ``,`` decimal mark in a
    ``;``-separated file); here a delimiter must give most sampled rows the header's number of fields (a stray
    trailing delimiter on a few rows is tolerated).

    Args:
        lines: the first lines of the file (header first).

    Returns:
        The delimiter; ``","`` when no candidate splits the header into more than one column.
    """
    best, best_width = ",", 1
    sample = [line for line in lines if line.strip()]
    for delimiter in CSV_DELIMITERS:
        rows = list(csv.reader(sample, delimiter=delimiter))
        width = len(rows[0]) if rows else 0
        if width > best_width and 2 * sum(len(row) == width for row in rows[1:]) >= len(rows) - 1:
            best, best_width = delimiter, width
    return best


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The stripped header and rows of a CSV, whatever its delimiter (see :func:`sniff_delimiter`) and encoding."""
    text = _decode_csv(path)
    delimiter = sniff_delimiter(text.splitlines()[:50])
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)  # keeps quoted line breaks
    rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    return [f.strip() for f in reader.fieldnames or []], rows


def _pick_column(fields: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, path: Path) -> str:
    by_lower = {f.lower(): f for f in fields}
    if wanted is not None:
        if wanted.lower() not in by_lower:
            raise ValueError(f"{path}: no {what} column {wanted!r}; its columns are {list(fields)}")
        return by_lower[wanted.lower()]
    for candidate in candidates:
        if candidate.lower() in by_lower:
            return by_lower[candidate.lower()]
    raise ValueError(
        f"{path}: cannot tell which column holds the {what} (columns: {list(fields)}); "
        f"name it with --{what.replace(' ', '-')}-column"
    )


def _class_names(values: Sequence[str]) -> list[str]:
    """Class list for the label values: the grades, integer codes 0..max, or the sorted distinct strings."""
    distinct = sorted(set(values))
    if distinct and {v.upper() for v in distinct} <= set(GRADE_CLASS_NAMES):
        return list(GRADE_CLASS_NAMES)
    if distinct and all(re.fullmatch(r"\d+", v) for v in distinct) and int(max(distinct, key=int)) < 1000:
        # codes such as MGMT_value 0/1 keep their value as the label, even if a subset lacks a class
        return [str(i) for i in range(int(max(distinct, key=int)) + 1)]
    return distinct


def _read_labels(
    path: Path, label_column: str | None, subject_column: str | None
) -> tuple[_LabelTable, list[DataProblem]]:
    """The labels of a CSV (empty / NA values are left out) with their line numbers, and conflicting duplicates."""
    fields, rows = _read_csv(path)
    subject_col = _pick_column(fields, subject_column, SUBJECT_COLUMNS, "subject", path)
    others = [f for f in fields if f != subject_col]
    label_col = _pick_column(
        fields, label_column, ("Grade", *others) if len(others) == 1 else ("Grade",), "label", path
    )
    table = _LabelTable(path, label_col)
    problems = []
    for index, row in enumerate(rows):
        subject, value = row.get(subject_col, ""), row.get(label_col, "")
        if not subject or value.lower() in _MISSING_VALUES:
            continue
        if table.values.get(subject, value) != value:
            problems.append(
                DataProblem(
                    subject,
                    path.name,
                    f"conflicting labels {table.values[subject]!r} and {value!r} in column {label_col}",
                    "keep one row per subject in the labels CSV",
                )
            )
        table.values[subject] = value
        table.lines[subject] = index + 2  # line 1 is the header
    logger.info(
        "read %d labels from %s (subject column %s, label column %s)", len(table.values), path, subject_col, label_col
    )
    return table, problems


def _label_finder(labels: Mapping[str, str]) -> Callable[[str], str | None]:
    """Find a subject's id in the labels CSV: exactly, then case-insensitively, then by its zero-padded trailing number.

    The last rule matches the RSNA-MICCAI ``BraTS21ID`` column (``12`` or ``00012``) to ``BraTS2021_00012``; it
    needs at least three trailing digits, so the ``_1`` of ``BraTS19_TCIA01_131_1`` never matches id ``1``. A
    BraTS 2023+ id ``BraTS-GLI-00012-000`` ends in its time point: its number is the five digits before it (the
    BraTS 2021 number of the same patient), never the ``000``.
    """
    lowered = {k.lower(): k for k in labels}
    numeric = {int(k): k for k in labels if k.isdigit()}

    def find(subject: str) -> str | None:
        if subject in labels:
            return subject
        if subject.lower() in lowered:
            return lowered[subject.lower()]
        number = re.fullmatch(r"brats-[a-z]+-(\d{5})-\d{3}", subject.lower()) or re.search(r"(?<!\d)(\d{3,})$", subject)
        return numeric.get(int(number.group(1))) if number else None

    return find


def _match_class(value: str, class_names: Sequence[str]) -> int | None:
    """Index of ``value`` in ``class_names``: exact, case-insensitive, or the same integer (``"01"`` is ``"1"``)."""
    for match in (
        lambda name: name == value,
        lambda name: name.lower() == value.lower(),
        lambda name: name.isdigit() and value.isdigit() and int(name) == int(value),
    ):
        found = [i for i, name in enumerate(class_names) if match(str(name))]
        if len(found) == 1:
            return found[0]
    return None


def _allowed_classes(values: Sequence[str], column: str | None, declared: Sequence[str] | None) -> list[str] | None:
    """The enforced class list: the declared one, else the known set of the label column, else ``None``."""
    if declared is not None:
        return [str(name) for name in declared]
    known = KNOWN_LABEL_SETS.get(column.lower()) if column else None
    if known is None and any(v.upper() in GRADE_CLASS_NAMES for v in values):
        known = GRADE_CLASS_NAMES  # grades in a column of another name: a non-grade among them is a typo
    return list(known) if known is not None else None


def _assign_labels(
    records: list[dict[str, Any]], table: _LabelTable | None, declared: Sequence[str] | None
) -> tuple[list[dict[str, Any]], list[str], list[DataProblem]]:
    """Turn each record's ``value`` into ``label``/``class_name``; a value outside an enforced class list is a problem.

    Returns:
        The records that got a valid label or none, the class names, and one problem per rejected record.
    """
    values = [r["value"] for r in records if r["value"] is not None]
    class_names = _allowed_classes(values, table.column if table else None, declared)
    if class_names is None:
        class_names = _class_names(values)
    kept, problems = [], []
    for record in records:
        value, key = record.pop("value"), record.pop("csv_id")
        label = _match_class(value, class_names) if value is not None else None
        if value is not None and label is None:
            where = f" (line {table.lines[key]}, column {table.column!r})" if table is not None and key else ""
            problems.append(
                DataProblem(
                    record["subject"],
                    str(table.path) if table is not None else None,
                    f"label {value!r}{where} is not one of the allowed values {class_names}",
                    f"correct the value, or, if {value!r} is a real class, declare the classes explicitly "
                    "(class_names=[...], e.g. --class-names for the data commands)",
                )
            )
            continue
        record["label"] = label
        record["class_name"] = class_names[label] if label is not None else None
        kept.append(record)
    return kept, class_names, problems


def _default_labels_csv(root: Path, layout: str) -> Path | None:
    if layout == "brats2020":
        mapping = next((p for p in sorted(root.iterdir()) if _is_name_mapping(p)), None)
        if mapping is not None and "grade" not in {f.lower() for f in _read_csv(mapping)[0]}:
            logger.info("%s has no Grade column (validation data): subjects stay unlabeled", mapping.name)
            return None
        return mapping
    if layout in ("brats2021", "generic"):
        csvs = sorted(p for p in root.glob("*.csv") if p.is_file())
        if len(csvs) == 1:
            logger.info("using %s as the labels CSV (pass labels_csv to choose another)", csvs[0])
            return csvs[0]
    return None


def _discover(
    root: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    label_column: str | None = None,
    subject_column: str | None = None,
    layout: str = "auto",
    class_names: Sequence[str] | None = None,
    modality_patterns: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], list[DataProblem]]:
    """:func:`discover_brats` that returns the problems instead of raising; subjects with problems are left out."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a folder; pass the folder that holds the subjects")
    if layout not in DISCOVERY_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: use one of {DISCOVERY_LAYOUTS}")
    if layout == "auto":
        layout = detect_layout(root)
    logger.info("discovering %s as layout %s", root, layout)
    unknown = sorted(set(modality_patterns or {}) - {*MODALITIES, "seg"})
    if unknown:
        raise ValueError(f"modality_patterns names unknown modalities {unknown}; use {[*MODALITIES, 'seg']}")

    if labels_csv is None:
        labels_csv = _default_labels_csv(root, layout)
    problems: list[DataProblem] = []
    table: _LabelTable | None = None
    if labels_csv is not None:
        if not Path(labels_csv).is_file():
            raise FileNotFoundError(f"labels CSV {labels_csv} not found; pass an existing file (--labels)")
        if layout == "brats2020" and _is_name_mapping(Path(labels_csv)):
            label_column = label_column or "Grade"
            subject_column = subject_column or "BraTS_2020_subject_ID"
        table, problems = _read_labels(Path(labels_csv), label_column, subject_column)

    find_label = _label_finder(table.values) if table is not None else None
    records = []
    folders, link_problems = _subject_folders(root)
    problems += link_problems
    for folder in folders:
        subject = folder.name
        files, subject_problems = _find_modalities(folder, subject, modality_patterns)
        problems += subject_problems
        if subject_problems:
            continue
        csv_id = None
        if find_label is not None:
            csv_id = find_label(subject)
            value = table.values[csv_id] if csv_id is not None else None
        else:  # BraTS 2018/2019: the grade is the name of a folder above the subject's
            parents = [part.upper() for part in folder.relative_to(root).parts[:-1]]
            value = next((part for part in parents if part in GRADE_CLASS_NAMES), None)
        records.append(
            {
                "subject": subject,
                "image": [str(files[m]) for m in MODALITIES],
                "seg": str(files["seg"]) if "seg" in files else None,
                "value": value,
                "csv_id": csv_id,
            }
        )
    if not records and not problems:
        problems.append(
            DataProblem(
                "<dataset>",
                str(root),
                "no subject folders with NIfTI files found",
                "point to the folder that holds the subject folders (or HGG/LGG)",
            )
        )

    records, class_names, label_problems = _assign_labels(records, table, class_names)
    problems += label_problems
    unlabeled = sum(r["label"] is None for r in records)
    if unlabeled:
        logger.warning("%d of %d subjects have no label", unlabeled, len(records))
    datalist = {
        "description": "medkd3d datalist",
        "layout": layout,
        "root": str(root),
        "modalities": list(MODALITIES),
        "class_names": class_names,
        "training": records,
    }
    return datalist, problems


def discover_brats(
    root: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    label_column: str | None = None,
    subject_column: str | None = None,
    layout: str = "auto",
    class_names: Sequence[str] | None = None,
    modality_patterns: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Find every subject of a BraTS-style dataset and build a datalist (absolute paths).

    Labels come from, in this order: ``labels_csv`` if given; ``name_mapping.csv`` (column ``Grade``) for BraTS
    2020; the ``HGG``/``LGG`` folder for BraTS 2018/2019; the only CSV in the root for BraTS 2021 and generic
    folders. Grades map to ``class_names = ["LGG", "HGG"]``; integer codes (e.g. ``MGMT_value``) to ``"0".."max"``
    with the code as the label; other values to their sorted distinct strings. Known label sets are enforced
    (:data:`KNOWN_LABEL_SETS`: the grades of a ``Grade`` column - or of any column holding a grade - and MGMT
    0/1): a value outside them (a typo such as ``XGG``) is an error naming the subject, the CSV, its line and the
    allowed values, unless ``class_names`` declares the classes.

    Args:
        root: dataset root (the folder holding ``HGG``/``LGG`` or the subject folders).
        labels_csv: CSV with one row per subject.
        label_column: column of ``labels_csv`` holding the label; default ``Grade``, or the only non-subject column.
        subject_column: column holding the subject id; default the first of :data:`SUBJECT_COLUMNS` present.
            Ids match folder names exactly, case-insensitively, or by a trailing number of at least three digits
            (``12`` = ``BraTS2021_00012``).
        layout: one of :data:`DISCOVERY_LAYOUTS`; ``"auto"`` uses :func:`detect_layout`.
        class_names: the classes, declared explicitly, in label order (values match exactly, case-insensitively
            or as the same integer); every label must be one of them. ``None``: inferred from the values, with
            the known sets enforced.
        modality_patterns: modality (``t1``, ``t1ce``, ``t2``, ``flair``, ``seg``) -> shell pattern of its file
            name in a subject folder (case-insensitive), for files whose names carry no modality token, e.g.
            ``{"t1": "*_T1w.nii.gz", "t1ce": "*_gd.nii.gz"}``; the other modalities are recognised by name.
            See :func:`parse_modality_patterns`.

    Returns:
        The datalist dict; subjects without a label have ``label`` and ``class_name`` ``None``.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        DataValidationError: listing every subject with a missing or ambiguous modality, conflicting labels, or
            a label outside the known or declared classes; a file matching the patterns of two modalities.
        ValueError: for an unknown layout, a labels CSV without the needed columns, or an unknown modality in
            ``modality_patterns``.
    """
    datalist, problems = _discover(
        root, labels_csv, label_column, subject_column, layout, class_names, modality_patterns
    )
    if problems:
        raise DataValidationError(problems, context=f"dataset {datalist['root']}")
    return datalist


# ----------------------------------------------------------------------------------------------------------------
# datalist files

_PATH_KEYS = ("image", "seg")


def _map_paths(datalist: Mapping[str, Any], convert) -> dict[str, Any]:
    """Copy of ``datalist`` with ``convert`` applied to ``root`` and to every record's image and seg paths."""

    def convert_entry(value: Any) -> Any:
        if isinstance(value, list):
            return [convert_entry(v) for v in value]
        return convert(value) if isinstance(value, str) else value

    out = dict(datalist)
    out["root"] = convert_entry(out.get("root"))
    for key, value in datalist.items():
        if isinstance(value, list) and all(isinstance(r, Mapping) for r in value):
            out[key] = [{k: convert_entry(v) if k in _PATH_KEYS else v for k, v in r.items()} for r in value]
    return out


def write_datalist(datalist: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a datalist as JSON, with paths relative to the file's folder, atomically.

    ``monai.data.load_decathlon_datalist`` reads the file too, but it turns *any* string that names an existing
    path relative to the file into an absolute path - a ``class_name`` ``"HGG"`` beside an ``HGG`` folder, a
    ``subject`` beside its own folder. Read it with :func:`load_datalist`, or keep it outside the dataset root.

    Args:
        datalist: a datalist dict (absolute or relative-to-cwd paths).
        path: the JSON file to write.

    Returns:
        The written path.
    """
    path = Path(path).resolve()

    def relative(p: str) -> str:
        try:
            return Path(os.path.relpath(Path(p).resolve(), path.parent)).as_posix()
        except ValueError:  # another drive on Windows
            return str(p)

    return atomic_write_text(path, json.dumps(_map_paths(datalist, relative), indent=2) + "\n")


def load_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON file, making its paths absolute.

    Args:
        path: the JSON file (written by :func:`write_datalist` or by hand in the same format).

    Returns:
        The datalist dict with absolute paths.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not valid JSON or has no ``training`` list.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"datalist {path} not found; create it with `medkd3d datalist ROOT --out {path.name}`")
    try:
        datalist = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"datalist {path} is not valid JSON ({error}); regenerate it with `medkd3d datalist`"
        ) from None
    if not isinstance(datalist, dict) or not isinstance(datalist.get("training"), list):
        raise ValueError(f"datalist {path} has no 'training' list of records; regenerate it with `medkd3d datalist`")
    problems = _record_problems(datalist, path)
    if problems:
        raise DataValidationError(problems, context=f"datalist {path}")
    return _map_paths(datalist, lambda p: str((path.parent / p).resolve()))


def _read_source(source: str | os.PathLike, **discovery: Any) -> tuple[dict[str, Any], list[DataProblem]]:
    """:func:`read_datalist` that returns a folder's discovery problems instead of raising them."""
    path = Path(source).expanduser()
    if path.is_dir():
        return _discover(path, **discovery)
    if path.is_file():
        return load_datalist(path), []
    raise FileNotFoundError(
        f"{path} does not exist; pass a datalist JSON (`medkd3d datalist ROOT --out datalist.json` writes one) or "
        "the folder that holds the BraTS subjects"
    )


def read_datalist(source: str | os.PathLike, **discovery: Any) -> dict[str, Any]:
    """The datalist of a datalist JSON file or of a dataset folder: the one place that tells the two apart.

    A folder is discovered with :func:`discover_brats` (its options apply), a file is read with
    :func:`load_datalist` (the options are not used: the file already names its files and labels).

    Args:
        source: a datalist JSON (``medkd3d datalist`` output) or a BraTS-style dataset folder.
        discovery: keyword arguments of :func:`discover_brats` (``labels_csv``, ``label_column``,
            ``subject_column``, ``layout``, ``class_names``, ``modality_patterns``), for a folder.

    Returns:
        The datalist dict with absolute paths.

    Raises:
        FileNotFoundError: if ``source`` is neither a folder nor a file.
        DataValidationError: for a folder whose subjects have missing or ambiguous modalities or bad labels, or
            a datalist file whose records are not records.
        ValueError: for a file that is not a datalist, or bad discovery options.
    """
    datalist, problems = _read_source(source, **discovery)
    if problems:
        raise DataValidationError(problems, context=f"dataset {datalist['root']}")
    return datalist


def _record_problems(datalist: Mapping[str, Any], path: Path) -> list[DataProblem]:
    """Records of the ``training``/``testing`` lists that are not objects with an ``image`` list of paths.

    A hand-edited datalist with a bare string or a record without ``image`` would otherwise fail much later with
    an ``AttributeError`` deep in validation or splitting, naming neither the file nor the record.
    """
    problems = []
    fix = 'each record must be an object like {"subject": ..., "image": [t1, t1ce, t2, flair], "label": ...}'
    for key in ("training", "testing"):
        records = datalist.get(key)
        if records is None:
            continue
        if not isinstance(records, list):
            problems.append(
                DataProblem("<dataset>", str(path), f"'{key}' is a {type(records).__name__}, not a list", fix)
            )
            continue
        for index, record in enumerate(records):
            where = f"{key}[{index}]"
            if not isinstance(record, Mapping):
                shown = repr(record) if len(repr(record)) <= 60 else repr(record)[:57] + "..."
                problems.append(
                    DataProblem(where, str(path), f"record is a {type(record).__name__} ({shown}), not an object", fix)
                )
                continue
            subject = record.get("subject")
            where = f"{where} (subject {subject!r})" if subject is not None else where
            image = record.get("image")
            if not isinstance(image, list) or not image or not all(isinstance(p, str) for p in image):
                problems.append(
                    DataProblem(where, str(path), f"record has no 'image' list of file paths (got {image!r})", fix)
                )
    return problems
