"""Validate a dataset before training: read every file once and report every problem in one pass.

Checked per subject: the four modalities are present, every file exists and reads completely (no truncated or
corrupt gzip), is a 3D volume without NaN/Inf, is not all zeros, and the modalities (and segmentation) share one
voxel grid (shape, and affine within a tolerance). Checked across the dataset: unique subject ids, a label for
every subject, labels inside the class list. Training entry points call :func:`assert_data_valid` so a bad file
fails in seconds with a clear message instead of an hour into an epoch.
"""

from __future__ import annotations

import logging
import numbers
import os
import zlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np

from medkd3d.data._problems import DataProblem, DataValidationError
from medkd3d.data.discovery import MODALITIES, _read_source
from medkd3d.utils import usable_cpus

logger = logging.getLogger(__name__)

__all__ = ["DataProblem", "DataValidationError", "assert_data_valid", "check_data"]

_FIX_GRID = "resample all modalities of a subject onto one grid (co-register them, as the BraTS preprocessing does)"
_FIX_CORRUPT = "the file is corrupt or partially downloaded: download or convert it again"


class _Geometry(NamedTuple):
    """Voxel grid of one readable 3D file."""

    shape: tuple[int, ...]
    affine: np.ndarray


def _inspect_file(
    subject: str, name: str, path: str, expect_signal: bool
) -> tuple[_Geometry | None, list[DataProblem]]:
    """Read one NIfTI file completely; its grid if it is a readable 3D volume, and its problems."""

    def problem(text: str, hint: str) -> tuple[None, list[DataProblem]]:
        return None, [DataProblem(subject, path, f"{name}: {text}", hint)]

    if not os.path.isfile(path):
        return problem("file not found", "fix the path in the datalist, or restore the file")
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises many types for bad headers
        return problem(f"unreadable NIfTI header ({type(error).__name__}: {error})", _FIX_CORRUPT)
    if len(image.shape) != 3:
        return problem(
            f"image is {len(image.shape)}D with shape {image.shape}, expected one 3D volume",
            "store one 3D volume per file (squeeze a trailing axis of size 1, split a 4D series)",
        )
    try:
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as error:
        return problem(f"unreadable or truncated voxel data ({type(error).__name__}: {error})", _FIX_CORRUPT)
    if np.issubdtype(data.dtype, np.inexact) and not np.isfinite(data).all():
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        return problem(f"{bad} NaN/Inf voxels", "replace non-finite voxels (e.g. by 0) or export the image again")
    if expect_signal and not data.any():
        return problem("all voxels are zero", "the image is empty: export it again, or remove the subject")
    return _Geometry(tuple(image.shape), image.affine), []


def _check_subject(record: Mapping[str, Any], affine_atol: float) -> list[DataProblem]:
    """Problems of one datalist record's files; each file is read once."""
    subject = str(record.get("subject") or "<no subject id>")
    images = record.get("image")
    if not isinstance(images, list) or len(images) != len(MODALITIES):
        return [
            DataProblem(
                subject,
                None,
                f"'image' must list the {len(MODALITIES)} modalities "
                f"{', '.join(MODALITIES)} in this order, got {images!r}",
                "regenerate the datalist with `medkd3d datalist`",
            )
        ]
    files = list(zip(MODALITIES, images))
    if record.get("seg"):
        files.append(("seg", record["seg"]))
    problems: list[DataProblem] = []
    read: list[tuple[str, str, _Geometry]] = []
    for name, path in files:
        if not path:
            problems.append(
                DataProblem(
                    subject,
                    None,
                    f"missing modality {name}",
                    f"add the {name} file of the subject, or remove the subject",
                )
            )
            continue
        geometry, file_problems = _inspect_file(subject, name, str(path), expect_signal=name != "seg")
        problems += file_problems
        if geometry is not None:
            read.append((name, str(path), geometry))
    return problems + _grid_problems(subject, read, affine_atol)


def _majority(items: Sequence[Any], same: Callable[[Any, Any], bool]) -> int:
    """Index of the item that agrees (``same``) with the most items; ties go to the earliest."""
    votes = [sum(same(item, other) for other in items) for item in items]
    return votes.index(max(votes))


def _grid_problems(subject: str, read: Sequence[tuple[str, str, _Geometry]], affine_atol: float) -> list[DataProblem]:
    """Files of one subject whose shape or affine differs from the majority of its files.

    The reference is the grid most files share (ties: the earliest file's, T1 first), so one odd modality is
    blamed alone, not the three good ones compared against it.

    Args:
        subject: the subject id.
        read: ``(name, path, geometry)`` of the subject's readable files, in datalist order.
        affine_atol: tolerance of the affine comparison.

    Returns:
        One problem per file off the reference grid.
    """
    if len(read) < 2:
        return []
    problems = []
    shape = read[_majority([g.shape for _, _, g in read], lambda a, b: a == b)][2].shape
    for name, path, geometry in read:
        if geometry.shape != shape:
            agreeing = ", ".join(n for n, _, g in read if g.shape == shape)
            problems.append(
                DataProblem(
                    subject,
                    path,
                    f"{name}: shape {geometry.shape} differs from {shape}, the shape of {agreeing}",
                    _FIX_GRID,
                )
            )
    on_shape = [(name, path, geometry) for name, path, geometry in read if geometry.shape == shape]

    def close(a: np.ndarray, b: np.ndarray) -> bool:
        return bool(np.allclose(a, b, rtol=0.0, atol=affine_atol))

    affine = on_shape[_majority([g.affine for _, _, g in on_shape], close)][2].affine
    agreeing = ", ".join(n for n, _, g in on_shape if close(g.affine, affine))
    for name, path, geometry in on_shape:
        if not close(geometry.affine, affine):
            difference = float(np.abs(geometry.affine - affine).max())
            problems.append(
                DataProblem(
                    subject,
                    path,
                    f"{name}: affine differs from that of {agreeing} by up to {difference:.4g} "
                    f"(tolerance {affine_atol:g})",
                    _FIX_GRID,
                )
            )
    return problems


def _check_labels(datalist: Mapping[str, Any], require_labels: bool) -> list[DataProblem]:
    """Dataset-level problems: duplicate ids, missing labels, labels outside ``class_names``."""
    records = datalist.get("training", [])
    class_names = list(datalist.get("class_names") or [])
    problems = []
    if not records:
        problems.append(
            DataProblem(
                "<dataset>", None, "the datalist has no subjects", "check the dataset root, or regenerate the datalist"
            )
        )
    counts = Counter(str(r.get("subject")) for r in records)
    for subject, count in counts.items():
        if count > 1:
            problems.append(
                DataProblem(
                    subject,
                    None,
                    f"subject id appears {count} times",
                    "make subject ids unique (a patient on both sides of a split leaks)",
                )
            )
    for record in records:
        subject, label = str(record.get("subject")), record.get("label")
        if label is None:
            if require_labels:
                problems.append(
                    DataProblem(
                        subject,
                        None,
                        "subject has no label",
                        "add the subject to the labels CSV (--labels, --label-column), or allow unlabeled data",
                    )
                )
        elif isinstance(label, bool) or not isinstance(label, numbers.Integral) or not 0 <= label < len(class_names):
            problems.append(
                DataProblem(
                    subject,
                    None,
                    f"label {label!r} is outside the class list {class_names}",
                    f"use an integer index in 0..{len(class_names) - 1} into class_names",
                )
            )
        elif record.get("class_name") not in (None, class_names[label]):
            problems.append(
                DataProblem(
                    subject,
                    None,
                    f"class_name {record['class_name']!r} disagrees with label {label} ({class_names[label]!r})",
                    "fix class_name or label in the datalist",
                )
            )
    return problems


def _check(
    data: str | os.PathLike | Mapping[str, Any],
    *,
    require_labels: bool = True,
    affine_atol: float = 1e-3,
    num_workers: int | None = None,
    progress: bool | None = None,
    labels_csv: str | os.PathLike | None = None,
    label_column: str | None = None,
    subject_column: str | None = None,
    layout: str = "auto",
    class_names: Sequence[str] | None = None,
    modality_patterns: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], list[DataProblem]]:
    """The datalist behind ``data`` and all its problems (see :func:`check_data`)."""
    from tqdm.auto import tqdm

    if isinstance(data, Mapping):
        datalist, problems = dict(data), []
    else:  # a folder's discovery problems (missing or ambiguous modalities) are reported with the others
        datalist, problems = _read_source(
            data,
            labels_csv=labels_csv,
            label_column=label_column,
            subject_column=subject_column,
            layout=layout,
            class_names=class_names,
            modality_patterns=modality_patterns,
        )
    problems += _check_labels(datalist, require_labels)
    records = datalist.get("training", [])
    workers = num_workers or min(4, usable_cpus())
    show = progress if progress is not None else len(records) > 20
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda record: _check_subject(record, affine_atol), records)
        for subject_problems in tqdm(results, total=len(records), desc="check-data", unit="subject", disable=not show):
            problems += subject_problems
    logger.info("checked %d subjects: %d problem(s)", len(records), len(problems))
    return datalist, problems


def check_data(
    data: str | os.PathLike | Mapping[str, Any],
    *,
    require_labels: bool = True,
    affine_atol: float = 1e-3,
    num_workers: int | None = None,
    progress: bool | None = None,
    labels_csv: str | os.PathLike | None = None,
    label_column: str | None = None,
    subject_column: str | None = None,
    layout: str = "auto",
    class_names: Sequence[str] | None = None,
    modality_patterns: Mapping[str, str] | None = None,
) -> list[DataProblem]:
    """Find every problem of a dataset in one pass.

    Args:
        data: a dataset root (discovered as by :func:`~medkd3d.data.discover_brats`, whose missing or ambiguous
            modalities are reported here too), a datalist JSON file, or a datalist dict.
        require_labels: report subjects without a label (turn off for unlabeled inference data).
        affine_atol: largest tolerated difference between the affines of a subject's files (mm / direction cosines).
        num_workers: threads reading files (decompression releases the GIL); default ``min(4, CPU count)``.
        progress: show a progress bar over subjects; by default when more than 20 subjects are checked.
        labels_csv: for a dataset root: labels CSV, see :func:`~medkd3d.data.discover_brats`.
        label_column: for a dataset root: label column of ``labels_csv``.
        subject_column: for a dataset root: subject-id column of ``labels_csv``.
        layout: for a dataset root: its layout, ``"auto"`` to detect it.
        class_names: for a dataset root: the classes declared explicitly (see
            :func:`~medkd3d.data.discover_brats`); ``None`` enforces the known label sets.
        modality_patterns: for a dataset root: file-name pattern per modality, for files whose names carry no
            modality token (see :func:`~medkd3d.data.discover_brats`).

    Returns:
        The problems: discovery and dataset-level ones first, then per subject in datalist order; empty if valid.

    Raises:
        FileNotFoundError: if ``data`` is neither a folder nor an existing datalist file.
        ValueError: if a datalist file is not a datalist, or a labels CSV lacks the needed columns.
    """
    return _check(
        data,
        require_labels=require_labels,
        affine_atol=affine_atol,
        num_workers=num_workers,
        progress=progress,
        labels_csv=labels_csv,
        label_column=label_column,
        subject_column=subject_column,
        layout=layout,
        class_names=class_names,
        modality_patterns=modality_patterns,
    )[1]


def assert_data_valid(data: str | os.PathLike | Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Raise if :func:`check_data` finds any problem; otherwise return the checked datalist.

    Args:
        data: a dataset root, a datalist JSON file or a datalist dict.
        kwargs: keyword arguments of :func:`check_data`.

    Returns:
        The datalist (absolute paths when read from a root or a file), ready for the transform pipelines.

    Raises:
        DataValidationError: listing every problem, one per line.
    """
    datalist, problems = _check(data, **kwargs)
    if problems:
        raise DataValidationError(problems, context="datalist" if isinstance(data, Mapping) else str(data))
    return datalist
