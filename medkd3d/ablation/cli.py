"""``medkd3d ablate``: a distillation x data-size study through the bundles, in one command."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from medkd3d.ablation.grid import KD_MODES, parse_size
from medkd3d.export.cli import parse_override as _override
from medkd3d.utils import positive_int

__all__ = ["register"]

logger = logging.getLogger(__name__)

#: The student bundles (runner.STUDENTS, without importing torch here).
_STUDENT_NAMES = ("brats_student_effnet3d", "brats_student_effnet25d", "brats_hdkd_student3d")
#: Where a study goes when --out is not given.
DEFAULT_OUT = Path("runs/ablate")
QUICK_OUT = Path("runs/ablate_quick")
#: Loggers of the bundle runs, quietened to warnings while the progress bar shows.
_BUNDLE_RUN_LOGGERS = (
    "ignite.engine.engine",
    "monai.handlers",
    "medkd3d.bundles",
    "medkd3d.engines",
    "monai.bundle",
)


def _size(value: str) -> int | str:
    try:
        return parse_size(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``medkd3d ablate`` to the command line."""
    parser = subparsers.add_parser(
        "ablate",
        help="distillation x data-size study through the bundles (resumable), with CSV, summary and plots",
        description="Hold out a test set, then per patient-level fold train each teacher bundle once and every "
        "student bundle x KD mode x data size x seed, each a bundle run (train.json with overrides: fold, seed, "
        "kd_mode, train_per_class, unlabelled_train, teacher_ckpt); evaluate every run's checkpoint (the bundle's "
        "model_selection) with the bundle's evaluate.json on the test subjects and write results.csv, summary.md and "
        "PNG plots into --out. Rerunning the same command resumes an interrupted study without redoing finished "
        "runs. Flags left out take the full-study defaults, or the --quick ones.",
    )
    parser.add_argument(
        "--dataset-dir",
        help="BraTS 2019/2020 folder or datalist JSON; a synthetic dataset is generated there if it does not exist "
        "(default: OUT/data/synthetic_brats2019)",
    )
    parser.add_argument("--out", help=f"study folder (default: {DEFAULT_OUT}, with --quick {QUICK_OUT})")
    parser.add_argument(
        "--quick", action="store_true",
        help="tiny grid (every student and KD mode, 2 labelled subjects per class with and without the unlabelled "
        "rest, 2 folds, tiny networks, 2 epochs) on a small synthetic dataset, about 2 minutes on 2 CPU cores",
    )  # fmt: skip
    parser.add_argument("--students", nargs="+", choices=_STUDENT_NAMES, help="student bundles (default: all three)")
    parser.add_argument(
        "--kd", nargs="+", choices=KD_MODES,
        help="KD modes (default: all three; logit+feature only for bundles with a feature loss)",
    )  # fmt: skip
    parser.add_argument(
        "--sizes", nargs="+", type=_size,
        help="labelled training subjects per class, 'all', or 'N+unlabelled' (N labelled per class, the other "
        "training subjects unlabelled for the KD term) (default: 10 10+unlabelled all)",
    )  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2")
    parser.add_argument(
        "--folds", type=int, help="patient-level stratified folds K of the non-test subjects (default: 3)"
    )
    parser.add_argument("--test-fraction", type=float, help="fraction of each class held out for test (default: 0.2)")
    parser.add_argument("--epochs", type=int, help="student training epochs (default: each bundle's)")
    parser.add_argument("--teacher-epochs", type=int, help="teacher training epochs (default: --epochs)")
    parser.add_argument(
        "--spatial-size", type=int, help="edge N of the N^3 preprocessed volume (default: each bundle's)"
    )
    parser.add_argument("--batch-size", type=int, help="default: each bundle's")
    parser.add_argument(
        "--profile", action="append", dest="profiles",
        help="config overlay configs/profiles/NAME.json merged after train.json in every bundle (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--override", action="append", type=_override, dest="overrides", metavar="KEY=VALUE",
        help="config override for every bundle run, JSON value (repeatable), e.g. --override learning_rate=5e-4",
    )  # fmt: skip
    parser.add_argument("--tiny", action="store_true", default=None, help="tiny networks (implied by --quick)")
    parser.add_argument("--cache", choices=("disk", "memory", "none"), help="preprocessing cache (default: disk)")
    parser.add_argument("--num-workers", type=int, help="data-loading workers (default: 0)")
    parser.add_argument("--device", help="training device, e.g. cpu or cuda:0 (default: each bundle's; --quick: cpu)")
    parser.add_argument(
        "--threads", type=positive_int,
        help="PyTorch CPU threads, also for the latency measurement (default: one per core; --quick: 1, as tiny "
        "networks only slow down with more, badly so on shared cores)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_ablate)


def _run_ablate(args: argparse.Namespace) -> int:
    from medkd3d.ablation.runner import StudyConfig, override, run_study
    from medkd3d.bundles.data import SYNTHETIC_DEFAULT

    out = Path(args.out) if args.out else (QUICK_OUT if args.quick else DEFAULT_OUT)
    dataset_dir = Path(args.dataset_dir) if args.dataset_dir else out / "data" / "synthetic_brats2019"
    if args.quick:
        config = StudyConfig.quick(dataset_dir, out)
    else:  # the default folder gets the bundles' embedded synthetic default, as in `medkd3d pipeline`
        config = StudyConfig(dataset_dir, out, synthetic=None if args.dataset_dir else SYNTHETIC_DEFAULT)
    config = override(
        config,
        students=args.students, kd_modes=args.kd, sizes=args.sizes, seeds=args.seeds, folds=args.folds,
        test_fraction=args.test_fraction, epochs=args.epochs, teacher_epochs=args.teacher_epochs,
        spatial_size=args.spatial_size, batch_size=args.batch_size, profiles=args.profiles,
        overrides=dict(args.overrides) if args.overrides else None, tiny=args.tiny, cache=args.cache,
        num_workers=args.num_workers, device=args.device, threads=args.threads,
    )  # fmt: skip
    start = time.perf_counter()
    # Every bundle run logs its engines, handlers and data preparation at INFO, which would break the progress
    # bar's line; without the bar (--no-progress) those logs are kept.
    quiet = [] if args.no_progress else [logging.getLogger(name) for name in _BUNDLE_RUN_LOGGERS]
    previous_levels = [logger_.level for logger_ in quiet]
    for logger_ in quiet:
        logger_.setLevel(logging.WARNING)
    try:
        outcome = run_study(config, progress=not args.no_progress)
    finally:
        for logger_, level in zip(quiet, previous_levels):
            logger_.setLevel(level)
    print(
        f"ablation study in {out}: trained {len(outcome.trained)} runs, skipped {len(outcome.skipped)} finished "
        f"ones, in {time.perf_counter() - start:.0f} s"
    )
    for path in outcome.reports.values():
        print(f"  {path}")
    return 0
