"""The study grid and its resumable bookkeeping: one atomically written JSON file per finished run.

A study crosses students x KD modes x data sizes x seeds x folds (KD modes a student bundle lacks are left out).
A data size is a number ``N`` of labelled training subjects per class, ``"all"``, or ``"N+unlabelled"``: ``N``
labelled per class and the fold's other training subjects kept without their grade for the KD term. Every combination is a :class:`RunSpec`
with a stable :attr:`~RunSpec.key`; its result lives in ``<out>/runs/<key>.json``. A run counts as finished
exactly when that file exists, and the file only ever appears complete (it is written to a temporary name in
the same folder and renamed with ``os.replace``), so an interrupted study - killed mid-run, mid-write, or by a
power cut - resumes by skipping the runs whose files exist and redoing only the one that was in flight.

``<out>/study.json`` records the settings every run depends on (data, folds, epochs, models, ...). Resuming
with different settings would silently mix incomparable runs, so it is refused; growing the grid (more seeds,
sizes, students or KD modes) is allowed, because each run is keyed by its own coordinates.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medkd3d.bundles.training import KD_MODES
from medkd3d.utils import atomic_path

__all__ = [
    "KD_MODES",
    "ResultStore",
    "RunSpec",
    "StudyGrid",
    "labelled_per_class",
    "parse_size",
    "read_json",
    "size_sort_key",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

Size = int | str

#: Suffix of a data size whose remaining training subjects are kept unlabelled (``"8+unlabelled"``).
UNLABELLED_SUFFIX = "+unlabelled"


def parse_size(value: int | str) -> Size:
    """A data size: a positive number ``N`` of labelled training subjects per class, ``"all"`` (the whole training
    side), or ``"N+unlabelled"`` (``N`` labelled per class, the other training subjects unlabelled, KD term only).

    Raises:
        ValueError: for anything else.
    """
    text = value.strip().lower() if isinstance(value, str) else value
    if text == "all":
        return "all"
    unlabelled = isinstance(text, str) and text.endswith(UNLABELLED_SUFFIX)
    if unlabelled:
        text = text[: -len(UNLABELLED_SUFFIX)]
    try:
        number = int(text)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or (isinstance(value, float) and value != number):
        raise ValueError(
            f"a data size is a positive number of labelled subjects per class, 'all' or 'N+unlabelled', got {value!r}"
        )
    return f"{number}{UNLABELLED_SUFFIX}" if unlabelled else number


def labelled_per_class(size: Size) -> tuple[int | None, bool]:
    """``(labelled subjects per class or None for all, whether the others are kept unlabelled)`` of a size."""
    size = parse_size(size)
    if size == "all":
        return None, False
    if isinstance(size, str):
        return int(size[: -len(UNLABELLED_SUFFIX)]), True
    return size, False


def size_sort_key(size: Size) -> float:
    """Order sizes as a learning curve does: ascending numbers (``"N+unlabelled"`` right after ``N``), then
    ``"all"``."""
    per_class, unlabelled = labelled_per_class(size)
    return float("inf") if per_class is None else per_class + (0.5 if unlabelled else 0.0)


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid at one seed and fold: what to train and where its result goes.

    Args:
        student: student bundle name (e.g. ``"brats_student_effnet3d"``).
        kd: KD mode, one of :data:`KD_MODES`.
        size: labelled training subjects per class, ``"all"`` or ``"N+unlabelled"`` (see :func:`parse_size`).
        seed: seed of the subject subset, the weight initialisation and the augmentations.
        fold: index of the patient-level fold whose held-out subjects evaluate the run.
    """

    student: str
    kd: str
    size: Size
    seed: int
    fold: int

    @property
    def key(self) -> str:
        """Stable, file-name-safe identifier, e.g. ``"brats_hdkd_student3d_logit+feature_8+unlabelled_s0_f1"``."""
        return f"{self.student}_{self.kd}_{self.size}_s{self.seed}_f{self.fold}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StudyGrid:
    """The full cross product of a study.

    Args:
        students: student names.
        kd_modes: KD modes (each one of :data:`KD_MODES`).
        sizes: data sizes (see :func:`parse_size`).
        seeds: seeds.
        folds: number of patient-level folds; every run is repeated on each fold.
        unsupported: ``(student, KD mode)`` pairs left out (a mode the student's bundle does not have).

    Raises:
        ValueError: for an empty or duplicated axis, an unknown KD mode or fewer than two folds.
    """

    students: tuple[str, ...]
    kd_modes: tuple[str, ...]
    sizes: tuple[Size, ...]
    seeds: tuple[int, ...]
    folds: int
    unsupported: frozenset[tuple[str, str]] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(parse_size(s) for s in self.sizes))
        for axis in ("students", "kd_modes", "sizes", "seeds"):
            values = tuple(getattr(self, axis))
            object.__setattr__(self, axis, values)
            if not values:
                raise ValueError(f"the study grid needs at least one of {axis}")
            duplicates = sorted({str(v) for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"{axis} lists {', '.join(duplicates)} more than once; give each value once")
        unknown = [mode for mode in self.kd_modes if mode not in KD_MODES]
        if unknown:
            raise ValueError(f"unknown KD mode(s) {unknown}; choose from {list(KD_MODES)}")
        if self.folds < 2:
            raise ValueError(f"a study needs at least 2 patient-level folds, got {self.folds}")

    def runs(self) -> list[RunSpec]:
        """Every run, fold-major (one teacher per fold is needed at a time), no-KD before KD runs of a cell."""
        return [
            RunSpec(student, kd, size, seed, fold)
            for fold in range(self.folds)
            for size in sorted(self.sizes, key=size_sort_key)
            for seed in self.seeds
            for student in self.students
            for kd in self.kd_modes
            if (student, kd) not in self.unsupported
        ]

    def __len__(self) -> int:
        return len(self.runs())


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    return Path(path)


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file the study wrote, naming the file and the fix when it is unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{what} {path} cannot be read ({error}); delete it to redo that step") from None


class ResultStore:
    """Finished-run bookkeeping of a study folder.

    Layout: ``<root>/study.json`` (the settings, see :meth:`bind_settings`) and ``<root>/runs/<key>.json``
    (one result per finished run, holding the run's coordinates and its metrics).

    Args:
        root: the study's output folder (created when missing).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.runs_dir = self.root / "runs"
        self.settings_path = self.root / "study.json"

    def path(self, spec: RunSpec) -> Path:
        """Where ``spec``'s result is (or will be) stored."""
        return self.runs_dir / f"{spec.key}.json"

    def is_done(self, spec: RunSpec) -> bool:
        return self.path(spec).is_file()

    def write(self, spec: RunSpec, result: Mapping[str, Any]) -> Path:
        """Store a finished run's result atomically; the run's coordinates are written alongside.

        Args:
            spec: the run.
            result: JSON-serialisable metrics and costs (keys must not clash with the coordinates).

        Returns:
            The result file.

        Raises:
            ValueError: if ``result`` disagrees with ``spec`` on a coordinate.
        """
        coordinates = spec.as_dict()
        clash = [k for k, v in result.items() if k in coordinates and v != coordinates[k]]
        if clash:
            raise ValueError(f"result of run {spec.key} has coordinates {clash} that differ from the run's own")
        return write_json_atomic(self.path(spec), {**coordinates, **result})

    def read(self, spec: RunSpec) -> dict[str, Any] | None:
        """The stored result of ``spec``, or ``None`` when the run has not finished.

        Raises:
            ValueError: if the file is unreadable or belongs to another run (e.g. copied by hand).
        """
        path = self.path(spec)
        if not path.is_file():
            return None
        result = read_json(path, f"result of run {spec.key}")
        stored = RunSpec(**{k: result.get(k) for k in ("student", "kd", "size", "seed", "fold")})
        if stored != spec:
            raise ValueError(
                f"result file {path} describes run {stored.key}, not {spec.key}; delete it to redo the run"
            )
        return result

    def pending(self, grid: StudyGrid) -> list[RunSpec]:
        """The runs of ``grid`` without a result, in grid order."""
        return [spec for spec in grid.runs() if not self.is_done(spec)]

    def collect(self, grid: StudyGrid) -> list[dict[str, Any]]:
        """The results of every finished run of ``grid``, in grid order (runs outside ``grid`` are ignored)."""
        return [result for spec in grid.runs() if (result := self.read(spec)) is not None]

    def bind_settings(self, settings: Mapping[str, Any]) -> None:
        """Record the study's settings on first use; on resume, refuse settings that differ.

        Args:
            settings: JSON-serialisable values every run depends on (not the grid axes, which may grow).

        Raises:
            ValueError: naming each differing setting, when the folder holds a study run with other settings.
        """
        settings = json.loads(json.dumps(dict(settings)))  # normalise tuples to lists, as stored
        if not self.settings_path.is_file():
            write_json_atomic(self.settings_path, settings)
            return
        stored = read_json(self.settings_path, "study settings")
        changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        if changed:
            details = "; ".join(f"{k}: stored {stored.get(k)!r}, now {settings.get(k)!r}" for k in changed)
            raise ValueError(
                f"the study in {self.root} was run with other settings ({details}); resuming would mix "
                "incomparable runs. Use a new --out folder, or the original settings to continue it."
            )
