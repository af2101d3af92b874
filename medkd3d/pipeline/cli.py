"""``medkd3d pipeline``: the command line of :func:`medkd3d.pipeline.run.run_pipeline`.

The pipeline itself is imported at the top: :mod:`medkd3d.pipeline.run` imports torch and MONAI only inside
its functions, so ``medkd3d --help`` stays fast.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from medkd3d.pipeline import run as pipeline
from medkd3d.pipeline.run import MODELS, QUICK, PipelineSettings, parse_bundle_override

__all__ = ["register"]


def _profile_name(text: str) -> str:
    """Argparse type of ``--profile``: a profile that at least one bundle of the pipeline has."""
    from medkd3d.bundles import find_bundle_root, list_profiles

    available: set[str] = set()
    for model in MODELS:
        try:
            available.update(list_profiles(find_bundle_root(model.bundle)))
        except FileNotFoundError:  # run_pipeline reports a missing bundle with its own message
            continue
    if text not in available:
        raise argparse.ArgumentTypeError(
            f"unknown profile {text!r}; the bundles have {sorted(available)} (configs/profiles/<name>.json)"
        )
    return text


def _fraction(text: str) -> float:
    """Argparse type of ``--test-fraction``: a number in ``(0, 1)`` (the report needs test subjects)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1): the report is on the held-out test subjects, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``medkd3d pipeline`` to the command line."""
    parser = subparsers.add_parser(
        "pipeline",
        help="train teachers, distill students, evaluate, export and compare - all through the MONAI bundles",
        description="(synthesise the dataset if needed) -> train each teacher -> distill each student, and train it "
        "again without KD (kd_mode=none) -> evaluate every model on the same held-out test subjects -> export -> "
        "comparison report (Markdown + CSV: chance level, trivial baseline, flags, retention, each student's KD gain "
        "over its no-KD twin), each step a MONAI bundle run. "
        "Rerunning the same command after an interruption skips finished trainings and resumes the interrupted one.",
    )
    parser.add_argument(
        "--dataset-dir",
        type=Path,
        default=None,
        help="BraTS dataset root (2018/2019/2020 layouts); a synthetic dataset is generated there if it does not "
        "exist (default: OUT/data/synthetic_brats2019)",
    )
    parser.add_argument("--datalist", type=Path, default=None, help="datalist JSON (`medkd3d datalist`) to use instead")
    parser.add_argument("--out", type=Path, default=Path("runs/pipeline"), help="output folder (default: %(default)s)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="--profile quick (32^3 volumes, 24-48 epochs, slimmer teachers, ResNet students) plus a synthetic "
        "dataset of 320 subjects with half of them held out for testing (--test-fraction 0.5) and --jobs 2: the whole "
        "job in under 10 minutes on 2 idle CPU cores",
    )
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        type=_profile_name,
        metavar="NAME",
        help="merge configs/profiles/NAME.json after train.json of every bundle that has it (repeatable, in order; "
        "the bundles ship quick, cpu and gpu)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        type=parse_bundle_override,
        metavar="[BUNDLE:]KEY=VALUE",
        help="bundle config override over the profiles, VALUE parsed as JSON when it parses, e.g. learning_rate=3e-4 "
        "or brats_teacher_vggvit3d:network_def#vit_layers=6 for one bundle (its students build the teacher its "
        "checkpoint records) (repeatable)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: each bundle's)")
    parser.add_argument("--spatial-size", type=int, default=None, help="volume edge (default: each bundle's)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: each bundle's)")
    parser.add_argument("--num-workers", type=int, default=None, help="data-loading workers (default: each bundle's)")
    parser.add_argument("--fold", type=int, default=0, help="cross-validation fold (default: %(default)s)")
    parser.add_argument("--num-folds", type=int, default=None, help="number of folds (default: 5, quick: 4)")
    parser.add_argument(
        "--test-fraction",
        type=_fraction,
        default=None,
        help="fraction of each class's subjects held out as the test subjects, never used for training or model "
        "selection (default: each bundle's, 0.2; quick: 0.5)",
    )
    parser.add_argument(
        "--bundles",
        nargs="+",
        default=None,
        metavar="BUNDLE",
        choices=[m.bundle for m in MODELS],
        help="run only these bundles (and their teachers)",
    )
    parser.add_argument(
        "--no-kd-baselines",
        dest="kd_baselines",
        action="store_false",
        help="do not train the students without KD: by default each student bundle is also trained with "
        "kd_mode=none into OUT/<bundle>_no_kd/ and evaluated on the same test subjects, and the report shows its row "
        "and the student's KD gain over it (one more student training per student)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="trainings run at once in worker processes, the CPU threads shared between them, each run's output in "
        "OUT/<run>/train.log; a distilled student still waits for its teacher, and the evaluations run in the same "
        "workers (OUT/<run>/evaluate.log) as they fall idle (default: 1, quick: 2 on a machine "
        "with 2 or more CPUs)",
    )
    parser.add_argument("--tracking", choices=["mlflow"], default=None, help="track the training runs with MLflow")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = replace(PipelineSettings(out_dir=args.out), **(QUICK if args.quick else {}))
    profiles = [*settings.profiles, *(p for p in args.profile if p not in settings.profiles)]
    bundle_overrides: dict[str, dict[str, Any]] = {}
    for bundle, key, value in args.override:
        if bundle is not None:
            bundle_overrides.setdefault(bundle, {})[key] = value
    overrides = {key: value for bundle, key, value in args.override if bundle is None}
    settings = replace(settings, profiles=profiles, overrides=overrides, bundle_overrides=bundle_overrides)
    chosen = {
        "dataset_dir": args.dataset_dir,
        "datalist": args.datalist,
        "epochs": args.epochs,
        "spatial_size": args.spatial_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "num_folds": args.num_folds,
        "test_fraction": args.test_fraction,
        "bundles": args.bundles,
        "tracking": args.tracking,
        "kd_baselines": args.kd_baselines,
        "jobs": args.jobs,
    }
    settings = replace(settings, fold=args.fold, **{k: v for k, v in chosen.items() if v is not None})
    # looked up on the module at call time, so a test (or a wrapper) can replace the job behind the command
    markdown, table = pipeline.run_pipeline(settings)
    print(f"report: {markdown}\ntable:  {table}")
    return 0
