"""``medkd3d pipeline``: the whole distillation job, run through the MONAI bundles.

(synthesise the dataset if needed) -> validate it once -> train each teacher -> distill each student -> evaluate
every model on the same fold -> export (TorchScript and ONNX with :func:`medkd3d.export.export_model`, each
artefact checked against eager PyTorch on random and real inputs) -> write a comparison report (Markdown + CSV:
metrics, parameters, GFLOPs, CPU latency, student/teacher ratios, the artefacts and their parity).

Every step is a bundle config run with MONAI's ``ConfigWorkflow`` and command-line-style overrides, exactly what
``python -m monai.bundle run --config_file bundles/<b>/configs/train.json --epochs 2 ...`` does; outputs go to
``--out`` (one folder per bundle), never into the bundles themselves.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medkd3d.workflows.report import ModelResult

__all__ = ["MODELS", "QUICK", "PipelineModel", "PipelineSettings", "register", "run_pipeline"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineModel:
    """One bundle of the pipeline.

    Args:
        bundle: bundle directory name under ``bundles/``.
        teacher: bundle of its teacher (students only); trained first, and its checkpoint is passed on.
        slice_stacks: the network classifies 2.5D slice stacks (a subject takes ``num_eval_stacks`` of them).
    """

    bundle: str
    teacher: str | None = None
    slice_stacks: bool = False


#: The bundles in training order: each teacher before its students.
MODELS: tuple[PipelineModel, ...] = (
    PipelineModel("brats_teacher_vggvit3d"),
    PipelineModel("brats_student_effnet3d", teacher="brats_teacher_vggvit3d"),
    PipelineModel("brats_student_effnet25d", teacher="brats_teacher_vggvit3d", slice_stacks=True),
    PipelineModel("brats_hdkd_teacher3d"),
    PipelineModel("brats_hdkd_student3d", teacher="brats_hdkd_teacher3d"),
)


@dataclass
class PipelineSettings:
    """What ``medkd3d pipeline`` runs.

    Args:
        out_dir: output folder: ``datalist.json``, one folder per bundle (``models/``, ``eval/``, ``export/``),
            ``report.md`` and ``report.csv``.
        dataset_dir: dataset root; a synthetic BraTS dataset is generated there when it does not exist.
            Default: ``<out_dir>/data/synthetic_brats2019``.
        datalist: a datalist JSON to use instead of discovering ``dataset_dir``.
        synthetic: overrides of :data:`medkd3d.workflows.data.SYNTHETIC_DEFAULT` for a generated dataset.
        epochs: training epochs of every bundle.
        spatial_size: edge of the cubic preprocessed volume.
        batch_size: training batch size; ``None`` keeps each bundle's default.
        num_workers: data-loading workers.
        fold: cross-validation fold; all models use the same one.
        num_folds: number of folds.
        bundles: which bundles to run (teachers of selected students are added).
        bundle_overrides: extra config overrides per bundle, e.g. smaller networks. A teacher's ``network_def#...``
            overrides are given to its students as ``teacher_def#...``.
        tracking: ``"mlflow"`` to track every run with MONAI's MLflow integration.
        latency_repeats: timed forward passes per model for the CPU latency.
        export_formats: formats of :data:`medkd3d.export.FORMATS` every model is exported to (``<bundle>/export/``);
            each artefact passes its parity check or the pipeline fails.
    """

    out_dir: Path = Path("runs/pipeline")
    dataset_dir: Path | None = None
    datalist: Path | None = None
    synthetic: Mapping[str, Any] | None = None
    epochs: int = 100
    spatial_size: int = 128
    batch_size: int | None = None
    num_workers: int = 4
    fold: int = 0
    num_folds: int = 5
    bundles: Sequence[str] = tuple(m.bundle for m in MODELS)
    bundle_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tracking: str | None = None
    latency_repeats: int = 5
    export_formats: Sequence[str] = ("torchscript", "onnx")


#: ``--quick``: a small synthetic dataset, tiny volumes, two epochs and a slimmer VGG-ViT teacher (a quarter of
#: the VGG width, a 4-block ViT; the 160M-parameter default is made for GPUs) - the whole pipeline in about two
#: minutes on two idle CPU cores. The numbers it reports show the pipeline works, not how good the models are.
QUICK: dict[str, Any] = {
    "synthetic": {"n_hgg": 10, "n_lgg": 10, "shape": (96, 96, 72)},
    "epochs": 2,
    "spatial_size": 32,
    "num_workers": 0,
    "num_folds": 4,
    "latency_repeats": 3,
    "bundle_overrides": {
        "brats_teacher_vggvit3d": {
            "network_def#width_multiplier": 0.25,
            "network_def#vit_hidden_size": 192,
            "network_def#vit_layers": 4,
            "network_def#vit_heads": 3,
            "network_def#msgff_dim": 64,
        }
    },
}


def _selected(bundles: Sequence[str]) -> list[PipelineModel]:
    known = {m.bundle: m for m in MODELS}
    unknown = sorted(set(bundles) - set(known))
    if unknown:
        raise ValueError(f"Unknown bundle(s) {unknown}; the pipeline runs {list(known)}.")
    wanted = set(bundles) | {known[b].teacher for b in bundles if known[b].teacher}
    return [m for m in MODELS if m.bundle in wanted]


def _overrides(model: PipelineModel, settings: PipelineSettings, shared: Mapping[str, Any]) -> dict[str, Any]:
    """The config overrides of one bundle: shared knobs, its own output folders, its teacher's checkpoint."""
    out = settings.out_dir / model.bundle
    overrides = {**shared, "ckpt_dir": str(out / "models"), "output_dir": str(out / "eval")}
    if model.teacher:
        overrides["teacher_ckpt"] = str(settings.out_dir / model.teacher / "models" / "model.pt")
        teacher_net = settings.bundle_overrides.get(model.teacher, {})
        overrides.update(
            {f"teacher_def{k[len('network_def') :]}": v for k, v in teacher_net.items() if k.startswith("network_def#")}
        )
    overrides.update(settings.bundle_overrides.get(model.bundle, {}))
    return overrides


def _subject_input(bundle_root: Path, overrides: Mapping[str, Any], slice_stacks: bool) -> tuple[list[int], int]:
    """Network input shape (no batch axis) and number of network inputs per subject."""
    from medkd3d.export.bundle import bundle_parser

    parser = bundle_parser(bundle_root, overrides)
    size = [int(s) for s in parser.get_parsed_content("spatial_size")]
    if not slice_stacks:
        return [4, *size], 1
    axis = int(parser.get_parsed_content("slice_axis"))
    plane = [s for i, s in enumerate(size) if i != axis]
    return [4 * int(parser.get_parsed_content("num_slices")), *plane], int(parser.get_parsed_content("num_eval_stacks"))


#: Top-level knobs ``inference.json`` shares with ``train.json`` (others, e.g. ``epochs``, exist only in training).
_INFERENCE_KNOBS = frozenset(
    {
        "dataset_dir",
        "datalist",
        "class_names",
        "spatial_size",
        "num_workers",
        "num_slices",
        "slice_axis",
        "num_eval_stacks",
        "validate_data",
    }
)


def _measure(
    model: PipelineModel, bundle_root: Path, overrides: dict[str, Any], settings: PipelineSettings, datalist: Path
) -> ModelResult:
    """Export the trained model (each artefact checked against eager PyTorch) and profile it on the CPU.

    The parity checks use real subjects of ``datalist`` next to seeded random inputs; an artefact out of
    tolerance raises :class:`medkd3d.export.ParityError` and stops the pipeline.
    """
    from medkd3d.export import export_model, load_bundle
    from medkd3d.networks.profile import count_gflops, count_parameters, measure_latency
    from medkd3d.workflows.report import ModelResult

    out = settings.out_dir / model.bundle
    infer_overrides = {k: v for k, v in overrides.items() if k in _INFERENCE_KNOBS or k.startswith("network_def#")}
    shape, stacks = _subject_input(bundle_root, infer_overrides, model.slice_stacks)
    bundle = load_bundle(bundle_root, checkpoint=out / "models" / "model.pt", overrides=infer_overrides)
    exports = export_model(bundle, out / "export", settings.export_formats, parity_data=datalist)
    network = bundle.network
    metrics = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    return ModelResult(
        bundle=model.bundle,
        role="student" if model.teacher else "teacher",
        teacher=model.teacher,
        network=type(network).__name__,
        input_per_subject=f"{stacks} x {shape}",
        metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        parameters=count_parameters(network),
        gflops=count_gflops(network, shape, batch_size=stacks),
        latency_ms=measure_latency(network, shape, batch_size=stacks, repeats=settings.latency_repeats)["median_ms"],
        exports={fmt: str(result.path) for fmt, result in exports.items()},
        export_max_abs_diff={fmt: result.parity.max_abs_diff for fmt, result in exports.items()},
    )


def run_pipeline(settings: PipelineSettings) -> tuple[Path, Path]:
    """Run the whole job through the bundles and write the comparison report.

    Args:
        settings: what to run (see :class:`PipelineSettings`).

    Returns:
        The paths of ``report.md`` and ``report.csv``.

    Raises:
        FileNotFoundError, ValueError: from the dataset checks or any bundle run, with their messages.
        medkd3d.export.ParityError: if an exported artefact does not match its eager network.
    """
    import torch

    from medkd3d.data import write_datalist
    from medkd3d.workflows.bundle import find_bundle_root, run_bundle_config
    from medkd3d.workflows.data import ensure_dataset, prepare_dataset
    from medkd3d.workflows.report import write_report

    started = time.perf_counter()
    out = settings.out_dir
    models = _selected(settings.bundles)
    dataset_dir = settings.dataset_dir or out / "data" / "synthetic_brats2019"
    if settings.datalist is None:  # generated here, so the warning names this command's flag
        dataset_dir = ensure_dataset(dataset_dir, settings.synthetic, option="--dataset-dir")
    # Validate every file once here; the bundle runs then read the checked datalist without re-reading the data.
    data = prepare_dataset(dataset_dir, settings.datalist, synthetic=settings.synthetic)
    datalist = write_datalist(data, out / "datalist.json")
    shared: dict[str, Any] = {
        "dataset_dir": str(dataset_dir),
        "datalist": str(datalist),
        "validate_data": False,
        "class_names": list(data["class_names"]),
        "epochs": settings.epochs,
        "spatial_size": [settings.spatial_size] * 3,
        "num_workers": settings.num_workers,
        "fold": settings.fold,
        "num_folds": settings.num_folds,
        **({"batch_size": settings.batch_size} if settings.batch_size else {}),
    }
    roots = {m.bundle: Path(find_bundle_root(m.bundle)) for m in models}
    overrides = {m.bundle: _overrides(m, settings, shared) for m in models}
    for model in models:
        logger.info("=== training %s ===", model.bundle)
        run_bundle_config(roots[model.bundle], "train.json", tracking=settings.tracking, **overrides[model.bundle])
    for model in models:
        logger.info("=== evaluating %s ===", model.bundle)
        run_bundle_config(
            roots[model.bundle], ["train.json", "evaluate.json"], workflow_type="infer", **overrides[model.bundle]
        )
    results = []
    for model in models:
        logger.info("=== exporting and profiling %s ===", model.bundle)
        results.append(_measure(model, roots[model.bundle], overrides[model.bundle], settings, datalist))
    context = {
        "dataset": f"{settings.datalist or dataset_dir} ({len(data['training'])} subjects, classes {data['class_names']})",
        "fold": f"{settings.fold} of {settings.num_folds}",
        "epochs": settings.epochs,
        "spatial_size": shared["spatial_size"],
        "evaluation subjects": int(results[0].metrics.get("num_samples", 0)) if results else 0,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
        "total time": f"{time.perf_counter() - started:.0f} s",
    }
    return write_report(results, out, context)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``medkd3d pipeline`` to the command line."""
    parser = subparsers.add_parser(
        "pipeline",
        help="train teachers, distill students, evaluate, export and compare - all through the MONAI bundles",
        description="(synthesise the dataset if needed) -> train each teacher -> distill each student -> evaluate every "
        "model on the same fold -> export -> comparison report (Markdown + CSV), each step a MONAI bundle run.",
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
        help="small synthetic dataset, 32^3 volumes, 2 epochs, a slimmer teacher: the whole job in about 2 minutes "
        "on 2 idle CPU cores",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: 100, quick: 2)")
    parser.add_argument("--spatial-size", type=int, default=None, help="volume edge (default: 128, quick: 32)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: each bundle's)")
    parser.add_argument("--num-workers", type=int, default=None, help="data-loading workers (default: 4, quick: 0)")
    parser.add_argument("--fold", type=int, default=0, help="cross-validation fold (default: %(default)s)")
    parser.add_argument("--num-folds", type=int, default=None, help="number of folds (default: 5, quick: 4)")
    parser.add_argument(
        "--bundles",
        nargs="+",
        default=None,
        metavar="BUNDLE",
        choices=[m.bundle for m in MODELS],
        help="run only these bundles (and their teachers)",
    )
    parser.add_argument("--tracking", choices=["mlflow"], default=None, help="track the training runs with MLflow")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = replace(PipelineSettings(out_dir=args.out), **(QUICK if args.quick else {}))
    chosen = {
        "dataset_dir": args.dataset_dir,
        "datalist": args.datalist,
        "epochs": args.epochs,
        "spatial_size": args.spatial_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "num_folds": args.num_folds,
        "bundles": args.bundles,
        "tracking": args.tracking,
    }
    settings = replace(settings, fold=args.fold, **{k: v for k, v in chosen.items() if v is not None})
    markdown, table = run_pipeline(settings)
    print(f"report: {markdown}\ntable:  {table}")
    return 0
