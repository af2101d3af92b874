"""Synthetic BraTS: exact layouts, NIfTI properties, determinism, brain-MRI contrast and grade phenotypes."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medkd3d.data import synthetic
from medkd3d.data.synthetic import (
    SYNTHETIC_INFO_FILE,
    describe_synthetic,
    generate_synthetic_brats,
    read_synthetic_info,
    sample_phenotype,
    synthesize_subject,
)

SHAPE = (48, 48, 40)
MODALITY_FILES = ("t1", "t1ce", "t2", "flair", "seg")


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_brats2019_layout_and_nifti_properties(tmp_path: Path) -> None:
    root = generate_synthetic_brats(tmp_path, layout="brats2019", n_hgg=2, n_lgg=1, shape=SHAPE, seed=0)
    assert root == tmp_path
    subjects = {p.parent.name: p.parent.parent.name for p in root.glob("*/*/*_t1.nii.gz")}
    assert sorted(subjects.values()) == ["HGG", "HGG", "LGG"]
    assert sorted(subjects) == ["BraTS19_CBICA_000_1", "BraTS19_TCIA01_001_1", "BraTS19_TCIA09_000_1"]
    expected = sorted(f"{g}/{s}/{s}_{m}.nii.gz" for s, g in subjects.items() for m in MODALITY_FILES)
    assert _files(root) == sorted([*expected, SYNTHETIC_INFO_FILE])  # nothing else: no temporary files left behind
    assert read_synthetic_info(root) == {
        "layout": "brats2019",
        "n_hgg": 2,
        "n_lgg": 1,
        "shape": list(SHAPE),
        "seed": 0,
        "anatomy": "mni152",  # "auto" resolved: nilearn is installed
    }
    assert describe_synthetic(root) == "synthetic: seed 0, 2 HGG + 1 LGG, 48x48x40 voxels, mni152 anatomy"

    folder = root / "HGG" / "BraTS19_CBICA_000_1"
    for modality in MODALITY_FILES:
        image = nib.load(folder / f"BraTS19_CBICA_000_1_{modality}.nii.gz")
        assert image.shape == SHAPE
        assert image.header.get_zooms() == (1.0, 1.0, 1.0)
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")  # BraTS orientation
        data = np.asanyarray(image.dataobj)
        if modality == "seg":
            assert data.dtype == np.uint8
            assert set(np.unique(data)) <= {0, 1, 2, 4} and {1, 2} <= set(np.unique(data))
        else:
            assert data.dtype == np.int16
            assert data.min() == 0 and data.max() > 100  # skull-stripped background, scanner units


def test_brats2020_layout_writes_name_mapping(tmp_path: Path) -> None:
    root = generate_synthetic_brats(tmp_path, layout="brats2020", n_hgg=2, n_lgg=2, shape=SHAPE, seed=0)
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == [f"BraTS20_Training_{i:03d}" for i in range(1, 5)]
    assert (root / "BraTS20_Training_003" / "BraTS20_Training_003_flair.nii.gz").is_file()
    with open(root / "name_mapping.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"Grade", "BraTS_2020_subject_ID", "BraTS_2019_subject_ID"} <= set(rows[0])
    assert [(r["BraTS_2020_subject_ID"], r["Grade"]) for r in rows] == [
        ("BraTS20_Training_001", "HGG"),
        ("BraTS20_Training_002", "HGG"),
        ("BraTS20_Training_003", "LGG"),
        ("BraTS20_Training_004", "LGG"),
    ]


def test_brats2021_layout_writes_labels_csv(tmp_path: Path) -> None:
    root = generate_synthetic_brats(tmp_path, layout="brats2021", n_hgg=1, n_lgg=2, shape=SHAPE, seed=0)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        "BraTS2021_00000",
        "BraTS2021_00001",
        "BraTS2021_00002",
    ]
    assert (root / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz").is_file()
    text = (root / "train_labels.csv").read_text()
    assert text.splitlines() == ["BraTS21ID,Grade", "00000,HGG", "00001,LGG", "00002,LGG"]


def test_same_seed_same_bytes_whatever_the_threads_other_seed_differs_subsets_stable(tmp_path: Path) -> None:
    first = generate_synthetic_brats(tmp_path / "a", n_hgg=2, n_lgg=1, shape=SHAPE, seed=3)
    again = generate_synthetic_brats(tmp_path / "b", n_hgg=2, n_lgg=1, shape=SHAPE, seed=3, num_workers=2)
    larger = generate_synthetic_brats(tmp_path / "c", n_hgg=3, n_lgg=2, shape=SHAPE, seed=3)
    other = generate_synthetic_brats(tmp_path / "d", n_hgg=2, n_lgg=1, shape=SHAPE, seed=4)
    files = _files(first)
    assert files == _files(again) == _files(other)
    for name in files:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
        if name != SYNTHETIC_INFO_FILE:  # the record names the other counts
            assert (first / name).read_bytes() == (larger / name).read_bytes(), name  # subject i depends on (seed, i)
    t1 = next(n for n in files if n.endswith("_t1.nii.gz"))
    a, d = (np.asanyarray(nib.load(root / t1).dataobj) for root in (first, other))
    assert not np.array_equal(a, d)


def test_the_record_names_the_anatomy_auto_resolved_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # without nilearn "auto" falls back to the procedural brain: the same seed gives other data, so say so
    monkeypatch.setattr(synthetic, "_nilearn_available", lambda: False)
    root = generate_synthetic_brats(tmp_path / "auto", n_hgg=1, n_lgg=1, shape=(16, 16, 16), anatomy="auto")
    assert read_synthetic_info(root)["anatomy"] == "procedural"
    assert read_synthetic_info(tmp_path) is None  # no record: real data, or generated before the record existed
    assert describe_synthetic(tmp_path) is None
    (tmp_path / SYNTHETIC_INFO_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=f"{SYNTHETIC_INFO_FILE}: not valid JSON"):
        read_synthetic_info(tmp_path)


@pytest.mark.parametrize("anatomy", ["mni152", "procedural"])
def test_tissue_contrast_follows_the_mri_sequences(anatomy: str) -> None:
    subject = synthesize_subject("LGG", SHAPE, seed=1, anatomy=anatomy)
    atlas = synthetic._load_anatomy(SHAPE, anatomy)
    healthy = subject.seg.reshape(-1)[atlas.index] == 0
    tissue = {name: healthy & (getattr(atlas, name) > 0.8) for name in ("gm", "wm", "csf")}
    assert all(mask.sum() > 20 for mask in tissue.values())

    def mean(modality: str, name: str) -> float:
        return float(subject.images[modality].reshape(-1)[atlas.index][tissue[name]].mean())

    assert mean("t1", "wm") > mean("t1", "gm") > mean("t1", "csf")  # T1: WM brightest
    assert mean("t2", "csf") > mean("t2", "gm") > mean("t2", "wm")  # T2: CSF brightest
    assert mean("flair", "gm") > mean("flair", "wm") > mean("flair", "csf")  # FLAIR: CSF suppressed
    assert mean("t1ce", "wm") > mean("t1ce", "csf")


def test_tumour_compartments_have_their_mri_appearance() -> None:
    subject = synthesize_subject("HGG", SHAPE, seed=0)
    seg, images = subject.seg, {k: v.astype(float) for k, v in subject.images.items()}
    brain = images["t1"] > 0
    normal = brain & (seg == 0)
    assert subject.phenotype.enhancement > 0 and (seg == 4).sum() > 20 and (seg == 2).sum() > 20

    def ratio(modality: str, label: int) -> float:
        return images[modality][seg == label].mean() / images[modality][normal].mean()

    assert ratio("flair", 2) > 1.3 and ratio("t2", 2) > 1.3  # edema: T2/FLAIR hyperintense
    assert ratio("t1ce", 4) > 1.3 * ratio("t1", 4)  # enhancing tumour: bright after contrast only
    assert ratio("t1", 1) < 1.0  # core: T1-hypointense


def _tumour_statistics(grade: str, n: int) -> np.ndarray:
    """Per subject: whole-tumour volume and enhancing fraction of the core (in voxels of a 48x48x40 grid)."""
    stats = []
    for index in range(n):
        seg = synthesize_subject(grade, SHAPE, seed=synthetic._subject_seed(0, grade, index)).seg
        core, enhancing = np.isin(seg, (1, 4)).sum(), (seg == 4).sum()
        stats.append(((seg > 0).sum(), enhancing / max(core, 1)))
    return np.array(stats, dtype=float)


def test_hgg_and_lgg_phenotypes_differ_on_average_but_overlap() -> None:
    hgg, lgg = _tumour_statistics("HGG", 16), _tumour_statistics("LGG", 16)
    volume, enhancing = 0, 1
    assert hgg[:, volume].mean() > 1.5 * lgg[:, volume].mean()
    assert hgg[:, enhancing].mean() > lgg[:, enhancing].mean() + 0.25
    # overlap: grading is not a threshold on one feature
    assert hgg[:, volume].min() < lgg[:, volume].max()
    assert hgg[:, enhancing].min() < lgg[:, enhancing].max()


def test_phenotype_distributions_overlap_with_atypical_cases() -> None:
    rng = np.random.default_rng(0)
    hgg = [sample_phenotype("HGG", rng) for _ in range(400)]
    lgg = [sample_phenotype("LGG", rng) for _ in range(400)]
    assert 0.8 < np.mean([p.enhancement > 0 for p in hgg]) < 0.97  # some HGGs barely enhance
    assert 0.03 < np.mean([p.enhancement > 0 for p in lgg]) < 0.2  # some LGGs do
    assert np.mean([p.necrosis_fraction > 0 for p in hgg]) > 0.7 > 0.2 > np.mean([p.necrosis_fraction > 0 for p in lgg])
    assert max(p.core_radius_mm for p in lgg) > min(p.core_radius_mm for p in hgg) + 10


def test_a_small_shape_scales_the_whole_brain_down() -> None:
    small, large = (synthetic._load_anatomy(s, "mni152") for s in ((24, 24, 20), SHAPE))
    # the same brain at half the resolution: ~1/8 of the voxels, not a crop of the field
    assert small.index.size * 8 == pytest.approx(large.index.size, rel=0.1)


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        generate_synthetic_brats(tmp_path, layout="brats2012", shape=SHAPE)
    with pytest.raises(ValueError, match="grade"):
        synthesize_subject("GBM", SHAPE)
    with pytest.raises(ValueError, match="shape"):
        synthesize_subject("HGG", (48, 48))
    with pytest.raises(ValueError, match="subjects"):
        generate_synthetic_brats(tmp_path, n_hgg=0, n_lgg=0, shape=SHAPE)
