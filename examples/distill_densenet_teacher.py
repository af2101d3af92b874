"""Distil your own MONAI DenseNet121 (3D) teacher into the medkd3d 3D EfficientNet student, in your own workflow.

The teacher is any ``nn.Module``: here MONAI's ``DenseNet121``, trained with your MONAI transforms and
``SupervisedTrainer`` (or loaded from your checkpoint with ``--teacher-ckpt``). medkd3d only contributes the
student, the losses and ``DistillationTrainer``. Intermediate features of both networks are taken by **module
path** with forward hooks (torchdistill style), so nothing in the teacher has to change:

- teacher taps: ``features.denseblock2`` (stride 8) and ``features.denseblock3`` (stride 16) of the DenseNet;
- student taps: ``_blocks.2`` (stride 8) and ``_blocks.4`` (stride 16) of the EfficientNet (its ``feature_info``).

The stages differ in width (DenseNet121: 512 and 1024 channels), so the feature loss is the cross-architecture one
(``CrossArchitectureKDLoss``: partially cross-attention and group-wise linear projectors), added to the seed's logit
KD loss. The projectors are trainable, so the optimizer holds the student's and the loss's parameters.

Run on a small synthetic dataset (about a minute on 2 CPU cores, with a narrow DenseNet121)::

    python examples/distill_densenet_teacher.py --out runs/densenet_kd --growth-rate 8 --init-features 16

or on your data: ``--dataset-dir /data/BraTS2019 --size 128 --epochs 100 --device cuda`` (full DenseNet121 with the
default ``--growth-rate 32 --init-features 64``).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedTrainer
from monai.networks.nets import DenseNet121
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    RandFlipd,
    Resized,
)
from monai.utils import set_determinism

from medkd3d.data import discover_brats, generate_synthetic_brats
from medkd3d.data.splits import make_splits, split_records
from medkd3d.engines import DistillationTrainer, FeatureTaps, evaluate_classifier, loss_terms
from medkd3d.losses import CrossArchitectureKDLoss, KDLoss
from medkd3d.networks import create_model

logger = logging.getLogger("distill_densenet")

TEACHER_TAPS = ["features.denseblock2", "features.denseblock3"]
STUDENT_TAPS = ["_blocks.2", "_blocks.4"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/densenet_kd")
    parser.add_argument("--dataset-dir", help="a BraTS release folder (default: synthesise a small one under --out)")
    parser.add_argument("--teacher-ckpt", help="your trained DenseNet121 state dict (skips teacher training)")
    parser.add_argument("--size", type=int, default=32, help="volume side after resizing")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--growth-rate", type=int, default=32, help="DenseNet121 growth rate (32 = the published net)")
    parser.add_argument("--init-features", type=int, default=64, help="DenseNet121 stem width (64 = published)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def my_transforms(size: int, train: bool) -> Compose:
    """A plain MONAI pipeline, as a user would write it: any pipeline giving ``image`` and ``label`` works."""
    keys = "image"
    transforms = [
        LoadImaged(keys, ensure_channel_first=True, image_only=True),  # the four modality files -> 4 channels
        Orientationd(keys, axcodes="RAS", labels=None),
        CropForegroundd(keys, source_key=keys),
        Resized(keys, spatial_size=(size, size, size)),
        NormalizeIntensityd(keys, nonzero=True, channel_wise=True),
        EnsureTyped("label", dtype=torch.int64, track_meta=False),
    ]
    if train:
        transforms.append(RandFlipd(keys, prob=0.5, spatial_axis=0))
    return Compose(transforms)


def stage_channels(network: torch.nn.Module, paths: list[str], x: torch.Tensor) -> list[int]:
    """Channels of the tapped stages, found by one dry forward pass (no need to know the architecture)."""
    with FeatureTaps(network, paths) as taps, torch.no_grad():
        network.eval()(x)
        return [feature.shape[1] for feature in taps.features]


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    set_determinism(seed=args.seed)
    out, device, start = Path(args.out), torch.device(args.device), time.time()

    root = args.dataset_dir or generate_synthetic_brats(out / "data", n_hgg=8, n_lgg=8, shape=(64, 64, 48))
    records = [{k: r[k] for k in ("subject", "image", "label")} for r in discover_brats(root)["training"]]
    sides = split_records(records, make_splits(records, val_fraction=0.2, test_fraction=0.25, seed=args.seed))
    train_loader = DataLoader(
        CacheDataset(sides["train"], my_transforms(args.size, train=True), progress=False),
        batch_size=args.batch_size,
        shuffle=True,
    )
    test_loader = DataLoader(CacheDataset(sides["test"], my_transforms(args.size, train=False), progress=False))

    # your teacher, in your workflow
    teacher = DenseNet121(
        spatial_dims=3, in_channels=4, out_channels=2, growth_rate=args.growth_rate, init_features=args.init_features
    ).to(device)
    if args.teacher_ckpt:
        teacher.load_state_dict(torch.load(args.teacher_ckpt, map_location=device, weights_only=True))
    else:
        SupervisedTrainer(
            device=device,
            max_epochs=args.epochs,
            train_data_loader=train_loader,
            network=teacher,
            optimizer=torch.optim.AdamW(teacher.parameters(), lr=1e-3),
            loss_function=torch.nn.CrossEntropyLoss(),
        ).run()

    # the medkd3d student and the losses; feature widths come from a dry run of both networks
    student = create_model("efficientnet3d_b0", width_multiplier=0.25, image_size=args.size).to(device)
    probe = torch.zeros(1, 4, args.size, args.size, args.size, device=device)
    feature_loss = CrossArchitectureKDLoss(
        student_channels=stage_channels(student, STUDENT_TAPS, probe),
        teacher_channels=stage_channels(teacher, TEACHER_TAPS, probe),
        pca_grid=max(1, args.size // 16),  # attention maps are pooled to the coarsest tapped grid (stride 16)
    ).to(device)
    distiller = DistillationTrainer(
        device=device,
        max_epochs=args.epochs,
        train_data_loader=train_loader,
        network=student,
        teacher=teacher,
        optimizer=torch.optim.AdamW([*student.parameters(), *feature_loss.parameters()], lr=1e-3),
        kd_loss=KDLoss(alpha=0.5, temperature=4.0),
        feature_loss=feature_loss,
        student_feature_taps=STUDENT_TAPS,
        teacher_feature_taps=TEACHER_TAPS,
    )

    @distiller.on(Events.EPOCH_COMPLETED)
    def _log(engine: DistillationTrainer) -> None:
        terms = ", ".join(f"{k}={v:.3f}" for k, v in loss_terms(engine.state.output).items())
        logger.info("distillation epoch %d: %s", engine.state.epoch, terms)

    distiller.run()

    for name, network in (("DenseNet121 teacher", teacher), ("EfficientNet-B0 3D student", student)):
        metrics = evaluate_classifier(network, test_loader, device, class_names=["LGG", "HGG"])
        parameters = sum(p.numel() for p in network.parameters())
        logger.info(
            "%s: %.2fM parameters, test balanced accuracy %.3f, AUC %.3f", name, parameters / 1e6,
            metrics["balanced_accuracy"], metrics["auc"],
        )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    partial = out / ".student.pt.partial"  # written whole, then renamed: never a half-written checkpoint
    torch.save({"model": student.state_dict()}, partial)
    os.replace(partial, out / "student.pt")
    logger.info("done in %.0f s; student weights in %s", time.time() - start, out / "student.pt")


if __name__ == "__main__":
    main()
