"""The whole distillation job, run through the MONAI bundles (the ``medkd3d pipeline`` command is in
:mod:`medkd3d.pipeline.cli`).

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
import contextlib
import json
import logging
import math
import platform
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medkd3d.utils import usable_cpus

if TYPE_CHECKING:
    from medkd3d.pipeline.report import ModelResult

__all__ = [
    "MODELS",
    "NO_KD_SUFFIX",
    "QUICK",
    "ExportParityError",
    "PipelineModel",
    "PipelineSettings",
    "StepClock",
    "finished_trainings",
    "format_duration",
    "parse_bundle_override",
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
        slice_stacks: the network classifies 2.5D slice stacks (a subject takes ``num_stacks`` of them).
        kd: ``False`` runs a student's bundle with the override ``kd_mode=none`` (its teacher is not loaded): the
            no-KD twin each distilled student's KD gain is measured against. Ignored for teachers.
    """

    bundle: str
    slice_stacks: bool = False
    kd: bool = True

    @cached_property
    def teacher(self) -> str | None:
        """The bundle of its teacher (students only), as the student's ``train.json`` names it
        (:func:`medkd3d.bundles.teacher_of`); trained first, and its checkpoint is passed on."""
        from medkd3d.bundles import find_bundle_root, teacher_of

        return teacher_of(find_bundle_root(self.bundle))

    @property
    def name(self) -> str:
        """The run's name and output folder under ``--out``: the bundle, or ``<bundle>_no_kd`` for a no-KD twin."""
        return self.bundle if self.kd or self.teacher is None else self.bundle + NO_KD_SUFFIX

    @property
    def role(self) -> str:
        """The run's role in the report: ``"teacher"``, ``"student"`` or ``"student (no KD)"``."""
        from medkd3d.pipeline.report import NO_KD_ROLE

        return "teacher" if self.teacher is None else ("student" if self.kd else NO_KD_ROLE)


#: The bundles in training order: each teacher before its students (whose ``train.json`` names their teacher).
MODELS: tuple[PipelineModel, ...] = (
    PipelineModel("brats_teacher_vggvit3d"),
    PipelineModel("brats_student_effnet3d"),
    PipelineModel("brats_student_effnet25d", slice_stacks=True),
    PipelineModel("brats_hdkd_teacher3d"),
    PipelineModel("brats_hdkd_student3d"),
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
        synthetic: overrides of :data:`medkd3d.bundles.data.SYNTHETIC_DEFAULT` for a generated dataset.
        profiles: bundle profiles (``configs/profiles/<name>.json``, e.g. ``"quick"``, ``"cpu"``, ``"gpu"``) merged
            in order after ``train.json`` of every bundle that has them; each must exist in at least one bundle.
        epochs: training epochs of every bundle; ``None`` keeps each bundle's (after its profiles).
        spatial_size: edge of the cubic preprocessed volume; ``None`` keeps each bundle's.
        batch_size: training batch size; ``None`` keeps each bundle's.
        num_workers: data-loading workers; ``None`` keeps each bundle's.
        fold: cross-validation fold; all models use the same one.
        num_folds: number of folds.
        test_fraction: fraction of each class's subjects held out as the test subjects; ``None`` keeps each
            bundle's (``train.json``: 0.2).
        bundles: which bundles to run (teachers of selected students are added).
        kd_baselines: also train every selected student without KD (its bundle with ``kd_mode=none``, into
            ``<out_dir>/<bundle>_no_kd/``) and evaluate it on the same test subjects; the report shows it as its own
            row and each student's KD gain over it. Costs one more student training and evaluation per student; the
            twin has its student's network (but for a compartment readout, which only distillation gives), so it is
            neither exported nor timed.
        overrides: config overrides of every bundle (``{"learning_rate": 3e-4}``), over the profiles and shorthands.
        bundle_overrides: config overrides per bundle, over ``overrides``, e.g. smaller networks. A student builds
            its teacher from the teacher's checkpoint, which records the teacher's network, so a teacher's
            ``network_def#...`` overrides need no repeating for its students.
        tracking: ``"mlflow"`` to track every run with MONAI's MLflow integration.
        latency_repeats: timed forward passes per model for the CPU latency.
        export_formats: formats of :data:`medkd3d.export.FORMATS` every model is exported to (``<bundle>/export/``);
            each artefact passes its parity check or the pipeline fails.
        jobs: trainings run at once, each in a worker process with its share of the CPU threads and its output
            in ``<out_dir>/<run>/train.log`` (:mod:`medkd3d.pipeline.scheduler`); a distilled student still waits
            for its teacher. The evaluations run in the same workers, each after its training and behind every
            training (output in ``<out_dir>/<run>/evaluate.log``). 1: one after the other in this process.
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
    test_fraction: float | None = None
    bundles: Sequence[str] = tuple(m.bundle for m in MODELS)
    kd_baselines: bool = True
    overrides: Mapping[str, Any] = field(default_factory=dict)
    bundle_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tracking: str | None = None
    latency_repeats: int = 5
    export_formats: Sequence[str] = ("torchscript", "onnx")
    jobs: int = 1


#: ``--quick``: the ``quick`` profile of every bundle (``configs/profiles/quick.json``: 32^3 volumes, 32 epochs - 48
#: for the VGG-ViT teacher, 36 and 24 for the HDKD teacher and student -, batch 8, a slimmer VGG-ViT teacher - VGG-11
#: at a quarter of the width, a 4-block ViT; the 160M-parameter default is made for GPUs - and ResNet 3D/2.5D
#: students) plus a small synthetic dataset with half of it held out for testing, fewer folds and latency repeats, and
#: two trainings at a time: about 10 minutes on two idle CPU cores, in which both teachers and their students learn
#: the synthetic task (README).
QUICK: dict[str, Any] = {
    # 320 subjects, half of them held out: 160 test subjects put a balanced accuracy's 95% interval at about +-0.05
    # (+-0.1 with 40, where one subject moves it by 0.025), while a fold keeps the 120 training and 40 validation
    # subjects the trainings' time budget allows (testing costs seconds). 96x96x64 sources raised the VGG-ViT
    # teacher on the development cohort, but not on this data, where they lifted the trivial baseline instead
    # (teacher_seeds.md)
    "synthetic": {"n_hgg": 160, "n_lgg": 160, "shape": (64, 64, 48)},
    "test_fraction": 0.5,
    "profiles": ("quick",),
    "num_folds": 4,
    "latency_repeats": 3,
    # two trainings at a time, one thread each: 1.2x-1.4x more training per second than one with two threads on the
    # quick networks (a small 3D network does not keep two cores busy)
    "jobs": min(2, usable_cpus()),
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
            root = key.split("#")[0].split("::")[0]
            if root in _PIPELINE_KEYS:
                raise ValueError(f"{where}: {key} is set by the pipeline itself; use {_PIPELINE_KEYS[root]} instead.")


def _bundle_profiles(roots: Mapping[str, Path], profiles: Sequence[str]) -> dict[str, list[str]]:
    """The profiles each bundle has, in the requested order.

    Raises:
        ValueError: for a profile that none of the bundles has, listing the available ones.
    """
    from medkd3d.bundles import list_profiles

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
    """The config overrides of one run, lowest first: shared knobs, ``overrides``, its bundle's
    ``bundle_overrides``, ``kd_mode=none`` for a no-KD twin, and the pipeline's data, folders and teacher checkpoint
    (unused by a twin, whose bundle does not load its teacher). A student builds its teacher as the teacher's
    checkpoint records it was trained, so the teacher's own overrides are not repeated here."""
    out = settings.out_dir / model.name
    overrides = {**{k: v for k, v in shared.items() if k not in _PIPELINE_KEYS}, **settings.overrides}
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
    from medkd3d.bundles import bundle_parser

    return bundle_parser(bundle_root, overrides, "train.json", profiles).get_parsed_content(key)


def _same_or_each(values: Mapping[str, Any]) -> Any:
    """One value when every bundle has it, else ``"bundle: value, ..."``."""
    distinct = {json.dumps(v) for v in values.values()}
    return next(iter(values.values())) if len(distinct) == 1 else ", ".join(f"{b}: {v}" for b, v in values.items())


def _subject_input(bundle_root: Path, overrides: Mapping[str, Any], slice_stacks: bool) -> tuple[list[int], int]:
    """Network input shape (no batch axis) and number of network inputs per subject."""
    from medkd3d.bundles import bundle_parser
    from medkd3d.data import network_input_shape

    parser = bundle_parser(bundle_root, overrides)
    size = [int(s) for s in parser.get_parsed_content("spatial_size")]
    if not slice_stacks:
        shape, count = network_input_shape(size)
        return list(shape), count
    inferer = parser.get("inferer") or {}
    # a single-stack network sees a subject's stacks as a batch; a multiple-instance network takes them as one input
    stacks_as_batch = str(inferer.get("_target_", "") if isinstance(inferer, Mapping) else "").endswith(
        "SliceStackInferer"
    )
    shape, count = network_input_shape(
        size,
        num_slices=int(parser.get_parsed_content("num_slices")),
        slice_axis=int(parser.get_parsed_content("slice_axis")),
        num_stacks=int(parser.get_parsed_content("num_stacks")),
        stacks_as_batch=stacks_as_batch,
    )
    return list(shape), count


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
    and KD gain come from them), as :class:`~medkd3d.pipeline.report.ModelResult` fields."""
    from medkd3d.pipeline.report import read_predictions

    out = settings.out_dir / model.name / "eval"
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    probabilities, labels, _ = read_predictions(out / "evaluation_predictions.csv")
    kept = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or k in ("confusion_matrix", "class_names")}
    return {"metrics": kept, "probabilities": probabilities, "labels": labels}


class ExportParityError(RuntimeError):
    """An exported artefact of the pipeline did not match its eager network; the report, naming it, is written."""


def _trained_bundle(
    model: PipelineModel, bundle_root: Path, overrides: dict[str, Any], settings: PipelineSettings
) -> tuple[Any, list[int], int]:
    """``(bundle, shape, stacks)``: the trained model as inference builds it, and its input per subject."""
    from medkd3d.export import load_bundle

    infer_overrides = {k: v for k, v in overrides.items() if k in _INFERENCE_KNOBS or k.startswith("network_def#")}
    shape, stacks = _subject_input(bundle_root, infer_overrides, model.slice_stacks)
    checkpoint = settings.out_dir / model.name / "models" / "model.pt"
    return load_bundle(bundle_root, checkpoint=checkpoint, overrides=infer_overrides), shape, stacks


def _measure(
    model: PipelineModel, bundle_root: Path, overrides: dict[str, Any], settings: PipelineSettings, datalist: Path
) -> ModelResult:
    """Export the trained model (each artefact checked against eager PyTorch) and profile it on the CPU.

    The parity checks use real subjects of ``datalist`` next to seeded random inputs. An artefact out of
    tolerance is not kept (:class:`medkd3d.export.ParityError`); the model is still profiled and reported with
    its other formats, and the failure in its ``export_error``.
    """
    from medkd3d.export import ParityError, export_model
    from medkd3d.networks.profile import count_gflops, count_parameters, measure_latency
    from medkd3d.pipeline.report import ModelResult

    out = settings.out_dir / model.name
    bundle, shape, stacks = _trained_bundle(model, bundle_root, overrides, settings)
    exports, errors = {}, []
    for fmt in settings.export_formats:  # one by one, so that one format's failure keeps the others
        try:
            exports.update(export_model(bundle, out / "export", [fmt], parity_data=datalist))
        except ParityError as error:  # the trained model is still worth its report; run_pipeline fails after it
            logger.error("%s: %s", model.name, error)
            errors.append(str(error))
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
        export_error=" ".join(errors),
        **_evaluation(model, settings),
    )


def _no_kd_result(
    model: PipelineModel, student: ModelResult, bundle_root: Path, overrides: dict[str, Any], settings: PipelineSettings
) -> ModelResult:
    """The report row of a no-KD twin: its own test evaluation and parameter and GFLOP counts, its student's input.

    The twin is its student's bundle trained with ``kd_mode=none``; its network is the student's but for the parts
    only distillation gives (the HDKD student's compartment readout takes its head from the teacher), so it is
    counted from its own checkpoint. Exporting or timing it would only cost time (latency is left n/a).
    """
    from medkd3d.networks.profile import count_gflops, count_parameters

    bundle, shape, stacks = _trained_bundle(model, bundle_root, overrides, settings)
    network = bundle.network
    return replace(
        student,
        bundle=model.name,
        role=model.role,
        parameters=count_parameters(network),
        gflops=count_gflops(network, shape, batch_size=stacks),
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


def _read_marker(marker: Path) -> dict[str, Any] | None:
    """The record of a training marker (``{"state": ..., "settings": ...}``), ``None`` if missing or unreadable."""
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _training_state(marker: Path, identity: Mapping[str, Any]) -> str | None:
    """``"finished"`` or ``"started"`` when ``marker`` records a training with these settings, else ``None``.

    A marker of other settings (or an unreadable one) means the checkpoints there are not this run's: training
    starts afresh and replaces them, as a first run would.
    """
    recorded = _read_marker(marker)
    if recorded is None or recorded.get("settings") != identity:
        if marker.exists():
            logger.info("%s records a training with other settings: training %s afresh.", marker, marker.parent)
        return None
    state = recorded.get("state")
    return state if state in ("started", "finished") else None


def finished_trainings(out_dir: str | Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """The finished trainings of a pipeline output folder, in the report's order, to evaluate them again.

    Args:
        out_dir: a ``medkd3d pipeline`` output folder.

    Returns:
        ``(run name, bundle root, recorded settings)`` per training whose marker says it finished (an unreadable
        marker counts as unfinished, as for the pipeline itself): the run name is the bundle's (``<bundle>_no_kd``
        for a no-KD twin), the settings are ``{"profiles": [...], "overrides": {...}}`` as the training used them,
        ready for :func:`medkd3d.bundles.evaluate_bundle`.

    Raises:
        FileNotFoundError: naming the folder if it holds no finished training.
    """
    from medkd3d.bundles import find_bundle_root

    order = [m.bundle for m in MODELS]  # each teacher, its students, each no-KD twin after its student
    trainings = []
    for marker in Path(out_dir).glob(f"*/models/{TRAINING_MARKER}"):
        recorded = _read_marker(marker)
        name = marker.parents[1].name
        bundle = name.removesuffix(NO_KD_SUFFIX)
        if recorded is not None and recorded.get("state") == "finished" and bundle in order:
            trainings.append((name, Path(find_bundle_root(bundle)), recorded["settings"]))
    if not trainings:
        raise FileNotFoundError(f"{out_dir}: no finished training; run `medkd3d pipeline --out {out_dir}` first.")
    return sorted(trainings, key=lambda training: (order.index(training[0].removesuffix(NO_KD_SUFFIX)), training[0]))


def format_duration(seconds: float) -> str:
    """``"42 s"``, ``"3 min 05 s"`` or ``"1 h 02 min"``: a duration as a person reads it in a log."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class StepClock:
    """Step count, elapsed time and a rough time left for the pipeline's phases, for its log lines.

    The time left of a phase (trainings, evaluations, exports) is the mean duration of its finished steps times
    the steps still to finish, shared by the workers running them: a guess, since steps differ (a teacher trains
    longer than a student), said as "about".

    Args:
        started: ``time.perf_counter()`` when the pipeline started.
        clock: the time source (a test passes a fake one).
    """

    def __init__(self, started: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.started = started
        self.clock = clock
        self.phase("", 0)

    def phase(self, name: str, total: int, workers: int = 1) -> None:
        """Start a phase of ``total`` steps run ``workers`` at a time, e.g. ``phase("trainings", 8)``."""
        self._phase, self._total, self._workers = name, total, max(1, workers)
        self._started_steps = 0
        self._durations: list[float] = []

    def start(self) -> str:
        """Count a step as started and return its log prefix."""
        self._started_steps += 1
        text = f"[{self._phase} {self._started_steps}/{self._total}, {format_duration(self.clock() - self.started)} elapsed"
        if self._durations:
            mean = sum(self._durations) / len(self._durations)
            left = mean * (self._total - len(self._durations)) / self._workers
            text += f", about {format_duration(left)} left for the {self._phase}"
        return text + "]"

    def finish(self, seconds: float) -> None:
        """Record the duration of a finished step."""
        self._durations.append(seconds)

    @contextlib.contextmanager
    def step(self) -> Iterator[str]:
        """A step run here: yields its log prefix and records its duration when the block ends."""
        started = self.clock()
        yield self.start()
        self.finish(self.clock() - started)


def _train_all(
    models: Sequence[PipelineModel],
    roots: Mapping[str, Path],
    profiles: Mapping[str, list[str]],
    runs: Mapping[str, dict[str, Any]],
    settings: PipelineSettings,
    clock: StepClock,
) -> int:
    """Train every model whose training has not finished in an earlier run, ``settings.jobs`` at a time.

    A rerun after a kill skips the runs whose training finished (their marker file says so, with the same
    settings) and resumes the one that was in flight. With ``jobs > 1`` the trainings run in worker processes
    (:mod:`medkd3d.pipeline.scheduler`: each teacher before its distilled students, each run's output in its
    ``train.log``), and so do the evaluations of every model (after its training, in ``evaluate.log``); with one
    job the trainings run here, their output in this log, and the caller evaluates.

    Returns:
        How many trainings ran at a time (1 when they ran here; then nothing was evaluated).
    """
    from medkd3d.bundles import run_bundle_config
    from medkd3d.pipeline.scheduler import TrainingJob, run_training_jobs, threads_per_job
    from medkd3d.utils import atomic_write_text

    markers = {m.name: Path(runs[m.name]["ckpt_dir"]) / TRAINING_MARKER for m in models}
    identities = {m.name: _training_identity(runs[m.name], profiles[m.bundle]) for m in models}
    states = {m.name: _training_state(markers[m.name], identities[m.name]) for m in models}
    for name, state in states.items():
        if state == "finished":
            logger.info("=== %s: trained by an earlier run with these settings (%s), skipped ===", name, markers[name])
    todo = [m for m in models if states[m.name] != "finished"]
    workers = max(1, min(settings.jobs, len(todo)))
    clock.phase("trainings", len(todo), workers)

    def mark(model: PipelineModel, state: str) -> None:
        text = json.dumps({"state": state, "settings": identities[model.name]}, indent=2) + "\n"
        atomic_write_text(markers[model.name], text)

    def announce(model: PipelineModel, progress: str, where: str = "") -> None:
        verb = "resuming" if states[model.name] == "started" else "training"
        logger.info("=== %s %s %s (profiles %s)%s ===", progress, verb, model.name, profiles[model.bundle], where)
        mark(model, "started")

    def overrides(model: PipelineModel) -> dict[str, Any]:
        return {**runs[model.name], "resume": states[model.name] == "started"}

    if workers == 1:
        for model in todo:
            with clock.step() as progress:
                announce(model, progress)
                run_bundle_config(
                    roots[model.bundle], "train.json", tracking=settings.tracking, profiles=profiles[model.bundle],
                    **overrides(model),
                )  # fmt: skip
            mark(model, "finished")
        return workers
    by_name = {m.name: m for m in todo}
    jobs = [
        TrainingJob(
            name=m.name,
            bundle_root=str(roots[m.bundle]),
            profiles=tuple(profiles[m.bundle]),
            overrides=overrides(m),
            log_path=str(settings.out_dir / m.name / "train.log"),
            after=m.teacher if m.kd and m.teacher in by_name else None,  # a teacher trained earlier is no wait
            priority=0 if not m.teacher else 1 if m.kd else 2,  # the longest chain first
            tracking=settings.tracking,
        )
        for m in todo
    ]
    # every model's evaluation after its training, behind all trainings: they fill the workers the last
    # trainings leave idle instead of running one after the other once all trainings are done
    jobs += [
        TrainingJob(
            name=m.name,
            bundle_root=str(roots[m.bundle]),
            profiles=tuple(profiles[m.bundle]),
            overrides=dict(runs[m.name]),
            log_path=str(settings.out_dir / m.name / "evaluate.log"),
            after=m.name if m.name in by_name else None,
            priority=3,
            evaluation=True,
        )
        for m in models
    ]
    logger.info(
        "Training %d runs, %d at a time in worker processes (%d PyTorch threads each; --jobs), then evaluating "
        "every run in them; each run's output goes to <out>/<run>/train.log and evaluate.log.",
        len(by_name), workers, threads_per_job(workers),
    )  # fmt: skip

    def started(job: TrainingJob) -> None:
        if job.evaluation:
            logger.info("=== evaluating %s in a worker, log %s ===", job.name, job.log_path)
        else:
            announce(by_name[job.name], clock.start(), f" in a worker, log {job.log_path}")

    def finished(job: TrainingJob, seconds: float) -> None:
        if job.evaluation:
            logger.info("=== %s evaluated in %s ===", job.name, format_duration(seconds))
            return
        clock.finish(seconds)
        mark(by_name[job.name], "finished")
        logger.info("=== %s trained in %s ===", job.name, format_duration(seconds))

    run_training_jobs(
        jobs,
        workers,
        on_start=started,
        on_finish=finished,
        skipped={m.name for m in models if states[m.name] == "finished"},
    )
    return workers


def _training_device() -> str:
    """Where the bundles train: they choose CUDA wherever it is available."""
    import torch

    return f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"


def _training_threads(jobs: int) -> int:
    """PyTorch threads of each training: this process's with one job, a share of the CPUs with several."""
    import torch

    from medkd3d.pipeline.scheduler import threads_per_job

    return torch.get_num_threads() if jobs <= 1 else threads_per_job(jobs)


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
        ExportParityError: after writing the report, if an exported artefact did not match its eager network
            (the report names it; the trained models are kept).
    """
    import torch

    from medkd3d.bundles import evaluate_bundle, find_bundle_root, read_profiles
    from medkd3d.bundles.data import ensure_dataset, prepare_dataset
    from medkd3d.data import describe_synthetic, write_datalist
    from medkd3d.pipeline.report import baseline_result, bundle_evaluation_split, write_report

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
        "test_fraction": settings.test_fraction,
    }
    shared.update({k: v for k, v in shorthands.items() if v is not None})
    runs = {m.name: _overrides(m, settings, shared) for m in models}
    clock = StepClock(started)
    workers = _train_all(models, roots, profiles, runs, settings, clock)
    if workers == 1:  # with several workers, every model was evaluated in them
        clock.phase("evaluations", len(models))
        for model in models:
            with clock.step() as progress:
                logger.info("=== %s evaluating %s ===", progress, model.name)
                evaluate_bundle(roots[model.bundle], profiles=profiles[model.bundle], **runs[model.name])
    # what the runs got from their profiles, for the configs the profiles are not merged into (inference.json)
    overrides = {m.name: {**read_profiles(roots[m.bundle], profiles[m.bundle]), **runs[m.name]} for m in models}
    results: dict[str, ModelResult] = {}
    clock.phase("exports", sum(m.kd or not m.teacher for m in models))
    for model in models:  # a twin comes after its student, whose row it extends
        if not model.kd and model.teacher:
            student = results[model.bundle]
            student.no_kd_twin = model.name  # the report measures the student's KD gain against it
            results[model.name] = _no_kd_result(model, student, roots[model.bundle], overrides[model.name], settings)
            continue
        with clock.step() as progress:
            logger.info("=== %s exporting and profiling %s ===", progress, model.name)
            results[model.name] = _measure(model, roots[model.bundle], overrides[model.name], settings, datalist)
    # the trivial baseline on exactly the subjects the bundles trained, selected and tested on
    split, evaluate_split = bundle_evaluation_split(roots[models[0].bundle], overrides[models[0].name])
    try:
        baseline = baseline_result(split, list(data["class_names"]), evaluate_split)
    except (OSError, ValueError) as error:  # the trained models are reported even if the baseline cannot be fitted
        logger.warning("The trivial baseline could not be computed: %s", error)
        baseline = None
    # how a synthetic dataset was generated: its anatomy (nilearn's MNI152 or the procedural brain) changes the data
    synthetic = describe_synthetic(dataset_dir) if settings.datalist is None else None
    context = {
        "dataset": f"{settings.datalist or dataset_dir} ({len(data['training'])} subjects, classes {data['class_names']}"
        f"{f'; {synthetic}' if synthetic else ''})",
        "split": f"fold {settings.fold} of {settings.num_folds}: {len(split['train'])} training, {len(split['val'])} "
        f"validation, {len(split['test'])} held-out test subjects",
        "profiles": ", ".join(settings.profiles) or "none (each bundle's train.json)",
        **{
            key: _same_or_each(
                {m.name: _train_value(roots[m.bundle], profiles[m.bundle], runs[m.name], key) for m in models}
            )
            for key in ("epochs", "spatial_size", "batch_size")
        },
        "machine": f"{platform.machine()}, {usable_cpus()} CPUs, {_training_device()}, torch {torch.__version__}",
        "trainings": f"{workers} at a time, {_training_threads(workers)} torch threads each",
        "total time": f"{time.perf_counter() - started:.0f} s",
    }
    paths = write_report(list(results.values()), out, context, baseline=baseline, evaluate_split=evaluate_split)
    failed = [r for r in results.values() if r.export_error]
    if failed:
        raise ExportParityError(
            f"The report is written ({paths[0]}), but the export of {', '.join(r.bundle for r in failed)} failed "
            f"its parity check. {failed[0].bundle}: {failed[0].export_error} (Those flags are `medkd3d export`'s: "
            f"the trained model is kept in {out / failed[0].bundle / 'models' / 'model.pt'}, and `medkd3d export "
            "--bundle BUNDLE --checkpoint FILE` re-exports it.)"
        )
    return paths


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
