"""Slice vs volume: is a 2.5D student enough, or do we need 3D - and how much does distillation help with little data?

This script runs the study through the Python API (``medkd3d ablate`` is the same on the command line). Every
model is its MONAI bundle run with overrides - the 2.5D student ``brats_student_effnet25d`` and the 3D student
``brats_student_effnet3d``, each with ``kd_mode`` none and logit and ``train_per_class`` subjects per class, and
their teacher ``brats_teacher_vggvit3d`` once per fold - so the study measures the models the bundles ship, and
every number is on the held-out test subjects. Its default settings are tiny - a small synthetic BraTS dataset,
tiny networks, 32^3 volumes, one epoch - so it finishes in a few minutes on a laptop CPU and shows the workflow
and the outputs, not a result (with so little training, expect metrics near chance: balanced accuracy 0.5 means
a model still predicts one class). For a real study, point ``--dataset-dir`` at BraTS 2019
(``MICCAI_BraTS_2019_Data_Training`` with its HGG/LGG folders) and use the full-study defaults of
:class:`medkd3d.ablation.StudyConfig` (three student bundles, three KD modes, 10 labelled subjects per class with
and without the unlabelled rest, all, three seeds, three folds, the bundles' own recipes) on a GPU::

    medkd3d ablate --dataset-dir /data/MICCAI_BraTS_2019_Data_Training --out runs/ablation

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
    parser.add_argument(
        "--sizes", nargs="+", default=["2", "all"], help="labelled training subjects per class, 'all' or 'N+unlabelled'"
    )
    parser.add_argument("--spatial-size", type=int, default=32, help="edge N of the N^3 preprocessed volume")
    parser.add_argument("--epochs", type=int, default=1, help="student training epochs")
    parser.add_argument("--teacher-epochs", type=int, default=2, help="teacher training epochs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    # The --quick preset (small synthetic data, tiny networks), narrowed to the question of this example:
    # the 2.5D and the 3D student bundles, without and with logit distillation from their 3D teacher, on 2
    # labelled subjects per class and on the whole training side of each fold (by default).
    config = StudyConfig.quick(
        args.dataset_dir,
        args.out,
        students=("brats_student_effnet25d", "brats_student_effnet3d"),
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
        print(f"{student} KD {kd:<6} size {size:>3}: test balanced accuracy {sum(values) / len(values):.3f}")
    print(f"summary with CIs and KD gains: {outcome.reports['summary_md']}")
    print(f"plots: {', '.join(str(p) for k, p in outcome.reports.items() if k.startswith('plot_'))}")


if __name__ == "__main__":
    main()
