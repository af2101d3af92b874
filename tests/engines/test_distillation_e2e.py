"""End to end on synthetic BraTS: train a teacher, save and strictly reload it, cache its soft targets, distil a
smaller student with KDLoss, and evaluate both on held-out subjects with the same code.

Teacher and student are small convolutional networks with global max pooling: the synthetic high grades show as
the brightest (enhancing) voxels, which such networks pick up within seconds on 36 subjects. (The zoo's VGG3D and
HDKD models at test width learn the same task unreliably in this budget: their BatchNorm statistics over a 1-2
voxel deepest stage make eval-mode predictions swing between seeds.)
"""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointSaver
from torch import nn

from medkd3d.data import build_dataset, discover_brats, generate_synthetic_brats, train_val_test_split
from medkd3d.data.pipelines import volume_transforms
from medkd3d.engines import (
    DistillationTrainer,
    evaluate_classifier,
    load_teacher_checkpoint,
    loss_terms,
    precompute_soft_targets,
    write_metrics,
)
from medkd3d.losses import KDLoss

SIZE = (24, 24, 24)
EPOCHS = 20


@pytest.fixture
def one_thread():
    """Tiny 3D networks run fastest single-threaded, especially when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class MaxPoolCNN(nn.Module):
    """``convs`` 3x3x3 convolutions with ReLU, global max pooling and a linear classifier."""

    def __init__(self, width: int, convs: int, in_channels: int = 4, num_classes: int = 2) -> None:
        super().__init__()
        layers = []
        for i in range(convs):
            layers += [nn.Conv3d(in_channels if i == 0 else width, width, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers, nn.AdaptiveMaxPool3d(1), nn.Flatten())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _teacher() -> nn.Module:
    return MaxPoolCNN(width=16, convs=2)


@pytest.mark.slow
def test_distilled_student_beats_chance_on_held_out_subjects(tmp_path, one_thread):
    root = generate_synthetic_brats(tmp_path / "brats", n_hgg=24, n_lgg=24, shape=(32, 32, 24), seed=1)
    records = discover_brats(root)["training"]
    split = train_val_test_split(records, val_fraction=0.0, test_fraction=0.25, seed=0)
    # no random augmentation: the teacher's soft targets are computed once and cached per subject
    transform = volume_transforms(SIZE)
    train_ds, test_ds = (
        build_dataset([r for r in records if r["subject"] in split[side]], transform, cache="memory")
        for side in ("train", "test")
    )
    train_loader = DataLoader(train_ds, batch_size=8, shuffle=True)
    test_loader = DataLoader(test_ds, batch_size=12)

    torch.manual_seed(0)
    teacher = _teacher()
    SupervisedTrainer(
        "cpu", EPOCHS, train_loader, teacher, torch.optim.Adam(teacher.parameters(), 3e-3),
        torch.nn.CrossEntropyLoss(), decollate=False,
    ).run()  # fmt: skip
    saver = Engine(lambda engine, batch: None)
    CheckpointSaver(str(tmp_path / "teacher"), {"network": teacher}, save_final=True).attach(saver)
    saver.run([0])
    (checkpoint,) = (tmp_path / "teacher").glob("*.pt")
    teacher = load_teacher_checkpoint(_teacher(), checkpoint)

    cache_path = tmp_path / "soft_targets.pt"
    precompute_soft_targets(teacher, DataLoader(train_ds, batch_size=12), path=cache_path, progress=False)
    student = MaxPoolCNN(width=8, convs=1)
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters()) / 5
    trainer = DistillationTrainer(
        "cpu", EPOCHS, train_loader, student, teacher, torch.optim.Adam(student.parameters(), 3e-3),
        KDLoss(alpha=0.5, temperature=2.0), soft_target_cache=cache_path, decollate=False,
    )  # fmt: skip
    trainer.run()
    assert set(loss_terms(trainer.state.output)) == {"loss", "loss_kd", "loss_ce"}

    results = {name: evaluate_classifier(net, test_loader, class_names=["LGG", "HGG"]) for name, net in
               (("teacher", teacher), ("student", student))}  # fmt: skip
    for name, metrics in results.items():
        write_metrics(metrics, tmp_path / "reports", name)
    student_metrics = json.loads((tmp_path / "reports" / "student.json").read_text())
    assert student_metrics["num_samples"] == 12
    assert student_metrics["balanced_accuracy"] >= 0.75, results  # chance is 0.5
    assert student_metrics["auc"] >= 0.8, results
