"""The trivial baseline every report compares against: a logistic regression on intensity percentiles.

Per subject and modality, the brain voxels (nonzero: BraTS volumes are skull-stripped with a zero background)
are z-scored and summarised by a few percentiles (:data:`DEFAULT_PERCENTILES`); a standardised scikit-learn
``LogisticRegression`` (class-balanced, like the models' class-weighted loss) is fitted on the training (and
validation) subjects and scored on the test subjects, giving the same metric dict the models get
(:func:`~medkd3d.engines.classification_metrics`). A deep model that does not beat it has not learned more than
"how bright is the brightest part of the T1ce".

Features are cached in memory per image file (path, size and modification time), so a study that scores the
baseline on many folds reads every file once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from medkd3d.utils import usable_cpus

from .metrics import classification_metrics

__all__ = [
    "DEFAULT_PERCENTILES",
    "BaselineResult",
    "evaluate_trivial_baseline",
    "intensity_features",
    "trivial_baseline",
]

logger = logging.getLogger(__name__)

#: Percentiles of the z-scored brain intensities, per modality.
DEFAULT_PERCENTILES: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.9)

#: What the report calls the baseline.
BASELINE_NAME = "trivial baseline (logistic regression on intensity percentiles)"


@lru_cache(maxsize=8192)
def _file_features(path: str, size: int, mtime_ns: int, percentiles: tuple[float, ...]) -> np.ndarray:
    """Percentiles of the z-scored nonzero voxels of one image; ``size``/``mtime_ns`` key the cache on the file's
    content, so a rewritten file is read again."""
    import nibabel as nib

    volume = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    brain = volume[volume != 0]
    if brain.size == 0:
        raise ValueError(
            f"{path}: the image has no nonzero (brain) voxel, so the baseline has no intensities to summarise; "
            "check the file or drop the subject from the datalist"
        )
    z = (brain - brain.mean()) / max(float(brain.std()), 1e-8)
    return np.percentile(z, percentiles).astype(np.float64)


def _images(record: Mapping[str, Any]) -> list[str]:
    images = record.get("image")
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if not images:
        raise ValueError(
            f"subject {record.get('subject')!r} has no 'image' files in the datalist; regenerate it with "
            "`medkd3d datalist`"
        )
    return [str(path) for path in images]


def intensity_features(record: Mapping[str, Any], percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """The baseline's features of one subject: per modality (in datalist order), the percentiles of its z-scored
    brain (nonzero) voxels.

    Args:
        record: a datalist record with ``image`` (one file per modality).
        percentiles: percentiles in ``[0, 100]``.

    Returns:
        ``[num_modalities * len(percentiles)]`` float64 features.

    Raises:
        FileNotFoundError: if an image file does not exist.
        ValueError: if an image has no nonzero voxel.
    """
    features = []
    for path in _images(record):
        try:
            stat = Path(path).stat()
        except FileNotFoundError:
            raise FileNotFoundError(
                f"subject {record.get('subject')!r}: image {path} not found; fix the datalist or the dataset folder"
            ) from None
        features.append(_file_features(path, stat.st_size, stat.st_mtime_ns, tuple(float(p) for p in percentiles)))
    return np.concatenate(features)


def _feature_matrix(records: Sequence[Mapping[str, Any]], percentiles: Sequence[float]) -> np.ndarray:
    """``[N, F]`` features of ``records``; files are read by a few threads (gzip and file reads release the GIL,
    and reading dominates on full-size BraTS volumes)."""
    workers = min(4, usable_cpus(), len(records))
    if workers <= 1:
        return np.stack([intensity_features(r, percentiles) for r in records])
    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(lambda r: intensity_features(r, percentiles), records)))


def has_label(record: Mapping[str, Any]) -> bool:
    """Whether a datalist record has a grade (inference datalists mark a missing one as ``None`` or ``-1``)."""
    return record.get("label") is not None and int(record["label"]) >= 0


def balanced_logistic_regression(regularization: float = 1.0) -> Any:
    """The package's linear read of a few features: standardised, then a class-balanced logistic regression.

    The trivial baseline fits it on intensity percentiles, :class:`~medkd3d.networks.readout.CompartmentReadout`
    on predicted compartment volumes.

    Args:
        regularization: inverse regularisation strength ``C``.

    Returns:
        An unfitted scikit-learn pipeline (``StandardScaler``, ``LogisticRegression``).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=regularization, class_weight="balanced", max_iter=5000))


@dataclass
class BaselineResult:
    """The baseline's test predictions and metrics.

    Args:
        subjects: test subject ids, in record order.
        probabilities: ``[N, K]`` predicted class probabilities.
        labels: ``[N]`` true classes.
        metrics: :func:`~medkd3d.engines.classification_metrics` of the test subjects.
        num_train: subjects the logistic regression was fitted on.
    """

    subjects: list[str]
    probabilities: np.ndarray
    labels: np.ndarray
    metrics: dict[str, Any]
    num_train: int


def trivial_baseline(
    train_records: Sequence[Mapping[str, Any]],
    test_records: Sequence[Mapping[str, Any]],
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    regularization: float = 1.0,
) -> BaselineResult:
    """Fit the intensity-percentile logistic regression on ``train_records`` and score it on ``test_records``.

    Args:
        train_records: datalist records to fit on (for a report: training and validation subjects of the split;
            unlabelled records are skipped).
        test_records: labelled datalist records to score (the held-out test subjects).
        class_names: class names in label order (their number sets ``K``).
        num_classes: ``K`` when ``class_names`` is not given (default: ``max label + 1``).
        percentiles: per-modality percentiles used as features.
        regularization: inverse regularisation strength ``C`` of the logistic regression.

    Returns:
        The :class:`BaselineResult`.

    Raises:
        ValueError: if the training subjects have fewer than two classes, or a test subject has no label.
    """
    train = [r for r in train_records if has_label(r)]
    unlabelled = [r.get("subject") for r in test_records if not has_label(r)]
    if unlabelled:
        raise ValueError(f"test subjects {unlabelled[:5]} have no label; the baseline is scored on labelled subjects")
    y_train = np.array([int(r["label"]) for r in train], dtype=np.int64)
    y_test = np.array([int(r["label"]) for r in test_records], dtype=np.int64)
    if np.unique(y_train).size < 2:
        raise ValueError(
            f"the baseline needs training subjects of at least two classes, got labels {sorted(set(y_train.tolist()))}"
        )
    if class_names is not None:
        num_classes = len(class_names)
    elif num_classes is None:
        num_classes = int(max(y_train.max(), y_test.max(initial=0))) + 1
    x_train = _feature_matrix(train, percentiles)
    x_test = _feature_matrix(test_records, percentiles) if len(test_records) else None
    model = balanced_logistic_regression(regularization)
    model.fit(x_train, y_train)
    probabilities = np.zeros((len(test_records), num_classes))
    if x_test is not None:
        # classes absent from the training subjects keep probability 0
        probabilities[:, model.classes_] = model.predict_proba(x_test)
    metrics = classification_metrics(probabilities, y_test, class_names)
    logger.info(
        "Trivial baseline: fitted on %d subjects, test AUC %.3f, balanced accuracy %.3f on %d subjects.",
        len(train),
        metrics["auc"],
        metrics["balanced_accuracy"],
        len(test_records),
    )
    return BaselineResult(
        subjects=[str(r.get("subject")) for r in test_records],
        probabilities=probabilities,
        labels=y_test,
        metrics=metrics,
        num_train=len(train),
    )


def evaluate_trivial_baseline(
    split: Mapping[str, Sequence[Mapping[str, Any]]],
    class_names: Sequence[str] | None = None,
    evaluate_split: str = "test",
    fit_on: Sequence[str] = ("train", "val"),
    **kwargs: Any,
) -> dict[str, Any]:
    """The baseline's metrics on one side of a :func:`medkd3d.bundles.split_dataset` split.

    Args:
        split: ``{"train": [...], "val": [...], "test": [...]}`` records.
        class_names: class names in label order.
        evaluate_split: the side scored (``"test"``).
        fit_on: the sides the logistic regression is fitted on (training and validation: the baseline has no
            model selection, so it may use both).
        kwargs: further :func:`trivial_baseline` arguments.

    Returns:
        :func:`~medkd3d.engines.classification_metrics` of ``split[evaluate_split]``.

    Raises:
        ValueError: if ``split[evaluate_split]`` is empty.
    """
    test = list(split[evaluate_split])
    if not test:
        raise ValueError(f"the {evaluate_split} split is empty; hold out test subjects (e.g. test_fraction=0.2)")
    train = [r for side in fit_on for r in split[side]]
    return trivial_baseline(train, test, class_names, **kwargs).metrics
