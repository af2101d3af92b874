"""Strict teacher checkpoint loading: plain and MONAI CheckpointSaver files; mismatches are errors."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine
from monai.handlers import CheckpointSaver
from torch import nn

from medkd3d.engines import load_teacher_checkpoint


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_plain_and_ddp_prefixed_state_dicts(tiny_net, tmp_path):
    source = tiny_net(width=6)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "ddp.pt")
    for name in ("plain.pt", "ddp.pt"):
        target = tiny_net(width=6)
        assert load_teacher_checkpoint(target, tmp_path / name) is target
        _assert_same_weights(source, target)


def test_monai_checkpoint_saver_file(tiny_net, tmp_path):
    source = tiny_net(width=6)
    optimizer = torch.optim.SGD(source.parameters(), lr=0.1)
    engine = Engine(lambda engine, batch: None)
    CheckpointSaver(str(tmp_path), {"network": source, "optimizer": optimizer}, save_final=True).attach(engine)
    engine.run([0], max_epochs=1)
    (path,) = tmp_path.glob("*.pt")
    target = tiny_net(width=6)
    load_teacher_checkpoint(target, path)
    _assert_same_weights(source, target)
    with pytest.raises(KeyError, match="no entry 'model'"):
        load_teacher_checkpoint(target, path, key="model")


def test_mismatched_checkpoints_name_the_keys_and_the_file(tiny_net, tmp_path):
    state = tiny_net(width=6).state_dict()
    missing = {k: v for k, v in state.items() if not k.startswith("head.")}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(
        RuntimeError, match=r"missing\.pt does not match TinyNet3d: missing keys: head\.bias, head\.weight"
    ):
        load_teacher_checkpoint(tiny_net(width=6), tmp_path / "missing.pt")

    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(RuntimeError, match=r"unexpected keys: extra\.weight"):
        load_teacher_checkpoint(tiny_net(width=6), tmp_path / "extra.pt")

    torch.save(state, tmp_path / "full.pt")
    with pytest.raises(RuntimeError, match=r"shape-mismatched keys: head\.bias \(checkpoint \(2,\), model \(3,\)\)"):
        load_teacher_checkpoint(tiny_net(width=6, num_classes=3), tmp_path / "full.pt")


def test_unusable_files(tiny_net, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt"):
        load_teacher_checkpoint(tiny_net(), tmp_path / "nothing.pt")
    torch.save({"a": tiny_net().state_dict(), "b": tiny_net().state_dict()}, tmp_path / "two.pt")
    with pytest.raises(ValueError, match=r"two\.pt.*Pass key="):
        load_teacher_checkpoint(tiny_net(), tmp_path / "two.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"Cannot read checkpoint .*text\.pt"):
        load_teacher_checkpoint(tiny_net(), tmp_path / "text.pt")
