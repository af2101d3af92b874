"""Slice vs volume: is a 2.5D student enough, or do we need 3D - and how much does distillation help with little data?

This script runs the study through the Python API (``medkd3d ablate`` is the same on the command line). Its
default settings are tiny - a small synthetic BraTS dataset, tiny networks, 32^3 volumes, one epoch - so it
finishes in a few minutes on a laptop CPU and shows the workflow and the outputs, not a result (with so little
training, expect metrics near chance: balanced accuracy 0.5 means a model still predicts one class). For a real
study, point ``--dataset-dir`` at BraTS 2019 (``MICCAI_BraTS_2019_Data_Training`` with its HGG/LGG folders)
and use the full-study defaults of :class:`medkd3d.ablation.StudyConfig` (four students, three KD modes,
50/100/150/all subjects per class, three seeds, five folds, 128^3, 30 epochs) on a GPU::

    medkd3d ablate --dataset-dir /data/MICCAI_BraTS_2019_Data_Training --out runs/ablation --folds 5

Interrupt it at any point and rerun the same command: finished runs are kept and skipped.

Usage::

    python examples/slice_vs_volume_ablation.py --out runs/slice_vs_volume
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from medkd3d.ablation import StudyConfig, parse_size, run_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", default="data/synthetic_brats_small", help="generated here if missing")
    parser.add_argument("--out", default="runs/slice_vs_volume", help="study folder")
    parser.add_argument("--sizes", nargs="+", default=["4", "all"], help="training subjects per class, or 'all'")
    parser.add_argument("--spatial-size", type=int, default=32, help="edge N of the N^3 preprocessed volume")
    parser.add_argument("--epochs", type=int, default=1, help="student training epochs")
    parser.add_argument("--teacher-epochs", type=int, default=2, help="teacher training epochs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    # The --quick preset (small synthetic data, tiny networks), narrowed to the question of this example:
    # a 2.5D and a 3D student, without and with logit distillation from a 3D teacher, on 4 subjects per class
    # and on the whole training side of each fold (by default).
    config = StudyConfig.quick(
        args.dataset_dir,
        args.out,
        students=("2.5d", "3d"),
        kd_modes=("none", "logit"),
        sizes=tuple(parse_size(size) for size in args.sizes),
        seeds=(0,),
        folds=2,
        spatial_size=args.spatial_size,
        epochs=args.epochs,
        teacher_epochs=args.teacher_epochs,
    )
    outcome = run_study(config)
    print(f"trained {len(outcome.trained)} runs ({len(outcome.skipped)} were already finished)")

    # results.csv has one row per run; e.g. the mean balanced accuracy per student and KD mode at each size
    with Path(outcome.reports["results_csv"]).open(newline="") as f:
        rows = list(csv.DictReader(f))
    cells: dict[tuple[str, str, str], list[float]] = {}
    for row in rows:
        cells.setdefault((row["student"], row["kd"], row["size"]), []).append(float(row["balanced_accuracy"]))
    for (student, kd, size), values in sorted(cells.items()):
        print(f"{student:>4} KD {kd:<6} size {size:>3}: balanced accuracy {sum(values) / len(values):.3f}")
    print(f"summary with CIs and KD gains: {outcome.reports['summary_md']}")
    print(f"plots: {', '.join(str(p) for k, p in outcome.reports.items() if k.startswith('plot_'))}")


if __name__ == "__main__":
    main()
