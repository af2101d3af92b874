"""Quickstart: distil a 3D teacher into a small 3D student on a synthetic BraTS dataset, on a laptop CPU.

Every step uses the medkd3d Python API, so this script is the template to copy into your own project:

1. synthesise a small BraTS 2019-layout dataset (four MRI modalities, tumour segmentation, HGG/LGG grade);
2. discover it into a datalist JSON and split it by patient into train / validation / test;
3. train a teacher (3D VGG) with MONAI's ``SupervisedTrainer``;
4. distil it into a 3D EfficientNet-B0 student with ``medkd3d.engines.DistillationTrainer`` and the seed's logit KD
   loss ``alpha T^2 KL(p_t || p_s) + (1 - alpha) CE``;
5. evaluate both on the held-out test subjects and write the metrics (JSON + CSV);
6. explain one test subject with Grad-CAM for both models and measure whether the student looks where the
   teacher looks (Pearson correlation, top-10% overlap, share of the map inside the tumour).

Run (about two minutes on 2 CPU cores with the defaults)::

    python examples/quickstart_synthetic.py --out runs/quickstart

Scale it up with ``--subjects-per-class 40 --size 64 --epochs 30`` (and a GPU: ``--device cuda``). With the tiny
defaults the models see only a dozen subjects for a few epochs, so expect metrics near chance: the point is the
workflow, not the numbers.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import nibabel as nib
import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.utils import set_determinism

from medkd3d.data import discover_brats, generate_synthetic_brats, write_datalist
from medkd3d.data.datasets import build_dataset
from medkd3d.data.pipelines import volume_transforms
from medkd3d.data.splits import make_splits, split_records
from medkd3d.engines import DistillationTrainer, evaluate_classifier, loss_terms, write_metrics
from medkd3d.explain import ExplainModel, describe_agreement, explain_subject, map_agreement
from medkd3d.losses import KDLoss
from medkd3d.networks import create_model

logger = logging.getLogger("quickstart")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/quickstart", help="output folder (data, datalist, metrics)")
    parser.add_argument("--subjects-per-class", type=int, default=8, help="synthetic HGG and LGG subjects each")
    parser.add_argument("--size", type=int, default=32, help="preprocessed volume side (voxels)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of teacher training and of distillation")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def log_epoch_losses(engine: Engine, name: str) -> None:
    """Log the loss terms of the last iteration of every epoch (``loss``, ``loss_kd``, ``loss_ce``, ...)."""

    @engine.on(Events.EPOCH_COMPLETED)
    def _log(engine: Engine) -> None:
        terms = ", ".join(f"{k}={v:.3f}" for k, v in loss_terms(engine.state.output).items())
        logger.info("%s epoch %d/%d: %s", name, engine.state.epoch, engine.state.max_epochs, terms)


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    set_determinism(seed=args.seed)
    out = Path(args.out)
    device = torch.device(args.device)
    start = time.time()

    # 1-2. data: a synthetic BraTS 2019 folder, its datalist, and a patient-level split
    root = generate_synthetic_brats(
        out / "data", n_hgg=args.subjects_per_class, n_lgg=args.subjects_per_class, shape=(64, 64, 48), seed=args.seed
    )
    datalist = discover_brats(root)
    write_datalist(datalist, out / "datalist.json")
    records = datalist["training"]
    sides = split_records(records, make_splits(records, val_fraction=0.2, test_fraction=0.25, seed=args.seed))
    logger.info("subjects: %s", {side: len(recs) for side, recs in sides.items()})

    spatial_size = (args.size,) * 3
    train_data = build_dataset(sides["train"], volume_transforms(spatial_size, train=True), cache="memory")
    eval_transforms = volume_transforms(spatial_size, train=False)
    test_data = build_dataset(sides["test"], eval_transforms, cache="memory")
    train_loader = DataLoader(train_data, batch_size=args.batch_size, shuffle=True, num_workers=0)
    test_loader = DataLoader(test_data, batch_size=args.batch_size, num_workers=0)

    # 3. the teacher: a 3D VGG-11 (a quarter of the width, for the CPU), trained with MONAI's own trainer
    teacher = create_model("vgg11_3d", width_multiplier=0.25).to(device)
    teacher_trainer = SupervisedTrainer(
        device=device,
        max_epochs=args.epochs,
        train_data_loader=train_loader,
        network=teacher,
        optimizer=torch.optim.AdamW(teacher.parameters(), lr=1e-3),
        loss_function=torch.nn.CrossEntropyLoss(),
    )
    log_epoch_losses(teacher_trainer, "teacher")
    teacher_trainer.run()

    # 4. the student: MONAI EfficientNet-B0 in 3D (a quarter of the width), distilled from the frozen teacher
    student = create_model("efficientnet3d_b0", width_multiplier=0.25, image_size=args.size).to(device)
    kd_loss = KDLoss(alpha=0.5, temperature=4.0)
    distiller = DistillationTrainer(
        device=device,
        max_epochs=args.epochs,
        train_data_loader=train_loader,
        network=student,
        teacher=teacher,
        optimizer=torch.optim.AdamW(student.parameters(), lr=1e-3),
        kd_loss=kd_loss,
    )
    log_epoch_losses(distiller, "student")
    distiller.run()

    # 5. evaluation on held-out subjects, by the same code for both models
    for name, network in (("teacher", teacher), ("student", student)):
        metrics = evaluate_classifier(network, test_loader, device, class_names=datalist["class_names"])
        json_path, _ = write_metrics(metrics, out / "metrics", f"{name}_test")
        parameters = sum(p.numel() for p in network.parameters())
        logger.info(
            "%s (%d parameters): balanced accuracy %.3f, AUC %.3f -> %s", name, parameters,
            metrics["balanced_accuracy"], metrics["auc"], json_path,
        )  # fmt: skip

    # 6. where do they look? Grad-CAM of both models on one test subject, on the subject's own image grid
    record = sides["test"][0]
    class_names = datalist["class_names"]
    student_map = explain_subject(ExplainModel(student, eval_transforms, class_names, "student"), record)
    teacher_map = explain_subject(  # the student's class, so both maps answer the same question
        ExplainModel(teacher, eval_transforms, class_names, "teacher"), record, target_class=student_map.target_class
    )
    seg = nib.load(record["seg"]).get_fdata()
    brain = nib.load(record["image"][3]).get_fdata() != 0  # skull-stripped: the brain is the nonzero FLAIR
    region = brain & student_map.coverage & teacher_map.coverage
    agreement = map_agreement(teacher_map.map, student_map.map, seg=seg, mask=region)
    logger.info("Grad-CAM agreement of the teacher and the student on %s:", record["subject"])
    for line in describe_agreement(agreement):
        logger.info("  %s", line)
    logger.info("done in %.0f s; outputs in %s", time.time() - start, out)


if __name__ == "__main__":
    main()
