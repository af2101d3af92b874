"""MONAI internals medkd3d relies on where MONAI has no public route: each test fails loudly when a release changes one.

- ``CheckpointSaver._final_checkpoint`` / ``_key_metric_checkpoint`` / ``_interval_checkpoint`` (ignite
  ``Checkpoint``s): :class:`medkd3d.engines.AtomicCheckpointSaver` replaces their savers to write atomically.
- ``PersistentDataset._cachecheck``: ``medkd3d.data.datasets._SafePersistentDataset`` loads cache files safely there.
- ``ModelWithHooks.register_forward`` / ``register_backward``: :class:`medkd3d.explain.cam.LayerHooks` switches
  MONAI's permanent hooks off at construction and on again for ``__call__``.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from ignite.handlers import Checkpoint
from monai.data import PersistentDataset
from monai.handlers import CheckpointSaver
from monai.visualize import ModelWithHooks
from torch import nn

from medkd3d.engines.handlers import AtomicCheckpointSaver, _AtomicDiskSaver


def test_checkpoint_saver_keeps_its_three_checkpoints_in_private_attributes(tmp_path: Path) -> None:
    net = nn.Linear(2, 1)
    kwargs = {"save_final": True, "save_key_metric": True, "save_interval": 1}
    plain = CheckpointSaver(str(tmp_path), {"net": net}, **kwargs)
    for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
        assert isinstance(getattr(plain, name), Checkpoint), f"MONAI's CheckpointSaver has no {name} any more"
    ours = AtomicCheckpointSaver(
        str(tmp_path), {"net": net}, final_filename="final.pt", key_metric_filename="best.pt",
        interval_filename="last.pt", **kwargs,
    )  # fmt: skip
    savers = [ours._final_checkpoint, ours._key_metric_checkpoint, ours._interval_checkpoint]
    assert [type(c.save_handler) for c in savers] == [_AtomicDiskSaver] * 3


def test_persistent_dataset_reads_every_item_through_cachecheck(tmp_path: Path) -> None:
    assert list(inspect.signature(PersistentDataset._cachecheck).parameters) == ["self", "item_transformed"]
    seen = []

    class Recording(PersistentDataset):
        def _cachecheck(self, item_transformed):
            seen.append(item_transformed)
            return super()._cachecheck(item_transformed)

    dataset = Recording([{"x": 1}, {"x": 2}], transform=lambda d: d, cache_dir=tmp_path)
    assert dataset[1] == {"x": 2} and seen == [{"x": 2}]  # the hook sees each item, and its result is the item


def test_model_with_hooks_reads_its_flags_at_call_time() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    hooks = ModelWithHooks(net, "0", register_forward=False, register_backward=False)
    assert not any(m._forward_hooks or m._backward_hooks for m in net.modules())  # nothing registered
    # our own hooks fill the public dicts; MONAI must then return them and run the backward pass

    def record(module: nn.Module, args: object, out: torch.Tensor) -> None:
        hooks.activations["0"] = out
        out.register_hook(lambda grad: hooks.gradients.__setitem__("0", grad))

    net[0].register_forward_hook(record)
    hooks.register_forward = hooks.register_backward = True
    x = torch.randn(5, 3)
    logits, activations, gradients = hooks(x, class_idx=1)
    assert logits.shape == (5, 2)
    assert activations[0].shape == (5, 4) and gradients is not None and gradients[0].shape == (5, 4)
