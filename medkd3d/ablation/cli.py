"""``medkd3d ablate``: a slice-vs-volume x distillation x data-size study in one command."""

from __future__ import annotations

import argparse
import logging
import time

from medkd3d.ablation.grid import KD_MODES, parse_size
from medkd3d.utils import positive_int

__all__ = ["register"]

logger = logging.getLogger(__name__)

_STUDENT_NAMES = ("2d", "2.5d", "2.5d-multi", "3d")  # keys of runner.STUDENTS, without importing torch here


def _size(value: str) -> int | str:
    try:
        return parse_size(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``medkd3d ablate`` to the command line."""
    parser = subparsers.add_parser(
        "ablate",
        help="slice-vs-volume and data-size distillation study (resumable), with CSV, summary and plots",
        description="Train a 3D teacher per patient-level fold (or reuse one), then every student x KD mode x data "
        "size x seed on each fold; evaluate on the held-out subjects (one prediction per subject) and write "
        "results.csv, summary.md and PNG plots into --out. Rerunning the same command resumes an interrupted "
        "study without redoing finished runs. Flags left out take the full-study defaults, or the --quick ones.",
    )
    parser.add_argument("--dataset-dir", required=True, help="BraTS 2019/2020 folder or datalist JSON")
    parser.add_argument("--out", required=True, help="study folder (results, teachers, cache, reports)")
    parser.add_argument(
        "--quick", action="store_true",
        help="tiny grid (every student and KD mode, 2 sizes, 2 folds) on synthetic data, a few minutes on 2 CPU cores "
        "(generated into --dataset-dir if missing)",
    )  # fmt: skip
    parser.add_argument("--students", nargs="+", choices=_STUDENT_NAMES, help="default: all four")
    parser.add_argument("--kd", nargs="+", choices=KD_MODES, help="KD modes (default: all three)")
    parser.add_argument(
        "--sizes", nargs="+", type=_size, help="training subjects per class, or 'all' (default: 50 100 150 all)"
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="default: 0 1 2")
    parser.add_argument("--folds", type=int, help="patient-level stratified folds K (default: 5)")
    parser.add_argument("--epochs", type=int, help="student training epochs (default: 30)")
    parser.add_argument("--teacher-epochs", type=int, help="teacher training epochs (default: --epochs)")
    parser.add_argument("--teacher", help="registry name of the 3D teacher (default: vggvit3d)")
    parser.add_argument(
        "--teacher-checkpoint",
        help="reuse this trained teacher instead of training one per fold; '{fold}' in the path is replaced by the fold",
    )
    parser.add_argument("--spatial-size", type=int, help="edge N of the N^3 preprocessed volume (default: 128)")
    parser.add_argument("--batch-size", type=int, help="default: 4")
    parser.add_argument("--lr", type=float, dest="learning_rate", help="AdamW learning rate (default: 1e-3)")
    parser.add_argument("--num-stacks", type=int, help="slice stacks per subject for 2D/2.5D evaluation (default: 8)")
    parser.add_argument("--tiny", action="store_true", default=None, help="tiny networks (implied by --quick)")
    parser.add_argument("--cache", choices=("disk", "memory", "none"), help="preprocessing cache (default: disk)")
    parser.add_argument("--num-workers", type=int, help="data-loading workers (default: 0)")
    parser.add_argument("--device", help="training device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--threads", type=positive_int,
        help="PyTorch CPU threads, also for the latency measurement (default: one per core; --quick: 1, as tiny "
        "networks only slow down with more, badly so on shared cores)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_ablate)


def _run_ablate(args: argparse.Namespace) -> int:
    from medkd3d.ablation.runner import StudyConfig, override, run_study

    preset = StudyConfig.quick if args.quick else StudyConfig
    config = override(
        preset(args.dataset_dir, args.out),
        students=args.students, kd_modes=args.kd, sizes=args.sizes, seeds=args.seeds, folds=args.folds,
        epochs=args.epochs, teacher_epochs=args.teacher_epochs, teacher=args.teacher,
        teacher_checkpoint=args.teacher_checkpoint, spatial_size=args.spatial_size, batch_size=args.batch_size,
        learning_rate=args.learning_rate, num_stacks=args.num_stacks, tiny=args.tiny, cache=args.cache,
        num_workers=args.num_workers, device=args.device, threads=args.threads,
    )  # fmt: skip
    start = time.perf_counter()
    # Ignite logs every epoch of every engine at INFO, which would break the progress bar's line; without the
    # bar (--no-progress) those logs are kept.
    engine_logger = logging.getLogger("ignite.engine.engine")
    previous_level = engine_logger.level
    if not args.no_progress:
        engine_logger.setLevel(logging.WARNING)
    try:
        outcome = run_study(config, progress=not args.no_progress)
    finally:
        engine_logger.setLevel(previous_level)
    print(
        f"ablation study in {args.out}: trained {len(outcome.trained)} runs, skipped {len(outcome.skipped)} finished "
        f"ones, in {time.perf_counter() - start:.0f} s"
    )
    for path in outcome.reports.values():
        print(f"  {path}")
    return 0
