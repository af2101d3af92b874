"""Patient-level, stratified, seeded data splits (the ``medkd3d split`` command is in :mod:`medkd3d.data.cli`).

Splits are made over *subjects*, never over records or slices: every record of a subject id lands on the same
side, so a subject scanned twice (or listed twice) cannot leak from training into validation or test, and
neither can the slices of one volume. Classes are stratified so every side keeps the dataset's class ratio
(BraTS 2019 is 259 HGG / 76 LGG).

A split file is JSON::

    {"description": "medkd3d splits", "seed": 0,
     "test": ["BraTS19_..."],                         # held out once, may be empty
     "folds": [{"train": [...], "val": [...]}, ...],  # k folds, or a single train/val split
     "train_per_class": null,                         # or N: training sides reduced to N subjects per class
     "datalist": "/abs/datalist.json", "class_names": ["LGG", "HGG"]}  # added by `medkd3d split`

:func:`split_records` turns a split file plus a datalist into the train/val/test record lists.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd3d.utils import atomic_write_text

logger = logging.getLogger(__name__)

__all__ = [
    "load_splits",
    "make_splits",
    "per_class_subset",
    "split_records",
    "stratified_kfold",
    "subject_labels",
    "train_val_test_split",
    "write_splits",
]

Record = Mapping[str, Any]


def subject_labels(records: Sequence[Record]) -> dict[str, Any]:
    """Map each subject id to its label (the stratum), in first-appearance order.

    Args:
        records: datalist records with ``"subject"`` and ``"label"`` (``None`` for unlabeled, its own stratum).

    Returns:
        ``{subject: label}`` with one entry per distinct subject.

    Raises:
        ValueError: if a record has no subject id, or one subject carries two different labels.
    """
    labels: dict[str, Any] = {}
    for position, record in enumerate(records):
        subject = record.get("subject")
        if not subject:
            raise ValueError(
                f"record {position} has no 'subject' id, so it cannot be split by patient; regenerate the "
                "datalist with `medkd3d datalist`"
            )
        label = record.get("label")
        if subject in labels and labels[subject] != label:
            raise ValueError(
                f"subject {subject!r} appears with labels {labels[subject]!r} and {label!r}; "
                "fix the labels in the datalist so each subject has one class"
            )
        labels.setdefault(subject, label)
    return labels


def _strata(labels: Mapping[str, Any]) -> list[list[str]]:
    """Subjects grouped by label, strata and members in a fixed (sorted) order independent of the input order."""
    groups: dict[str, list[str]] = {}
    for subject, label in labels.items():
        groups.setdefault(repr(label), []).append(subject)
    return [sorted(groups[key]) for key in sorted(groups)]


def stratified_kfold(records: Sequence[Record], num_folds: int = 5, seed: int = 0) -> list[dict[str, list[str]]]:
    """Split subjects into ``num_folds`` stratified folds; fold ``i`` validates on part ``i``, trains on the rest.

    Each class is shuffled (seeded) and dealt round-robin to the folds, continuing where the previous class
    stopped, so per-class counts and total fold sizes each differ by at most one.

    Args:
        records: datalist records (several records of one subject stay together).
        num_folds: number of folds ``k >= 2``.
        seed: random seed; the same records and seed give the same folds.

    Returns:
        ``k`` dicts ``{"train": [subjects], "val": [subjects]}`` (sorted ids).

    Raises:
        ValueError: if ``num_folds < 2`` or there are fewer subjects than folds.
    """
    labels = subject_labels(records)
    if num_folds < 2:
        raise ValueError(f"k-fold needs at least 2 folds, got {num_folds}")
    if len(labels) < num_folds:
        raise ValueError(f"cannot make {num_folds} folds from {len(labels)} subjects; use fewer folds")
    rng = np.random.default_rng(seed)
    parts: list[list[str]] = [[] for _ in range(num_folds)]
    position = 0
    for members in _strata(labels):
        if len(members) < num_folds:
            logger.warning(
                "label %r has %d subjects for %d folds: some folds validate on none of them",
                labels[members[0]],
                len(members),
                num_folds,
            )
        for subject in rng.permutation(members):
            parts[position % num_folds].append(str(subject))
            position += 1
    subjects = set(labels)
    return [{"train": sorted(subjects - set(part)), "val": sorted(part)} for part in parts]


def train_val_test_split(
    records: Sequence[Record], val_fraction: float = 0.2, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[str]]:
    """Stratified hold-out split of the subjects into train, validation and test.

    Per class, ``round(n * fraction)`` subjects go to test and to validation (so small classes are rounded
    separately), the rest to training.

    Args:
        records: datalist records.
        val_fraction: fraction of each class's subjects for validation.
        test_fraction: fraction of each class's subjects for test.
        seed: random seed.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` with sorted subject ids.

    Raises:
        ValueError: if a fraction is negative or they leave nothing for training.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"need 0 <= val_fraction, test_fraction and val_fraction + test_fraction < 1, got {val_fraction} "
            f"and {test_fraction}"
        )
    rng = np.random.default_rng(seed)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for members in _strata(subject_labels(records)):
        shuffled = [str(s) for s in rng.permutation(members)]
        num_test = round(len(members) * test_fraction)
        num_val = round(len(members) * val_fraction)
        split["test"] += shuffled[:num_test]
        split["val"] += shuffled[num_test : num_test + num_val]
        split["train"] += shuffled[num_test + num_val :]
    return {side: sorted(subjects) for side, subjects in split.items()}


def per_class_subset(records: Sequence[Record], num_per_class: int | str = "all", seed: int = 0) -> list[str]:
    """Choose ``num_per_class`` subjects of every class, for data-size studies.

    Subsets are nested: with the same seed, the subset of ``N`` is contained in the subset of any ``M > N``,
    so a learning curve adds subjects instead of redrawing them.

    Args:
        records: datalist records (e.g. the training side of a split).
        num_per_class: subjects per class, or ``"all"``.
        seed: random seed.

    Returns:
        Sorted subject ids.

    Raises:
        ValueError: if ``num_per_class`` is not positive or exceeds the size of a class.
    """
    labels = subject_labels(records)
    if num_per_class == "all":
        return sorted(labels)
    num_per_class = int(num_per_class)
    if num_per_class < 1:
        raise ValueError(f"num_per_class must be a positive integer or 'all', got {num_per_class}")
    rng = np.random.default_rng(seed)
    chosen: list[str] = []
    for members in _strata(labels):
        if len(members) < num_per_class:
            raise ValueError(
                f"class with label {labels[members[0]]!r} has only {len(members)} subjects, fewer than the "
                f"{num_per_class} requested per class; ask for at most {len(members)} or 'all'"
            )
        chosen += [str(s) for s in rng.permutation(members)[:num_per_class]]
    return sorted(chosen)


def make_splits(
    records: Sequence[Record],
    num_folds: int | None = 5,
    val_fraction: float | None = None,
    test_fraction: float = 0.0,
    train_per_class: int | str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Build a complete split description: an optional held-out test set, then k folds or one train/val split.

    Args:
        records: datalist records.
        num_folds: k for k-fold cross-validation of the non-test subjects (ignored when ``val_fraction`` is set).
        val_fraction: make a single train/val split with this fraction (of all subjects) for validation.
        test_fraction: fraction of all subjects held out for test before anything else.
        train_per_class: reduce every training side to this many subjects per class (``"all"`` or ``None``
            keeps them all); validation and test are untouched.
        seed: random seed of every draw.

    Returns:
        The split dict in the file format described in the module docstring.
    """
    if val_fraction is not None and val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction} + {test_fraction}")
    holdout = train_val_test_split(records, 0.0, test_fraction, seed)
    test = set(holdout["test"])
    remaining = [r for r in records if r["subject"] not in test]
    if val_fraction is not None:
        # the fraction is of all subjects, so rescale it to the part left after the test hold-out
        single = train_val_test_split(remaining, val_fraction / (1.0 - test_fraction), 0.0, seed)
        folds = [{"train": single["train"], "val": single["val"]}]
    else:
        folds = stratified_kfold(remaining, num_folds or 5, seed)
    if train_per_class not in (None, "all"):
        for fold in folds:
            train = set(fold["train"])
            fold["train"] = per_class_subset([r for r in remaining if r["subject"] in train], train_per_class, seed)
    return {
        "description": "medkd3d splits",
        "seed": seed,
        "test": holdout["test"],
        "folds": folds,
        "train_per_class": train_per_class,
    }


def write_splits(splits: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a split dict as JSON atomically (a temporary file renamed into place)."""
    return atomic_write_text(path, json.dumps(splits, indent=2) + "\n")


def load_splits(path: str | os.PathLike) -> dict[str, Any]:
    """Read a split file written by :func:`write_splits` (or ``medkd3d split``).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is not a split file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found; create it with `medkd3d split DATALIST --out {path}`")
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"split file {path} is not valid JSON ({error}); regenerate it with `medkd3d split`") from None
    if not isinstance(splits, dict) or not isinstance(splits.get("folds"), list):
        raise ValueError(f"split file {path} has no 'folds' list; regenerate it with `medkd3d split`")
    return splits


def split_records(records: Sequence[Record], splits: Mapping[str, Any], fold: int = 0) -> dict[str, list[Record]]:
    """Materialise one fold of a split into record lists.

    Args:
        records: the datalist's records.
        splits: a split dict (:func:`make_splits` or :func:`load_splits`).
        fold: which fold's train/val sides to use.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, each in datalist order, with every record of each
        subject.

    Raises:
        IndexError: if ``fold`` does not exist.
        ValueError: if the split names a subject the datalist does not have.
    """
    folds = splits["folds"]
    if not 0 <= fold < len(folds):
        raise IndexError(f"fold {fold} does not exist: the split has folds 0..{len(folds) - 1}")
    known = {r["subject"] for r in records}
    sides = {"train": folds[fold]["train"], "val": folds[fold]["val"], "test": splits.get("test", [])}
    out: dict[str, list[Record]] = {}
    for side, subjects in sides.items():
        missing = sorted(set(subjects) - known)
        if missing:
            raise ValueError(
                f"the {side} side of fold {fold} names subjects missing from the datalist ({', '.join(missing[:5])}"
                f"{', ...' if len(missing) > 5 else ''}); regenerate the split for this datalist with `medkd3d split`"
            )
        wanted = set(subjects)
        out[side] = [r for r in records if r["subject"] in wanted]
    return out
