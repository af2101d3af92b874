"""Networks get plain tensors: ``prepare_plain_batch`` for MONAI's engines, the same inside ``DistillationTrainer``
(student and teacher, the teacher's own batch key too), and every engine of the bundles uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from torch import nn

from medkd3d.bundles import bundle_parser
from medkd3d.engines import DistillationTrainer, plain_tensor, prepare_plain_batch
from medkd3d.losses.kd import KDLoss

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"


def test_prepare_plain_batch_strips_metadata_and_keeps_values() -> None:
    image = MetaTensor(torch.arange(24.0).reshape(2, 3, 4), meta={"filename_or_obj": "a.nii.gz"})
    label = MetaTensor(torch.tensor([0, 1]))
    got_image, got_label = prepare_plain_batch({"image": image, "label": label}, "cpu")
    assert type(got_image) is torch.Tensor and type(got_label) is torch.Tensor
    torch.testing.assert_close(got_image, image.as_tensor())
    torch.testing.assert_close(got_label, label.as_tensor())
    # an inference batch has no label
    only_image, no_label = prepare_plain_batch({"image": image}, "cpu")
    assert type(only_image) is torch.Tensor and no_label is None
    assert plain_tensor("not a tensor") == "not a tensor"


class _TypeRecorder(nn.Module):
    """A tiny 3D classifier that records the type of every input it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)
        self.input_types: list[type] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_types.append(type(x))
        return self.head(self.conv(x).mean(dim=(2, 3, 4)))


def test_distillation_trainer_gives_its_networks_plain_tensors() -> None:
    torch.manual_seed(0)
    items = [
        {"image": MetaTensor(torch.randn(2, 6, 6, 6)), "volume": MetaTensor(torch.randn(2, 6, 6, 6)), "label": i % 2}
        for i in range(4)
    ]
    student, teacher = _TypeRecorder(), _TypeRecorder()
    loader = DataLoader(Dataset(items), batch_size=2)
    assert isinstance(next(iter(loader))["image"], MetaTensor)  # what MONAI's default preparation passes on
    trainer = DistillationTrainer(
        "cpu", 1, loader, student, teacher, torch.optim.SGD(student.parameters(), lr=0.1), KDLoss(),
        teacher_image_key="volume",
    )  # fmt: skip
    trainer.run()
    assert student.input_types == [torch.Tensor] * 2 and teacher.input_types == [torch.Tensor] * 2


@pytest.mark.parametrize("configs", [["train.json", "evaluate.json"], ["inference.json"]])
def test_every_bundle_engine_prepares_plain_batches(configs: list[str]) -> None:
    engines = {
        "train.json": ["train#trainer", "validate#evaluator"],
        "evaluate.json": ["evaluator", "validate#evaluator"],
        "inference.json": ["evaluator"],
    }
    for root in sorted(BUNDLES_DIR.glob("brats_*")):
        parser = bundle_parser(root, None, configs)
        assert parser.get_parsed_content("prepare_batch") is prepare_plain_batch, root.name
        for engine in (e for config in configs for e in engines[config]):
            assert parser[engine]["prepare_batch"] == "@prepare_batch", f"{root.name} {engine}"
