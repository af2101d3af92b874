"""The trivial baseline: intensity-percentile features read with nibabel, a logistic regression, the report row."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medkd3d.bundles.data import split_dataset
from medkd3d.engines import DEFAULT_PERCENTILES, evaluate_trivial_baseline, intensity_features, trivial_baseline
from medkd3d.engines.baseline import _file_features

SHAPE = (10, 10, 8)


def _write(path: Path, volume: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(path))
    return str(path)


def _records(root: Path, n_per_class: int = 12, seed: int = 0) -> list[dict]:
    """Two-modality subjects with a zero background; HGG subjects have a bright enhancing spot in modality 2,
    LGG subjects a faint one - separable by the upper percentiles, not by the mean."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(SHAPE, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    records = []
    for label in (0, 1):
        for i in range(n_per_class):
            subject = f"{'HGG' if label else 'LGG'}_{i:02d}"
            images = []
            for modality in range(2):
                volume = np.where(brain, rng.normal(100.0, 10.0, SHAPE), 0.0)
                if modality == 1:
                    spot = tuple(slice(c, c + 2) for c in rng.integers(1, 6, 3))
                    volume[spot] += rng.uniform(60, 90) if label else rng.uniform(0, 15)
                images.append(_write(root / f"{subject}_m{modality}.nii.gz", volume))
            records.append({"subject": subject, "image": images, "label": label})
    return records


def test_features_are_percentiles_of_the_z_scored_brain(tmp_path: Path) -> None:
    volume = np.zeros(SHAPE)
    volume[2:6, 2:6, 2:6] = np.arange(64).reshape(4, 4, 4) + 1.0  # 64 brain voxels, values 1..64
    record = {
        "subject": "s",
        "image": [_write(tmp_path / "a.nii.gz", volume), _write(tmp_path / "b.nii.gz", volume * 3)],
    }
    features = intensity_features(record)
    values = np.arange(1.0, 65.0)
    expected = np.percentile((values - values.mean()) / values.std(), DEFAULT_PERCENTILES)
    assert features.shape == (2 * len(DEFAULT_PERCENTILES),)
    np.testing.assert_allclose(features, np.concatenate([expected, expected]), rtol=1e-5)  # z-scoring removes the x3

    hits = _file_features.cache_info().hits
    intensity_features(record)  # cached in memory per file: nothing is read again
    assert _file_features.cache_info().hits == hits + 2
    with pytest.raises(FileNotFoundError, match="subject 'gone'"):
        intensity_features({"subject": "gone", "image": [str(tmp_path / "missing.nii.gz")]})
    with pytest.raises(ValueError, match="no nonzero"):
        intensity_features({"subject": "empty", "image": [_write(tmp_path / "z.nii.gz", np.zeros(SHAPE))]})


def test_baseline_beats_chance_on_a_separable_case(tmp_path: Path) -> None:
    datalist = {"training": _records(tmp_path), "class_names": ["LGG", "HGG"]}
    split = split_dataset(datalist, fold=0, num_folds=3, seed=0, test_fraction=0.35)
    assert len(split["test"]) == 8  # round(0.35 * 12) per class
    result = trivial_baseline(split["train"] + split["val"], split["test"], ["LGG", "HGG"])
    assert result.num_train == 16 and result.subjects == [r["subject"] for r in split["test"]]
    assert result.probabilities.shape == (8, 2)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0)
    metrics = result.metrics
    assert metrics["num_samples"] == 8 and metrics["class_names"] == ["LGG", "HGG"]
    assert metrics["auc"] >= 0.9 and metrics["balanced_accuracy"] >= 0.75
    assert evaluate_trivial_baseline(split, ["LGG", "HGG"]) == metrics  # same split, same numbers


def test_baseline_refuses_what_it_cannot_fit_or_score(tmp_path: Path) -> None:
    records = _records(tmp_path, n_per_class=3)
    lgg, hgg = records[:3], records[3:]
    with pytest.raises(ValueError, match="at least two classes"):
        trivial_baseline(lgg, hgg, ["LGG", "HGG"])
    with pytest.raises(ValueError, match="no label"):
        trivial_baseline(records, [{**hgg[0], "label": None}], ["LGG", "HGG"])
    with pytest.raises(ValueError, match="test split is empty"):
        evaluate_trivial_baseline({"train": lgg, "val": hgg, "test": []})
