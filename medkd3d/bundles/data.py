"""Dataset preparation for the bundles: synthesise the embedded default, discover, validate, split into a held-out
test set and folds."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "SYNTHETIC_DEFAULT",
    "drop_last_batch",
    "ensure_dataset",
    "inference_records",
    "prepare_dataset",
    "split_dataset",
    "split_side",
    "threshold_records",
]

logger = logging.getLogger(__name__)

#: What ``generate_synthetic_brats`` writes when a bundle's ``dataset_dir`` does not exist: BraTS 2019 layout,
#: full BraTS volume size, a grade balance close to BraTS 2019 (259 HGG / 76 LGG) but with enough LGG per fold.
SYNTHETIC_DEFAULT: dict[str, Any] = {
    "layout": "brats2019",
    "n_hgg": 24,
    "n_lgg": 16,
    "shape": (240, 240, 155),
    "seed": 0,
}


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def ensure_dataset(
    dataset_dir: str | os.PathLike,
    synthetic: Mapping[str, Any] | None = None,
    option: str = "dataset_dir",
    given: bool = True,
) -> Path:
    """Return ``dataset_dir``, first generating a synthetic BraTS dataset there when it does not exist.

    The dataset is written to a temporary sibling folder and renamed into place, so an interrupted generation
    never leaves a half-written dataset that a later run would mistake for a complete one. Under DDP rank 0
    generates and the other ranks wait.

    Args:
        dataset_dir: dataset root (a BraTS release folder, or where the synthetic default goes).
        synthetic: keyword arguments of :func:`medkd3d.data.generate_synthetic_brats` overriding
            :data:`SYNTHETIC_DEFAULT`; ``None`` uses the default.
        option: how the caller's user sets ``dataset_dir``, named in the warning: the bundle config id
            ``dataset_dir`` (``--dataset_dir`` of ``monai.bundle run``) by default, ``"--dataset-dir"`` for the
            ``medkd3d`` commands.
        given: the user chose ``dataset_dir``; ``False`` when it is the caller's default location, so the log
            says that the embedded default is generated instead of warning about a folder nobody named.

    Returns:
        The dataset root.
    """
    root = Path(dataset_dir).expanduser().resolve()
    if not root.exists() and _is_main_process():
        from medkd3d.data import generate_synthetic_brats

        settings = {**SYNTHETIC_DEFAULT, **(synthetic or {})}
        what = (
            f"{settings['layout']} layout, {settings['n_hgg']} HGG + {settings['n_lgg']} LGG, "
            f"shape {tuple(settings['shape'])}, seed {settings['seed']}"
        )
        if given:
            logger.warning(
                "%s %s does not exist: generating a synthetic BraTS dataset there (%s). Point %s at a BraTS folder "
                "to use real data.", option, root, what, option,
            )  # fmt: skip
        else:
            logger.info(
                "No dataset given: generating the embedded synthetic BraTS default in %s (%s). Give %s a BraTS "
                "folder to use real data.", root, what, option,
            )  # fmt: skip
        staging = root.with_name(f".{root.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            generate_synthetic_brats(staging, **settings)
            os.replace(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _barrier()
    return root


def prepare_dataset(
    dataset_dir: str | os.PathLike,
    datalist: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    synthetic: Mapping[str, Any] | None = None,
    labels_csv: str | os.PathLike | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
    validate: bool = True,
) -> dict[str, Any]:
    """The datalist a bundle trains, evaluates or infers on, validated before any training starts.

    Args:
        dataset_dir: dataset root; a synthetic BraTS dataset is generated there when it does not exist (and no
            ``datalist`` is given).
        datalist: a datalist JSON (``medkd3d datalist`` output); when given, the records come from this file and
            ``dataset_dir`` is not used.
        class_names: the classes the bundle's network predicts, in label order; the dataset must have the same.
        synthetic: overrides of :data:`SYNTHETIC_DEFAULT` for the generated dataset.
        labels_csv: labels CSV for layouts without grade folders (BraTS 2021, generic layouts).
        label_column: the label column of ``labels_csv``.
        require_labels: report subjects without a label as problems (``False`` for inference).
        validate: read every file once and fail on any problem (missing modality, corrupt file, shape
            mismatch, NaNs, missing labels...) before training; see :func:`medkd3d.data.assert_data_valid`.

    Returns:
        The datalist dictionary with absolute paths (``training`` records, ``class_names``...).

    Raises:
        medkd3d.data.DataValidationError: listing every problem found, with subject, file and fix.
        ValueError: if the dataset's class names differ from ``class_names``.
    """
    from medkd3d.data import assert_data_valid, read_datalist

    source = Path(datalist) if datalist else ensure_dataset(dataset_dir, synthetic)
    labels = {"labels_csv": labels_csv, "label_column": label_column} if not datalist else {}
    if validate:
        data = assert_data_valid(source, require_labels=require_labels, **labels)
    else:
        data = read_datalist(source, **labels)
    if class_names is not None and list(data["class_names"]) != list(class_names):
        raise ValueError(
            f"The dataset {source} has classes {data['class_names']} but the bundle predicts {list(class_names)}; "
            f'override the bundle\'s class names to match, e.g. --class_names "{list(data["class_names"])}".'
        )
    logger.info("Dataset %s: %d subjects, classes %s.", source, len(data["training"]), data["class_names"])
    return data


def split_dataset(
    datalist: Mapping[str, Any],
    fold: int = 0,
    num_folds: int = 5,
    seed: int = 0,
    splits_file: str | os.PathLike | None = None,
    test_fraction: float = 0.2,
) -> dict[str, list[dict[str, Any]]]:
    """The training, validation and held-out test records of one fold, split by patient and stratified by class.

    ``test_fraction`` of each class's subjects are held out first; they depend on the subjects, ``test_fraction``
    and ``seed`` only, so every fold (and every bundle) reports on the same test subjects, which neither training
    nor validation (the decision threshold, early stopping, a ``model_selection: best`` checkpoint: the ``val``
    side) ever sees. The remaining subjects are dealt into ``num_folds`` stratified folds. The whole split depends
    only on the subjects and these arguments, so the teacher and every student bundle (same overrides) train,
    validate and test on the same subjects: a student is never validated or tested on a subject its teacher was
    trained on.

    Args:
        datalist: the prepared datalist (:func:`prepare_dataset`).
        fold: the fold to use, ``0 <= fold < num_folds``.
        num_folds: number of stratified folds of the non-test subjects.
        seed: split seed (of the test hold-out and of the folds).
        splits_file: a split file made by ``medkd3d split`` to use instead (its held-out test side is returned
            as ``"test"``; ``num_folds``, ``seed`` and ``test_fraction`` are then not used).
        test_fraction: fraction of each class's subjects held out for test, in ``[0, 1)``; ``0`` holds out none
            (the bundles' ``evaluate.json`` then refuses to report on the empty test side).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` record lists.

    Raises:
        ValueError: for a ``test_fraction`` outside ``[0, 1)``, too few subjects for the folds, or a split file
            that does not match the datalist.
    """
    from medkd3d.data.splits import load_splits, make_splits, split_records

    records = list(datalist["training"])
    if splits_file:
        splits = load_splits(splits_file)
    else:
        if not 0.0 <= float(test_fraction) < 1.0:
            raise ValueError(
                f"test_fraction must be in [0, 1), got {test_fraction}; e.g. --test_fraction 0.2 holds out a fifth "
                "of each class for test"
            )
        splits = make_splits(records, num_folds=num_folds, test_fraction=float(test_fraction), seed=seed)
    sides = split_records(records, splits, fold=fold)
    logger.info(
        "Fold %d: %d training, %d validation, %d held-out test subjects.",
        fold,
        len(sides["train"]),
        len(sides["val"]),
        len(sides["test"]),
    )
    return sides


def drop_last_batch(num_items: int, batch_size: int) -> bool:
    """The training ``DataLoader``'s ``drop_last``, refusing a batch size the training set cannot fill.

    A shuffled epoch of ``num_items`` in batches of ``batch_size`` ends with ``num_items % batch_size`` items.
    Dropping that batch always (``drop_last=True``) silently trains on a truncated epoch (15 subjects in batches
    of 8 use 8 per epoch), and on nothing at all when ``batch_size > num_items``: no step runs, no model is
    written. So the last batch is kept, and dropped only when it would hold a single item (BatchNorm cannot
    normalise over one sample in training), which leaves out at most one subject per epoch, a different one each
    epoch. The bundles' ``train.json`` set ``train#dataloader#drop_last`` with it.

    Args:
        num_items: items of the training dataset.
        batch_size: the training batch size.

    Returns:
        Whether the ``DataLoader`` drops its last batch.

    Raises:
        ValueError: with the numbers and the fix, if ``batch_size`` is below 1 or above ``num_items``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if num_items < batch_size:
        raise ValueError(
            f"The training set has {num_items} subject(s), fewer than batch_size {batch_size}: no full training "
            f"batch could be formed, so nothing would train. Lower the batch size to at most {max(num_items, 1)} "
            f"(e.g. --batch_size {max(min(num_items, batch_size // 2), 1)}), or give the fold more training "
            "subjects (more data, fewer folds, a smaller test_fraction or a larger train_per_class)."
        )
    drop = batch_size > 1 and num_items % batch_size == 1
    if drop:
        logger.info(
            "Training: %d subjects in batches of %d; the one left over is skipped each epoch (a batch of one "
            "cannot train BatchNorm), a different one every epoch.", num_items, batch_size,
        )  # fmt: skip
    return drop


def split_side(split: Mapping[str, Sequence[dict[str, Any]]], side: str = "test") -> list[dict[str, Any]]:
    """The records of one side of :func:`split_dataset`, refusing an empty one (what ``evaluate.json`` reports on).

    Args:
        split: ``{"train": [...], "val": [...], "test": [...]}``.
        side: ``"test"`` (the honest default), ``"val"`` or ``"train"``.

    Returns:
        The side's records.

    Raises:
        KeyError: for an unknown side.
        ValueError: if the side has no subject, with the overrides that fix it.
    """
    if side not in split:
        raise KeyError(f"evaluate_split={side!r} is not a side of the split; choose one of {sorted(split)}")
    records = list(split[side])
    if not records:
        if side == "test":
            raise ValueError(
                "The test split is empty, so there is nothing held out to report on: hold out test subjects with "
                "--test_fraction 0.2 (a fraction of each class, default 0.2) or a --splits_file made by "
                "`medkd3d split DATALIST --test-fraction 0.2 --out splits.json`; --evaluate_split val reports on "
                "the validation subjects, which model selection has seen."
            )
        raise ValueError(f"The {side} split is empty; check the split settings (fold, num_folds, splits_file).")
    return records


def threshold_records(
    split: Mapping[str, Sequence[dict[str, Any]]],
    sides: str | Sequence[str] = "val",
    train_records: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The labelled subjects ``evaluate.json`` chooses the decision threshold on, each tagged with its ``side``.

    A threshold from a few validation subjects is noisy; adding the training subjects gives it more, at the price
    of scoring them with a model fitted to them (see the bundles' ``threshold_split``).

    Args:
        split: ``{"train": [...], "val": [...], "test": [...]}``.
        sides: one side or several, e.g. ``"val"`` or ``["train", "val"]``.
        train_records: the run's own training items (``train_records`` of ``train.json``); the ``train`` side
            then takes only their labelled ones, so a student trained on ``train_per_class`` subjects per class
            reads no other training label. ``None``: every subject of the split's training side.

    Returns:
        The sides' records in order, each with ``side`` added.

    Raises:
        ValueError: for ``test`` (the subjects the metrics are reported on cannot choose the threshold), or an
            empty side.
        KeyError: for an unknown side.
    """
    from medkd3d.engines import has_label

    sides = [sides] if isinstance(sides, str) else list(sides)
    if "test" in sides:
        raise ValueError(
            f"threshold_split={sides!r}: the test subjects are what evaluate.json reports on, so they cannot choose "
            "the decision threshold; use 'val' or ['train', 'val']."
        )
    records = []
    for side in sides:
        if side == "train" and train_records is not None:
            side_records = [r for r in train_records if has_label(r)]
        else:
            side_records = split_side(split, side)
        records += [{**r, "side": side} for r in side_records]
    return records


def inference_records(datalist: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The records of a datalist prepared for inference, where subjects may have no label.

    MONAI's collation cannot batch ``None``, so a missing label becomes ``-1`` (written as an empty label by
    :class:`~medkd3d.engines.handlers.ClassProbabilityWriter`).

    Args:
        datalist: a datalist dictionary (``training`` records, as returned by :func:`prepare_dataset`).

    Returns:
        The records, each with an integer ``label``.
    """
    return [
        {**record, "label": -1 if record.get("label") is None else record["label"]} for record in _records(datalist)
    ]


def _records(datalist: Mapping[str, Any]) -> Sequence[dict[str, Any]]:
    return list(datalist.get("training", [])) + list(datalist.get("testing", []))
