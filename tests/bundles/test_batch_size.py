"""A batch size the training set cannot fill is refused before training; no epoch is silently truncated."""

from __future__ import annotations

from pathlib import Path

import pytest

from medkd3d.bundles import BUNDLE_NAMES
from medkd3d.bundles.data import drop_last_batch
from medkd3d.utils import exception_chain


def _messages(error: BaseException) -> str:
    """The messages of an exception and its causes (MONAI wraps instantiation errors)."""
    return "\n".join(str(e) for e in exception_chain(error))


@pytest.mark.parametrize(
    ("num_items", "batch_size", "drop"),
    [(15, 8, False), (16, 8, False), (9, 8, True), (8, 8, False), (7, 1, False), (7, 2, True), (6, 4, False)],
)
def test_only_a_batch_of_one_is_dropped(num_items: int, batch_size: int, drop: bool) -> None:
    """15 subjects in batches of 8 train on all 15 (8 + 7), not on 8; only a lone last item is skipped."""
    assert drop_last_batch(num_items, batch_size) is drop


@pytest.mark.parametrize(("num_items", "batch_size"), [(7, 8), (0, 2), (3, 0)])
def test_unfillable_batch_is_refused_with_the_numbers_and_the_fix(num_items: int, batch_size: int) -> None:
    with pytest.raises(ValueError, match="batch_size") as raised:
        drop_last_batch(num_items, batch_size)
    if batch_size:
        assert f"has {num_items} subject" in str(raised.value) and "--batch_size" in str(raised.value)


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_every_bundle_train_loader_uses_the_check(bundle: str, bundle_kit) -> None:
    """Each ``train.json`` wires its training DataLoader's ``drop_last`` to the check, on the training dataset."""
    from monai.bundle import ConfigParser

    def drop_last(num_items: int, batch_size: int) -> bool:
        parser = ConfigParser()
        parser.read_config(bundle_kit.config_files(bundle, "train.json")[0])
        parser.update({"train#dataset": list(range(num_items)), "batch_size": batch_size})
        return parser.get_parsed_content("train#dataloader#drop_last")

    assert drop_last(15, 8) is False and drop_last(9, 8) is True
    with pytest.raises(Exception) as raised:
        drop_last(7, 8)
    assert "The training set has 7 subject(s), fewer than batch_size 8" in _messages(raised.value)


def test_bundle_training_refuses_a_batch_larger_than_the_training_set(
    bundle_kit, synthetic_brats_root: Path, tmp_path: Path
) -> None:
    """The teacher bundle on 12 subjects (2 held out, fold 0 of 3: 6 train) with batch 7: refused, nothing written."""
    bundle = "brats_teacher_vggvit3d"
    overrides = bundle_kit.train_overrides(bundle, synthetic_brats_root, tmp_path, tmp_path)
    overrides["batch_size"] = 7
    with pytest.raises(Exception) as raised:
        bundle_kit.run(bundle, ["train.json"], "train", **overrides)
    message = _messages(raised.value)
    assert "The training set has 6 subject(s), fewer than batch_size 7" in message
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
