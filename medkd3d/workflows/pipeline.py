"""``medkd3d pipeline``: the whole distillation job, run through the MONAI bundles.

(synthesise the dataset if needed) -> validate it once -> train each teacher -> distill each student, and train it
again without KD (``kd_mode=none``: its no-KD twin) -> evaluate every model on the same held-out test subjects
(selection used the validation subjects only) -> export (TorchScript and ONNX with
:func:`medkd3d.export.export_model`, each artefact checked against eager PyTorch on random and real inputs) -> write
a comparison report (Markdown + CSV: metrics, parameters, GFLOPs, CPU latency, student/teacher ratios, each
student's KD gain over its twin, the artefacts and their parity).

Every step is a bundle config run with MONAI's ``ConfigWorkflow``, the bundle's profiles merged after
``train.json`` and command-line-style overrides on top, exactly what
``python -m monai.bundle run --config_file "['bundles/<b>/configs/train.json','bundles/<b>/configs/profiles/quick.json']"
--epochs 2 ...`` does; outputs go to ``--out`` (one folder per run: ``<bundle>/``, and ``<bundle>_no_kd/`` for a
student's no-KD twin, the same bundle run with the one override ``kd_mode=none``), never into the bundles themselves.
Precedence, lowest first: ``train.json``, the profiles in order, the shorthands (``--epochs`` ...), ``--override
KEY=VALUE`` (every bundle), ``--override BUNDLE:KEY=VALUE``; the pipeline's own folders, data and split always win.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medkd3d.workflows.report import ModelResult

__all__ = [
    "MODELS",
    "NO_KD_SUFFIX",
    "QUICK",
    "PipelineModel",
    "PipelineSettings",
    "parse_bundle_override",
    "register",
    "run_pipeline",
]

logger = logging.getLogger(__name__)

#: Name (and output folder) of a student's no-KD twin: ``<bundle>_no_kd``.
NO_KD_SUFFIX = "_no_kd"


@dataclass(frozen=True)
class PipelineModel:
    """One run of a bundle in the pipeline.

    Args:
        bundle: bundle directory name under ``bundles/``.
        teacher: bundle of its teacher (students only); trained first, and its checkpoint is passed on.
        slice_stacks: the network classifies 2.5D slice stacks (a subject takes ``num_stacks`` of them).
        kd: ``False`` runs a student's bundle with the override ``kd_mode=none`` (its teacher is not loaded): the
            no-KD twin each distilled student's KD gain is measured against. Ignored for teachers.
    """

    bundle: str
    teacher: str | None = None
    slice_stacks: bool = False
    kd: bool = True

    @property
    def name(self) -> str:
        """The run's name and output folder under ``--out``: the bundle, or ``<bundle>_no_kd`` for a no-KD twin."""
        return self.bundle if self.kd or self.teacher is None else self.bundle + NO_KD_SUFFIX

    @property
    def role(self) -> str:
        """The run's role in the report: ``"teacher"``, ``"student"`` or ``"student (no KD)"``."""
        from medkd3d.workflows.report import NO_KD_ROLE

        return "teacher" if self.teacher is None else ("student" if self.kd else NO_KD_ROLE)


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
        out_dir: output folder: ``datalist.json``, one folder per run (``<bundle>/`` and a student's
            ``<bundle>_no_kd/``, each with ``models/`` and ``eval/``; ``export/`` for the bundles), ``report.md`` and
            ``report.csv``.
        dataset_dir: dataset root; a synthetic BraTS dataset is generated there when it does not exist.
            Default: ``<out_dir>/data/synthetic_brats2019``.
        datalist: a datalist JSON to use instead of discovering ``dataset_dir``.
        synthetic: overrides of :data:`medkd3d.workflows.data.SYNTHETIC_DEFAULT` for a generated dataset.
        profiles: bundle profiles (``configs/profiles/<name>.json``, e.g. ``"quick"``, ``"cpu"``, ``"gpu"``) merged
            in order after ``train.json`` of every bundle that has them; each must exist in at least one bundle.
        epochs: training epochs of every bundle; ``None`` keeps each bundle's (after its profiles).
        spatial_size: edge of the cubic preprocessed volume; ``None`` keeps each bundle's.
        batch_size: training batch size; ``None`` keeps each bundle's.
        num_workers: data-loading workers; ``None`` keeps each bundle's.
        fold: cross-validation fold; all models use the same one.
        num_folds: number of folds.
        bundles: which bundles to run (teachers of selected students are added).
        kd_baselines: also train every selected student without KD (its bundle with ``kd_mode=none``, into
            ``<out_dir>/<bundle>_no_kd/``) and evaluate it on the same test subjects; the report shows it as its own
            row and each student's KD gain over it. Costs one more student training and evaluation per student; the
            twin shares its student's network, so it is neither exported nor timed.
        overrides: config overrides of every bundle (``{"learning_rate": 3e-4}``), over the profiles and shorthands.
        bundle_overrides: config overrides per bundle, over ``overrides``, e.g. smaller networks. A teacher's
            ``network_def#...`` overrides (its own or from ``overrides``) are given to its students as
            ``teacher_def#...``, so a student always builds the teacher that was trained.
        tracking: ``"mlflow"`` to track every run with MONAI's MLflow integration.
        latency_repeats: timed forward passes per model for the CPU latency.
        export_formats: formats of :data:`medkd3d.export.FORMATS` every model is exported to (``<bundle>/export/``);
            each artefact passes its parity check or the pipeline fails.
    """

    out_dir: Path = Path("runs/pipeline")
    dataset_dir: Path | None = None
    datalist: Path | None = None
    synthetic: Mapping[str, Any] | None = None
    profiles: Sequence[str] = ()
    epochs: int | None = None
    spatial_size: int | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    fold: int = 0
    num_folds: int = 5
    bundles: Sequence[str] = tuple(m.bundle for m in MODELS)
    kd_baselines: bool = True
    overrides: Mapping[str, Any] = field(default_factory=dict)
    bundle_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tracking: str | None = None
    latency_repeats: int = 5
    export_formats: Sequence[str] = ("torchscript", "onnx")


#: ``--quick``: the ``quick`` profile of every bundle (``configs/profiles/quick.json``: 32^3 volumes, 16 epochs,
#: batch 8, a slimmer VGG-ViT teacher - a quarter of the VGG width, a 4-block ViT; the 160M-parameter default is made
#: for GPUs - and ResNet 3D/2.5D students) plus a small synthetic dataset, fewer folds and latency repeats: about 12
#: minutes on two idle CPU cores, in which the VGG-ViT teacher and its students learn the synthetic task (README).
QUICK: dict[str, Any] = {
    # 200 subjects, so the 20% held-out test split has 40 (the fewest an honest report may rest on); the quick
    # profile's 32^3 volumes need no more than this source resolution
    "synthetic": {"n_hgg": 100, "n_lgg": 100, "shape": (64, 64, 48)},
    "profiles": ("quick",),
    "num_folds": 4,
    "latency_repeats": 3,
}

#: Config ids the pipeline sets itself, and the option that changes each; ``--override`` cannot set them.
_PIPELINE_KEYS: dict[str, str] = {
    "bundle_root": "--bundles",
    "ckpt_dir": "--out",
    "output_dir": "--out",
    "dataset_dir": "--dataset-dir",
    "datalist": "--datalist",
    "validate_data": "--datalist",
    "class_names": "--datalist",
    "fold": "--fold",
    "num_folds": "--num-folds",
    "teacher_ckpt": "--bundles (the pipeline trains the teacher first)",
}


def _selected(bundles: Sequence[str], kd_baselines: bool = False) -> list[PipelineModel]:
    """The runs of ``bundles`` in training order: teachers of selected students added, and with ``kd_baselines``
    each student followed by its no-KD twin."""
    known = {m.bundle: m for m in MODELS}
    unknown = sorted(set(bundles) - set(known))
    if unknown:
        raise ValueError(f"Unknown bundle(s) {unknown}; the pipeline runs {list(known)}.")
    wanted = set(bundles) | {known[b].teacher for b in bundles if known[b].teacher}
    chosen = [m for m in MODELS if m.bundle in wanted]
    return [run for m in chosen for run in ([m, replace(m, kd=False)] if kd_baselines and m.teacher else [m])]


def _check_overrides(settings: PipelineSettings) -> None:
    """Refuse overrides of the pipeline's own config ids and of bundles the pipeline does not run."""
    known = [m.bundle for m in MODELS]
    unknown = sorted(set(settings.bundle_overrides) - set(known))
    if unknown:
        raise ValueError(f"Overrides for unknown bundle(s) {unknown}; the pipeline runs {known}.")
    for where, overrides in [("--override", settings.overrides), *settings.bundle_overrides.items()]:
        for key in overrides:
            if key.split("#")[0].split("::")[0] in _PIPELINE_KEYS:
                option = _PIPELINE_KEYS[key.split("#")[0].split("::")[0]]
                raise ValueError(f"{where}: {key} is set by the pipeline itself; use {option} instead.")


def _bundle_profiles(roots: Mapping[str, Path], profiles: Sequence[str]) -> dict[str, list[str]]:
    """The profiles each bundle has, in the requested order.

    Raises:
        ValueError: for a profile that none of the bundles has, listing the available ones.
    """
    from medkd3d.workflows.bundle import list_profiles

    available = {bundle: list_profiles(root) for bundle, root in roots.items()}
    every = sorted({p for names in available.values() for p in names})
    unknown = [p for p in profiles if p not in every]
    if unknown:
        raise ValueError(
            f"Unknown profile {unknown[0]!r}; the bundles have the profiles {every} (configs/profiles/<name>.json)."
        )
    chosen = {bundle: [p for p in profiles if p in names] for bundle, names in available.items()}
    for bundle, names in chosen.items():
        missing = [p for p in profiles if p not in names]
        if missing:
            logger.info("%s has no profile %s; running it without", bundle, missing)
    return chosen


def _overrides(model: PipelineModel, settings: PipelineSettings, shared: Mapping[str, Any]) -> dict[str, Any]:
    """The config overrides of one run, lowest first: shared knobs, ``overrides``, its teacher's network, its
    bundle's ``bundle_overrides``, ``kd_mode=none`` for a no-KD twin, and the pipeline's data, folders and teacher
    checkpoint (unused by a twin, whose bundle does not load its teacher)."""
    out = settings.out_dir / model.name
    overrides = {**{k: v for k, v in shared.items() if k not in _PIPELINE_KEYS}, **settings.overrides}
    if model.teacher:
        teacher_net = {**settings.overrides, **settings.bundle_overrides.get(model.teacher, {})}
        overrides.update(
            {f"teacher_def{k[len('network_def') :]}": v for k, v in teacher_net.items() if k.startswith("network_def#")}
        )
    overrides.update(settings.bundle_overrides.get(model.bundle, {}))
    if not model.kd and model.teacher:  # the twin: the same run with one override, over the user's kd_mode
        overrides["kd_mode"] = "none"
    overrides.update({k: v for k, v in shared.items() if k in _PIPELINE_KEYS})
    overrides.update({"ckpt_dir": str(out / "models"), "output_dir": str(out / "eval")})
    if model.teacher:
        overrides["teacher_ckpt"] = str(settings.out_dir / model.teacher / "models" / "model.pt")
    return overrides


def _train_value(bundle_root: Path, profiles: Sequence[str], overrides: Mapping[str, Any], key: str) -> Any:
    """The value of a plain config id (``epochs``, ``spatial_size``) of ``train.json`` under profiles and overrides."""
    from monai.bundle import ConfigParser

    from medkd3d.workflows.bundle import profile_configs

    configs = bundle_root / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / c) for c in ["train.json", *profile_configs(bundle_root, profiles)]])
    parser.update({"bundle_root": str(bundle_root), **dict(overrides)})
    return parser.get_parsed_content(key)


def _same_or_each(values: Mapping[str, Any]) -> Any:
    """One value when every bundle has it, else ``"bundle: value, ..."``."""
    distinct = {json.dumps(v) for v in values.values()}
    return next(iter(values.values())) if len(distinct) == 1 else ", ".join(f"{b}: {v}" for b, v in values.items())


def _subject_input(bundle_root: Path, overrides: Mapping[str, Any], slice_stacks: bool) -> tuple[list[int], int]:
    """Network input shape (no batch axis) and number of network inputs per subject."""
    from medkd3d.export.bundle import bundle_parser

    parser = bundle_parser(bundle_root, overrides)
    size = [int(s) for s in parser.get_parsed_content("spatial_size")]
    if not slice_stacks:
        return [4, *size], 1
    axis = int(parser.get_parsed_content("slice_axis"))
    plane = [s for i, s in enumerate(size) if i != axis]
    stack = [4 * int(parser.get_parsed_content("num_slices")), *plane]
    stacks = int(parser.get_parsed_content("num_stacks"))
    inferer = parser.get("inferer") or {}
    if str(inferer.get("_target_", "") if isinstance(inferer, Mapping) else "").endswith("SliceStackInferer"):
        return stack, stacks  # a single-stack network sees a subject's stacks as a batch
    return [stacks, *stack], 1  # a multiple-instance network takes a subject's stacks as one input


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
        "num_stacks",
        "validate_data",
    }
)


def _evaluation(model: PipelineModel, settings: PipelineSettings) -> dict[str, Any]:
    """The test metrics of a run and its per-subject test probabilities (the report's AUC interval, one-class flag
    and KD gain come from them), as :class:`~medkd3d.workflows.report.ModelResult` fields."""
    from medkd3d.workflows.report import read_predictions

    out = settings.out_dir / model.name / "eval"
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    probabilities, labels, _ = read_predictions(out / "evaluation_predictions.csv")
    kept = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or k in ("confusion_matrix", "class_names")}
    return {"metrics": kept, "probabilities": probabilities, "labels": labels}


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

    out = settings.out_dir / model.name
    infer_overrides = {k: v for k, v in overrides.items() if k in _INFERENCE_KNOBS or k.startswith("network_def#")}
    shape, stacks = _subject_input(bundle_root, infer_overrides, model.slice_stacks)
    bundle = load_bundle(bundle_root, checkpoint=out / "models" / "model.pt", overrides=infer_overrides)
    exports = export_model(bundle, out / "export", settings.export_formats, parity_data=datalist)
    network = bundle.network
    return ModelResult(
        bundle=model.name,
        role=model.role,
        teacher=model.teacher,
        network=type(network).__name__,
        input_per_subject=f"{stacks} x {shape}",
        parameters=count_parameters(network),
        gflops=count_gflops(network, shape, batch_size=stacks),
        latency_ms=measure_latency(network, shape, batch_size=stacks, repeats=settings.latency_repeats)["median_ms"],
        exports={fmt: str(result.path) for fmt, result in exports.items()},
        export_max_abs_diff={fmt: result.parity.max_abs_diff for fmt, result in exports.items()},
        **_evaluation(model, settings),
    )


def _no_kd_result(model: PipelineModel, student: ModelResult, settings: PipelineSettings) -> ModelResult:
    """The report row of a no-KD twin: its own test evaluation, its student's network description.

    The twin differs from its student only by ``kd_mode``, which no network reads: parameters and GFLOPs are the
    student's, and exporting or timing the same network again would only cost time (latency is left n/a).
    """
    return replace(
        student,
        bundle=model.name,
        role=model.role,
        latency_ms=math.nan,
        exports={},
        export_max_abs_diff={},
        no_kd_twin=None,
        **_evaluation(model, settings),
    )


#: File in a bundle's checkpoint folder recording that the pipeline started / finished its training, and with what.
TRAINING_MARKER = "pipeline_training.json"


def _training_identity(overrides: Mapping[str, Any], profiles: Sequence[str]) -> dict[str, Any]:
    """What decides a bundle's training (its overrides and profiles), as JSON values for the marker."""
    identity = {"profiles": list(profiles), "overrides": {k: v for k, v in overrides.items() if k != "resume"}}
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def _training_state(marker: Path, identity: Mapping[str, Any]) -> str | None:
    """``"finished"`` or ``"started"`` when ``marker`` records a training with these settings, else ``None``.

    A marker of other settings (or an unreadable one) means the checkpoints there are not this run's: training
    starts afresh and replaces them, as a first run would.
    """
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or recorded.get("settings") != identity:
        if marker.exists():
            logger.info("%s records a training with other settings: training %s afresh.", marker, marker.parent)
        return None
    state = recorded.get("state")
    return state if state in ("started", "finished") else None


def run_pipeline(settings: PipelineSettings) -> tuple[Path, Path]:
    """Run the whole job through the bundles and write the comparison report.

    Rerunning the same settings into the same ``out_dir`` after an interruption skips the runs whose training
    finished (recorded in ``<out>/<run>/models/pipeline_training.json``, no-KD twins included) and resumes the one
    that was interrupted from its ``last.pt`` (the bundle's ``resume``); evaluation, export and the report are redone.

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
    from medkd3d.utils import atomic_write_text
    from medkd3d.workflows.bundle import find_bundle_root, read_profiles, run_bundle_config
    from medkd3d.workflows.data import ensure_dataset, prepare_dataset
    from medkd3d.workflows.report import baseline_result, bundle_evaluation_split, write_report

    started = time.perf_counter()
    out = settings.out_dir
    models = _selected(settings.bundles, settings.kd_baselines)
    _check_overrides(settings)
    roots = {m.bundle: Path(find_bundle_root(m.bundle)) for m in models}
    profiles = _bundle_profiles(roots, settings.profiles)  # checked before any data is generated
    dataset_dir = settings.dataset_dir or out / "data" / "synthetic_brats2019"
    if settings.datalist is None:  # generated here, so the warning names this command's flag
        dataset_dir = ensure_dataset(
            dataset_dir, settings.synthetic, option="--dataset-dir", given=settings.dataset_dir is not None
        )
    # Validate every file once here; the bundle runs then read the checked datalist without re-reading the data.
    data = prepare_dataset(dataset_dir, settings.datalist, synthetic=settings.synthetic)
    datalist = write_datalist(data, out / "datalist.json")
    shared: dict[str, Any] = {
        "dataset_dir": str(dataset_dir),
        "datalist": str(datalist),
        "validate_data": False,
        "class_names": list(data["class_names"]),
        "fold": settings.fold,
        "num_folds": settings.num_folds,
    }
    shorthands = {
        "epochs": settings.epochs,
        "spatial_size": None if settings.spatial_size is None else [settings.spatial_size] * 3,
        "batch_size": settings.batch_size,
        "num_workers": settings.num_workers,
    }
    shared.update({k: v for k, v in shorthands.items() if v is not None})
    runs = {m.name: _overrides(m, settings, shared) for m in models}
    for model in models:
        # a rerun after a kill skips the runs whose training finished and resumes the one that was in flight
        marker = Path(runs[model.name]["ckpt_dir"]) / TRAINING_MARKER
        identity = _training_identity(runs[model.name], profiles[model.bundle])
        state = _training_state(marker, identity)
        if state == "finished":
            logger.info("=== %s: trained by an earlier run with these settings (%s), skipped ===", model.name, marker)
            continue
        resume = state == "started"
        logger.info(
            "=== %s %s (profiles %s) ===", "resuming" if resume else "training", model.name, profiles[model.bundle]
        )
        atomic_write_text(marker, json.dumps({"state": "started", "settings": identity}, indent=2) + "\n")
        run_bundle_config(
            roots[model.bundle], "train.json", tracking=settings.tracking, profiles=profiles[model.bundle],
            **{**runs[model.name], "resume": resume},
        )  # fmt: skip
        atomic_write_text(marker, json.dumps({"state": "finished", "settings": identity}, indent=2) + "\n")
    for model in models:
        logger.info("=== evaluating %s ===", model.name)
        run_bundle_config(
            roots[model.bundle], ["train.json", "evaluate.json"], workflow_type="infer",
            profiles=profiles[model.bundle], **runs[model.name],
        )  # fmt: skip
    # what the runs got from their profiles, for the configs the profiles are not merged into (inference.json)
    overrides = {m.name: {**read_profiles(roots[m.bundle], profiles[m.bundle]), **runs[m.name]} for m in models}
    results: dict[str, ModelResult] = {}
    for model in models:  # a twin comes after its student, whose network it shares
        if not model.kd and model.teacher:
            results[model.bundle].no_kd_twin = model.name  # the report measures the student's KD gain against it
            results[model.name] = _no_kd_result(model, results[model.bundle], settings)
            continue
        logger.info("=== exporting and profiling %s ===", model.name)
        results[model.name] = _measure(model, roots[model.bundle], overrides[model.name], settings, datalist)
    # the trivial baseline on exactly the subjects the bundles trained, selected and tested on
    split, evaluate_split = bundle_evaluation_split(roots[models[0].bundle], overrides[models[0].name])
    try:
        baseline = baseline_result(split, list(data["class_names"]), evaluate_split)
    except (OSError, ValueError) as error:  # the trained models are reported even if the baseline cannot be fitted
        logger.warning("The trivial baseline could not be computed: %s", error)
        baseline = None
    context = {
        "dataset": f"{settings.datalist or dataset_dir} ({len(data['training'])} subjects, classes {data['class_names']})",
        "split": f"fold {settings.fold} of {settings.num_folds}: {len(split['train'])} training, {len(split['val'])} "
        f"validation, {len(split['test'])} held-out test subjects",
        "profiles": ", ".join(settings.profiles) or "none (each bundle's train.json)",
        **{
            key: _same_or_each(
                {m.name: _train_value(roots[m.bundle], profiles[m.bundle], runs[m.name], key) for m in models}
            )
            for key in ("epochs", "spatial_size", "batch_size")
        },
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}",
        "total time": f"{time.perf_counter() - started:.0f} s",
    }
    return write_report(list(results.values()), out, context, baseline=baseline, evaluate_split=evaluate_split)


#: ``BUNDLE:KEY`` of a one-bundle override; a single ``:`` (MONAI's own id separator is ``::``).
_BUNDLE_KEY = re.compile(r"^(?P<bundle>[\w.-]+):(?!:)(?P<key>.+)$")


def parse_bundle_override(text: str) -> tuple[str | None, str, Any]:
    """Argparse type of ``medkd3d pipeline --override``: ``[BUNDLE:]KEY=VALUE``.

    ``VALUE`` is parsed as JSON when it parses (``spatial_size=[64,64,64]``, ``amp=false``), else kept as a string,
    like ``medkd3d export --override`` (:func:`medkd3d.export.cli.parse_override`).

    Returns:
        ``(bundle or None for every bundle, config id, value)``.

    Raises:
        argparse.ArgumentTypeError: without ``=``/key, or for a ``BUNDLE:`` the pipeline does not run.
    """
    from medkd3d.export.cli import parse_override

    key, value = parse_override(text)
    match = _BUNDLE_KEY.match(key)
    if match is None:
        return None, key, value
    known = [m.bundle for m in MODELS]
    if match["bundle"] not in known:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {match['bundle']!r} is not a bundle of the pipeline; BUNDLE:KEY=VALUE takes one of {known}."
        )
    return match["bundle"], match["key"], value


def _profile_name(text: str) -> str:
    """Argparse type of ``--profile``: a profile that at least one bundle of the pipeline has."""
    from medkd3d.workflows.bundle import find_bundle_root, list_profiles

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
        help="--profile quick (32^3 volumes, 16 epochs, a slimmer teacher, ResNet students) plus a small synthetic "
        "dataset: the whole job in about 12 minutes on 2 idle CPU cores",
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
        "or brats_teacher_vggvit3d:network_def#vit_layers=6 for one bundle (its students get the teacher's "
        "network_def# values as teacher_def#) (repeatable)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: each bundle's)")
    parser.add_argument("--spatial-size", type=int, default=None, help="volume edge (default: each bundle's)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size (default: each bundle's)")
    parser.add_argument("--num-workers", type=int, default=None, help="data-loading workers (default: each bundle's)")
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
    parser.add_argument(
        "--no-kd-baselines",
        dest="kd_baselines",
        action="store_false",
        help="do not train the students without KD: by default each student bundle is also trained with "
        "kd_mode=none into OUT/<bundle>_no_kd/ and evaluated on the same test subjects, and the report shows its row "
        "and the student's KD gain over it (one more student training per student)",
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
        "bundles": args.bundles,
        "tracking": args.tracking,
        "kd_baselines": args.kd_baselines,
    }
    settings = replace(settings, fold=args.fold, **{k: v for k, v in chosen.items() if v is not None})
    markdown, table = run_pipeline(settings)
    print(f"report: {markdown}\ntable:  {table}")
    return 0
