"""Dataset construction: caching gives the same items, stores exactly the deterministic prefix, is keyed by settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from medkd3d.data.datasets import build_dataset, cache_safe_globals, estimate_cache_bytes
from medkd3d.data.discovery import discover_brats
from medkd3d.data.pipelines import preprocess_transforms, slice_stack_transforms, volume_transforms

SIZE = (32, 32, 32)


@pytest.fixture(scope="module")
def records(synthetic_brats_root: Path) -> list[dict]:
    return discover_brats(synthetic_brats_root)["training"][:3]


def test_cached_and_uncached_datasets_give_identical_items(records: list[dict], tmp_path: Path) -> None:
    transform = slice_stack_transforms(SIZE, num_slices=3, keep_volume=True)  # deterministic: fully cacheable
    reference = [transform(r) for r in records]
    for cache in ("none", "memory", "disk"):
        dataset = build_dataset(records, transform, cache=cache, cache_dir=tmp_path / "cache")
        for _epoch in range(2):  # the disk cache is written in epoch 0 and read in epoch 1
            for item, expected in zip(dataset, reference):
                assert isinstance(item["image"], MetaTensor), cache
                for key in ("image", "volume", "slice_index", "label"):
                    torch.testing.assert_close(item[key], expected[key], rtol=0, atol=0)
                assert item["subject"] == expected["subject"]


def test_memory_cache_holds_the_preprocessed_volume_and_augments_every_epoch(
    records: list[dict], tmp_path: Path
) -> None:
    local = [
        {**r, "image": [shutil.copy(p, tmp_path) for p in r["image"]], "seg": shutil.copy(r["seg"], tmp_path)}
        for r in records[:2]
    ]
    transform = volume_transforms(SIZE, train=True)
    transform.set_random_state(0)
    dataset = build_dataset(local, transform, cache="memory")
    for path in tmp_path.iterdir():
        path.unlink()  # from now on nothing can be read from disk
    epochs = [torch.stack([item["image"].as_tensor() for item in dataset]) for _ in range(2)]
    assert not torch.equal(epochs[0], epochs[1])  # the random part runs on every access
    assert epochs[0].shape == (2, 4, *SIZE)


def test_disk_cache_stores_the_deterministic_prefix_keyed_by_settings(records: list[dict], tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    dataset = build_dataset(records[:1], slice_stack_transforms(SIZE, train=True), cache="disk", cache_dir=cache_dir)
    first, second = dataset[0], dataset[0]
    assert not torch.equal(first["image"], second["image"])  # slices and intensities redrawn
    (cache_file,) = cache_dir.glob("*.pt")
    cache_safe_globals()
    cached = torch.load(cache_file, weights_only=True)  # the cache is readable by the restricted unpickler
    # the training stacks are drawn over the brain foreground, so no segmentation is loaded or cached
    prefix = Compose(preprocess_transforms(SIZE))(records[0])
    torch.testing.assert_close(cached["image"], prefix["image"], rtol=0, atol=0)
    assert not isinstance(cached.get("seg"), torch.Tensor)

    build_dataset(records[:1], slice_stack_transforms(SIZE, train=True), cache="disk", cache_dir=cache_dir)[0]
    assert len(list(cache_dir.glob("*.pt"))) == 1  # the same settings reuse the file
    build_dataset(records[:1], slice_stack_transforms((24, 24, 24), train=True), cache="disk", cache_dir=cache_dir)[0]
    assert len(list(cache_dir.glob("*.pt"))) == 2  # other settings never read stale items


def test_bad_cache_arguments(records: list[dict]) -> None:
    with pytest.raises(ValueError, match="cache_dir"):
        build_dataset(records, volume_transforms(SIZE), cache="disk")
    with pytest.raises(ValueError, match="cache must be one of"):
        build_dataset(records, volume_transforms(SIZE), cache="gpu")


def test_cache_memory_estimate_for_brats() -> None:
    assert estimate_cache_bytes(335, (128, 128, 128)) == 335 * 4 * 128**3 * 4
    assert estimate_cache_bytes(335, (128, 128, 128)) / 1e9 == pytest.approx(11.24, abs=0.01)
    assert estimate_cache_bytes(335, (240, 240, 155)) / 1e9 == pytest.approx(47.85, abs=0.01)


def test_disk_cache_items_keep_their_tensor_types_between_writing_and_reading(
    records: list[dict], tmp_path: Path
) -> None:
    """A batch may mix a subject read from the cache with one computed just now: both must collate."""
    from monai.data import list_data_collate

    dataset = build_dataset(records[:2], volume_transforms(SIZE), cache="disk", cache_dir=tmp_path / "cache")
    fresh = dataset[0]  # computed and written now
    cached = dataset[0]  # read back from the file
    assert {k: type(v) for k, v in fresh.items()} == {k: type(v) for k, v in cached.items()}
    batch = list_data_collate([cached, dataset[1]])  # dataset[1] is computed fresh
    assert batch["label"].shape == (2,)


class _Payload:
    """Unpickling this calls ``Path.touch`` on the marker: what a planted cache file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_planted_cache_file_is_refused_and_recomputed(
    records: list[dict], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A pickle planted under a cache item's name never runs: it is reported, removed and the item recomputed."""
    cache_dir = tmp_path / "cache"
    transform = volume_transforms(SIZE)
    reference = transform(records[0])
    build_dataset(records[:1], transform, cache="disk", cache_dir=cache_dir)[0]
    (cache_file,) = cache_dir.glob("*.pt")
    marker = tmp_path / "pwned"
    torch.save({"image": _Payload(marker)}, cache_file)  # the attacker's file, under the item's own name

    with caplog.at_level("WARNING", logger="medkd3d.data.datasets"):
        item = build_dataset(records[:1], transform, cache="disk", cache_dir=cache_dir)[0]

    assert not marker.exists(), "unpickling the planted cache file ran code"
    assert str(cache_file) in caplog.text and "recomputed" in caplog.text
    torch.testing.assert_close(item["image"], reference["image"], rtol=0, atol=0)
    # the file was replaced by a genuine item, which the next run reads (no further warning)
    caplog.clear()
    with caplog.at_level("WARNING", logger="medkd3d.data.datasets"):
        again = build_dataset(records[:1], transform, cache="disk", cache_dir=cache_dir)[0]
    assert not [r for r in caplog.records if r.name == "medkd3d.data.datasets"] and not marker.exists()
    torch.testing.assert_close(again["image"], reference["image"], rtol=0, atol=0)
    assert isinstance(again["image"], MetaTensor) and again["image"].affine.shape == (4, 4)


def test_disk_cache_is_read_without_recomputing(records: list[dict], tmp_path: Path, monkeypatch) -> None:
    """Genuine cache files load under weights_only=True (a refused file would be recomputed on every epoch)."""
    cache_dir = tmp_path / "cache"

    def transform():  # a fresh pipeline per dataset, as a new run builds
        return slice_stack_transforms(SIZE, num_slices=3, keep_volume=True)

    build_dataset(records[:1], transform(), cache="disk", cache_dir=cache_dir)[0]
    dataset = build_dataset(records[:1], transform(), cache="disk", cache_dir=cache_dir)
    monkeypatch.setattr(dataset, "_pre_transform", lambda item: pytest.fail("the cached item was recomputed"))
    assert isinstance(dataset[0]["image"], MetaTensor)
