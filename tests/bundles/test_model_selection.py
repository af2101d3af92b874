"""``model_selection``: ``models/model.pt`` is the final model by default, the best-validation one on request."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from ignite.engine import Events

from medkd3d.bundles import MODEL_SELECTIONS, selects_best_checkpoint

BUNDLE = "brats_hdkd_teacher3d"  # the cheapest bundle to train; the five train.json share the saver config


def test_selects_best_checkpoint_values() -> None:
    assert MODEL_SELECTIONS == ("final", "best")
    assert selects_best_checkpoint("best") is True
    assert selects_best_checkpoint("final") is False
    with pytest.raises(ValueError, match=r"model_selection must be one of .*'Best'"):
        selects_best_checkpoint("Best")


def _model_weights(path: Path) -> dict[str, torch.Tensor]:
    """The network's state dict in a checkpoint: model.pt holds it alone, last.pt under ``"model"``."""
    state = torch.load(path, weights_only=True)
    return state.get("model", state)


@pytest.mark.parametrize("selection", MODEL_SELECTIONS)
def test_model_pt_is_the_selected_epoch(selection: str, bundle_kit, synthetic_brats_root: Path, tmp_path: Path) -> None:
    overrides = bundle_kit.train_overrides(BUNDLE, synthetic_brats_root, tmp_path, tmp_path)
    overrides.update(epochs=3, model_selection=selection)
    workflow = bundle_kit.workflow(BUNDLE, ["train.json"], "train", **overrides)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    network = workflow.parser.get_parsed_content("network")
    # the weights after every epoch, taken after the epoch's validation (handlers run in the order added)
    snapshots: list[dict[str, torch.Tensor]] = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: snapshots.append(copy.deepcopy(network.state_dict())))
    workflow.run()
    workflow.finalize()

    saved = _model_weights(tmp_path / "models" / "model.pt")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    best_epoch = evaluator.state.best_metric_epoch
    # the test tells the two apart only if the best validation epoch is not the last one (here the tiny network's
    # validation AUC does not improve after epoch 1)
    assert len(snapshots) == 3 and best_epoch < 3
    chosen = snapshots[best_epoch - 1] if selection == "best" else snapshots[-1]
    assert saved.keys() == chosen.keys()
    assert all(torch.equal(saved[key], chosen[key]) for key in saved)
    if selection == "final":
        # the resumable state after the last epoch holds the same network
        last = _model_weights(tmp_path / "models" / "last.pt")
        assert all(torch.equal(saved[key], last[key]) for key in saved)


def test_unknown_model_selection_is_refused(bundle_kit, synthetic_brats_root: Path, tmp_path: Path) -> None:
    overrides = bundle_kit.train_overrides(BUNDLE, synthetic_brats_root, tmp_path, tmp_path)
    overrides["model_selection"] = "latest"
    with pytest.raises(RuntimeError, match="selects_best_checkpoint") as error:  # MONAI names the component
        bundle_kit.run(BUNDLE, ["train.json"], "train", **overrides)
    assert "model_selection must be one of ('final', 'best'), got 'latest'" in str(error.value.__cause__)
    assert not (tmp_path / "models").exists()
