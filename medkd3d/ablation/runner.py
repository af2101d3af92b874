"""Run a slice-vs-volume x distillation x data-size study on patient-level folds, resumably.

For every fold of a stratified, patient-level k-fold split (subjects, never slices, are split):

1. **Teacher.** A 3D teacher is trained on the fold's whole training side with MONAI's ``SupervisedTrainer``
   (HDKD's protocol: the teacher sees all the training data, the students a subset) and saved to
   ``<out>/teachers/fold<k>.pt``, or a given checkpoint is loaded. It is only built when a KD run needs it.
2. **Students.** For each data size (subjects per class, drawn per class from the fold's training side;
   nested across sizes for one seed; a class smaller than the size contributes all its subjects, as in
   HDKD), seed, student and KD mode, a student is trained from scratch for a fixed number of epochs:
   ``"none"`` with ``SupervisedTrainer`` and class-weighted cross-entropy; ``"logit"`` and
   ``"logit+feature"`` with :class:`medkd3d.engines.DistillationTrainer` and the frozen teacher.
3. **Evaluation** on the fold's held-out subjects with a MONAI ``SupervisedEvaluator``: one prediction per
   subject. 2D and 2.5D students see ``num_stacks`` evenly spaced slice stacks of each volume and their
   slice-level probabilities are averaged (:class:`~medkd3d.workflows.SliceStackInferer` with
   ``aggregate="probabilities"``);
   the multi-slice student fuses its stacks itself; the 3D student sees the volume.

The final model of each run is evaluated (no early stopping): selecting epochs on the few held-out subjects
of a small study would bias exactly the numbers the study reports.

Distillation (documented choice):

* ``"logit"``: the seed KD loss ``alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE``. Slice
  students get the teacher's prediction on the *volume* their slices come from
  (:class:`~medkd3d.losses.VolumeToSliceKDLoss`; the slice pipelines keep the volume with ``keep_volume=True``
  and the trainer feeds it to the teacher through ``teacher_image_key="volume"``).
* ``"logit+feature"``: additionally, the student's stride-8 and stride-16 stages are matched to the teacher's
  stages of the same stride (by ``feature_info``; the first - convolutional - one when several have it). A
  3D student and the teacher differ in architecture (EfficientNet vs VGG/ViT), so their maps are compared
  through learned projectors: :class:`~medkd3d.losses.CrossArchitectureKDLoss` (partially cross-attention
  and group-wise linear projectors, which align maps of any width and grid). A 2D/2.5D student has 2D maps:
  :class:`~medkd3d.losses.VolumeToSliceFeatureLoss` depth-pools the teacher's 3D map at the student's
  ``slice_index`` and regresses it through a 1x1 adapter (FitNets hint). The projectors and adapters train
  with the student.

A KD run and the no-KD run of the same student, size, seed and fold share everything but the distillation -
training subjects, held-out subjects, initial weights and augmentation draws (the seed is set before the
student is built and its data loader seeded) - so they form the pairs of the KD gain (see
:mod:`medkd3d.ablation.stats`). Resuming does not change any result: each run depends only on its own seed.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medkd3d.ablation.grid import (
    KD_MODES,
    ResultStore,
    RunSpec,
    StudyGrid,
    atomic_path,
    read_json,
    write_json_atomic,
)

__all__ = [
    "QUICK_SYNTHETIC",
    "STUDENTS",
    "StudentSpec",
    "StudyConfig",
    "StudyOutcome",
    "run_study",
    "training_subset",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudentSpec:
    """How a student name of the study maps to a network and an input pipeline.

    Args:
        model: registry name of the network.
        layout: ``"volume"`` (``[4, X, Y, Z]``), ``"slice"`` (one stack ``[4*K, H, W]`` per training sample,
            subject-level evaluation by probability averaging) or ``"multi_slice"`` (``[S, 4*K, H, W]``).
        single_slice: ``K = 1`` (a 2D student) instead of the study's ``num_slices``.
        tiny_kwargs: constructor overrides for ``tiny`` studies (``--quick``, tests).
    """

    model: str
    layout: str
    single_slice: bool = False
    tiny_kwargs: Mapping[str, Any] = field(default_factory=dict)


# The slice students share one backbone family so that a comparison between them is about the input, not the
# network; the 3D student is the volumetric EfficientNet-B0 of the seed paper.
_TINY_SLICE_BACKBONE = {"backbone": "mobilenetv3_small_050"}

#: The students a study can compare.
STUDENTS: dict[str, StudentSpec] = {
    "2d": StudentSpec("efficientnet2d", "slice", single_slice=True, tiny_kwargs=_TINY_SLICE_BACKBONE),
    "2.5d": StudentSpec("efficientnet25d", "slice", tiny_kwargs=_TINY_SLICE_BACKBONE),
    "2.5d-multi": StudentSpec(
        "efficientnet25d_multi", "multi_slice", tiny_kwargs={**_TINY_SLICE_BACKBONE, "attention_dim": 8}
    ),
    "3d": StudentSpec("efficientnet3d_b0", "volume", tiny_kwargs={"width_multiplier": 0.25}),
}

#: Strides of the stages distilled by ``"logit+feature"``.
DISTILLED_STRIDES = (8, 16)

#: The synthetic dataset ``--quick`` generates when the dataset folder does not exist.
QUICK_SYNTHETIC: dict[str, Any] = {"layout": "brats2019", "n_hgg": 16, "n_lgg": 12, "shape": (64, 64, 48), "seed": 0}


@dataclass
class StudyConfig:
    """Everything a study depends on.

    Args:
        dataset_dir: a BraTS 2019/2020 folder (discovered) or a datalist JSON (``medkd3d datalist``).
        out_dir: the study folder: results, teachers, caches and reports.
        students: student names, keys of :data:`STUDENTS`.
        kd_modes: KD modes, from :data:`~medkd3d.ablation.grid.KD_MODES`.
        sizes: training subjects per class (HDKD's data-size study), or ``"all"``.
        seeds: seeds of the subject subsets, initialisations and augmentations.
        folds: number of patient-level stratified folds (every run is repeated per fold).
        epochs: student training epochs.
        teacher_epochs: teacher training epochs (``None``: ``epochs``).
        teacher: registry name of the 3D teacher.
        teacher_checkpoint: a trained teacher to reuse instead of training one per fold; ``{fold}`` in the path
            is replaced by the fold index (one teacher per fold, the leak-free choice).
        spatial_size: edge of the cubic preprocessed volume ``(N, N, N)``.
        tiny: tiny networks (see :attr:`StudentSpec.tiny_kwargs` and the registry's tiny teacher settings).
        batch_size: training and evaluation batch size.
        learning_rate: AdamW learning rate.
        weight_decay: AdamW weight decay.
        num_slices: adjacent slices ``K`` per 2.5D stack.
        num_stacks: stacks ``S`` per subject for subject-level evaluation (and training of the multi-slice
            student).
        alpha: weight of the KD term (see :class:`~medkd3d.losses.KDLoss`).
        temperature: KD softmax temperature.
        feature_weight: weight of the feature-distillation term.
        split_seed: seed of the patient-level folds (and of the teacher's training).
        cache: ``"disk"`` (default: preprocessed volumes are stored once in ``<out>/cache`` and shared by all
            runs and resumed invocations), ``"memory"`` or ``"none"``.
        num_workers: data-loading workers.
        device: training device; CUDA when available by default. Latency is always measured on the CPU.
        threads: PyTorch CPU threads (``torch.set_num_threads``) while the study runs; ``None`` keeps PyTorch's
            default (one per core). Tiny networks gain nothing from several threads and, on cores shared with
            other work, lose an order of magnitude to threads waiting for each other, so ``--quick`` uses 1.
            CPU latencies are measured with this many threads (``cpu_threads`` in ``profiles/*.json``).
        latency_repeats: timed forward passes per CPU latency measurement.
        synthetic: when ``dataset_dir`` does not exist, generate a synthetic BraTS dataset there with these
            :func:`~medkd3d.data.generate_synthetic_brats` arguments (``None``: a missing folder is an error).
    """

    dataset_dir: str | os.PathLike
    out_dir: str | os.PathLike
    students: Sequence[str] = ("2d", "2.5d", "2.5d-multi", "3d")
    kd_modes: Sequence[str] = KD_MODES
    sizes: Sequence[int | str] = (50, 100, 150, "all")
    seeds: Sequence[int] = (0, 1, 2)
    folds: int = 5
    epochs: int = 30
    teacher_epochs: int | None = None
    teacher: str = "vggvit3d"
    teacher_checkpoint: str | None = None
    spatial_size: int = 128
    tiny: bool = False
    batch_size: int = 4
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    num_slices: int = 3
    num_stacks: int = 8
    alpha: float = 0.5
    temperature: float = 4.0
    feature_weight: float = 1.0
    split_seed: int = 0
    cache: str = "disk"
    num_workers: int = 0
    device: str | None = None
    threads: int | None = None
    latency_repeats: int = 10
    synthetic: Mapping[str, Any] | None = None

    @classmethod
    def quick(cls, dataset_dir: str | os.PathLike, out_dir: str | os.PathLike, **overrides: Any) -> StudyConfig:
        """The ``--quick`` study: a tiny grid on a small synthetic dataset, a few minutes on 2 CPU cores.

        Every student and KD mode, 4 subjects per class and all, one seed, two folds, 32^3 volumes, tiny networks,
        2 student epochs and 4 teacher epochs, one CPU thread. ``overrides`` replace any of these.
        """
        settings: dict[str, Any] = {
            "students": tuple(STUDENTS),
            "kd_modes": KD_MODES,
            "sizes": (4, "all"),
            "seeds": (0,),
            "folds": 2,
            "epochs": 2,
            "teacher_epochs": 4,
            "spatial_size": 32,
            "tiny": True,
            "num_stacks": 4,
            "latency_repeats": 3,
            "threads": 1,
            "synthetic": QUICK_SYNTHETIC,
        }
        settings.update(overrides)
        return cls(dataset_dir=dataset_dir, out_dir=out_dir, **settings)

    def grid(self) -> StudyGrid:
        unknown = [s for s in self.students if s not in STUDENTS]
        if unknown:
            raise ValueError(f"unknown student(s) {unknown}; choose from {list(STUDENTS)}")
        return StudyGrid(tuple(self.students), tuple(self.kd_modes), tuple(self.sizes), tuple(self.seeds), self.folds)

    def run_settings(self) -> dict[str, Any]:
        """The settings every run's result depends on (recorded in ``study.json``; the grid axes are not)."""
        keys = (
            "folds epochs teacher_epochs teacher teacher_checkpoint spatial_size tiny batch_size learning_rate "
            "weight_decay num_slices num_stacks alpha temperature feature_weight split_seed"
        ).split()
        settings = {key: getattr(self, key) for key in keys}
        settings["teacher_epochs"] = self.teacher_epochs or self.epochs
        return settings


@dataclass
class StudyOutcome:
    """What :func:`run_study` did and wrote.

    Attributes:
        trained: keys of the runs trained by this call (finished runs found on disk are skipped).
        skipped: keys of the runs that were already finished.
        teachers_trained: folds whose teacher this call trained.
        reports: the report files by name (``"results_csv"``, ``"summary_md"``, plots).
    """

    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    teachers_trained: list[int] = field(default_factory=list)
    reports: dict[str, Path] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------- data


def _load_datalist(config: StudyConfig, validate: bool) -> dict[str, Any]:
    """The study's datalist; a missing folder is synthesised when ``config.synthetic`` says so."""
    from medkd3d.data import assert_data_valid, discover_brats, load_datalist
    from medkd3d.workflows import ensure_dataset

    source = Path(config.dataset_dir).expanduser()
    if not source.exists():
        if config.synthetic is None:
            raise FileNotFoundError(
                f"dataset {source} does not exist; point --dataset-dir at a BraTS folder or a datalist JSON, or "
                "pass --quick to generate a small synthetic dataset there"
            )
        logger.info("Generating the synthetic study dataset %s into %s.", dict(config.synthetic), source)
        source = ensure_dataset(source, config.synthetic, option="--dataset-dir")
    if validate:
        return assert_data_valid(source)
    return load_datalist(source) if source.is_file() else discover_brats(source)


def _subjects_fingerprint(records: Sequence[Mapping[str, Any]]) -> str:
    """Hash of the (subject, label) pairs: the same dataset, wherever it is stored."""
    pairs = sorted({(str(r["subject"]), r.get("label")) for r in records})
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def training_subset(records: Sequence[Mapping[str, Any]], size: int | str, seed: int) -> list[Mapping[str, Any]]:
    """The training records of ``size`` subjects per class (``"all"``: every record).

    Drawn per class with :func:`medkd3d.data.splits.per_class_subset`, so the subsets are nested across sizes
    for one seed (a learning curve adds subjects instead of redrawing them). A class with fewer subjects than
    ``size`` contributes all of them (HDKD's data-size study does the same for its small classes), with a
    warning.

    Args:
        records: the training side of a fold.
        size: subjects per class, or ``"all"``.
        seed: seed of the draw.

    Returns:
        The chosen records, in their original order.
    """
    from medkd3d.data.splits import per_class_subset, subject_labels

    if size == "all":
        return list(records)
    by_label: dict[Any, list[Mapping[str, Any]]] = {}
    for record in records:
        by_label.setdefault(record.get("label"), []).append(record)
    chosen: set[str] = set()
    for label, members in sorted(by_label.items(), key=lambda item: repr(item[0])):
        available = len(subject_labels(members))
        if available < int(size):
            logger.warning(
                "Class %r has %d training subjects, fewer than the %s per class asked for: using all of them.",
                label, available, size,
            )  # fmt: skip
        chosen.update(per_class_subset(members, min(int(size), available), seed))
    return [r for r in records if r["subject"] in chosen]


# ---------------------------------------------------------------------------------------------------- models


def _build_student(name: str, config: StudyConfig, num_classes: int) -> Any:
    from medkd3d.networks import create_model

    spec = STUDENTS[name]
    kwargs: dict[str, Any] = dict(spec.tiny_kwargs) if config.tiny else {}
    if spec.layout != "volume":
        kwargs["num_slices"] = 1 if spec.single_slice else config.num_slices
    return create_model(spec.model, num_classes=num_classes, **kwargs)


def _build_teacher(config: StudyConfig, num_classes: int) -> Any:
    from medkd3d.networks import create_model, get_model_entry

    entry = get_model_entry(config.teacher)
    kwargs: dict[str, Any] = dict(entry.tiny_kwargs) if config.tiny else {}
    if "img_size" in inspect.signature(entry.factory).parameters:  # ViT teachers embed a fixed token grid
        kwargs["img_size"] = config.spatial_size
    return create_model(config.teacher, in_channels=4, num_classes=num_classes, **kwargs)


def _profile_input(name: str | None, config: StudyConfig) -> tuple[tuple[int, ...], int]:
    """``(input shape, batch size)`` of one subject-level prediction as evaluated (``None``: the teacher)."""
    n = config.spatial_size
    layout = "volume" if name is None else STUDENTS[name].layout
    if layout == "volume":
        return (4, n, n, n), 1
    channels = 4 * (1 if STUDENTS[name].single_slice else config.num_slices)
    if layout == "multi_slice":
        return (config.num_stacks, channels, n, n), 1
    return (channels, n, n), config.num_stacks


def _profile(network: Any, name: str | None, config: StudyConfig) -> dict[str, Any]:
    """Parameters, GFLOPs and median CPU latency of one subject-level prediction (untrained weights: cost
    does not depend on them)."""
    import copy

    import torch

    from medkd3d.networks.profile import count_gflops, count_parameters, measure_latency

    shape, batch = _profile_input(name, config)
    cpu_network = copy.deepcopy(network).cpu()
    # The random example inputs must not shift the seeded stream of the run that follows: a resumed study
    # (profile already stored) and a fresh one then train identically.
    with torch.random.fork_rng(devices=[]):
        latency = measure_latency(cpu_network, shape, repeats=config.latency_repeats, batch_size=batch, device="cpu")
        gflops = count_gflops(cpu_network, shape, batch_size=batch, device="cpu")
    return {
        "parameters": count_parameters(cpu_network),
        "gflops": gflops,
        "cpu_latency_ms": latency["median_ms"],
        "profile_input": [batch, *shape],
        "cpu_threads": torch.get_num_threads(),
    }


def _cached_profile(path: Path, network: Any, name: str | None, config: StudyConfig) -> dict[str, Any]:
    """The profile stored at ``path``, measured and stored first when missing (one measurement per study)."""
    if path.is_file():
        return read_json(path, "model profile")
    profile = _profile(network, name, config)
    write_json_atomic(path, profile)
    return profile


def _stage_pairs(student: Any, teacher: Any) -> tuple[list[int], list[int]]:
    """Indices of the student and teacher features distilled by ``"logit+feature"`` (see the module docstring).

    Raises:
        ValueError: if the two networks share none of :data:`DISTILLED_STRIDES`.
    """
    student_indices, teacher_indices = [], []
    for stride in DISTILLED_STRIDES:
        s = next((i for i, info in enumerate(student.feature_info) if info["reduction"] == stride), None)
        t = next((i for i, info in enumerate(teacher.feature_info) if info["reduction"] == stride), None)
        if s is not None and t is not None:
            student_indices.append(s)
            teacher_indices.append(t)
    if not student_indices:
        raise ValueError(
            f"{type(student).__name__} and teacher {type(teacher).__name__} have no stage at strides "
            f"{DISTILLED_STRIDES} in common (feature_info), so 'logit+feature' has nothing to match; use kd 'logit'"
        )
    return student_indices, teacher_indices


def _feature_loss(student: Any, teacher: Any, layout: str, config: StudyConfig) -> Any:
    from medkd3d.losses import CrossArchitectureKDLoss, VolumeToSliceFeatureLoss

    student_indices, teacher_indices = _stage_pairs(student, teacher)
    student_channels = [student.feature_info[i]["num_chs"] for i in student_indices]
    teacher_channels = [teacher.feature_info[i]["num_chs"] for i in teacher_indices]
    if layout == "volume":
        # group-wise projectors need a group count dividing every width
        groups = math.gcd(*student_channels, *teacher_channels)
        return CrossArchitectureKDLoss(
            student_channels, teacher_channels, pca_weight=config.feature_weight, gl_weight=config.feature_weight,
            student_indices=student_indices, teacher_indices=teacher_indices, gl_groups=math.gcd(groups, 4),
        )  # fmt: skip
    # the slice pipelines cut along axis 2 (axial in RAS), the teacher's last spatial axis
    return VolumeToSliceFeatureLoss(
        student_channels, teacher_channels, weight=config.feature_weight, axis=-1,
        student_indices=student_indices, teacher_indices=teacher_indices,
    )  # fmt: skip


# -------------------------------------------------------------------------------------------------- pipelines


def _transforms(layout: str, num_slices: int, config: StudyConfig, train: bool, keep_volume: bool = False) -> Any:
    from medkd3d.data.pipelines import slice_stack_transforms, volume_transforms

    spatial = (config.spatial_size,) * 3
    if layout == "volume":
        return volume_transforms(spatial, train=train)
    # slice students train on one stack per sample and are evaluated per subject on num_stacks stacks
    stacks = config.num_stacks if (layout == "multi_slice" or not train) else None
    return slice_stack_transforms(spatial, num_slices, num_stacks=stacks, train=train, keep_volume=keep_volume)


def _loader(records: Sequence[Mapping[str, Any]], transform: Any, config: StudyConfig, train: bool) -> Any:
    from monai.data import DataLoader

    from medkd3d.data.datasets import build_dataset

    dataset = build_dataset(
        records, transform, cache=config.cache, cache_dir=Path(config.out_dir) / "cache",
        num_workers=config.num_workers,
    )  # fmt: skip
    # Batch norm cannot train on a final batch of one, so training drops an incomplete last batch.
    batch_size = max(1, min(config.batch_size, len(dataset))) if train else config.batch_size
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=config.num_workers,
    )  # fmt: skip


def _class_weighted_ce(records: Sequence[Mapping[str, Any]], num_classes: int, device: Any) -> Any:
    """Cross-entropy weighted by inverse class frequency of the training subjects (HGG/LGG are imbalanced)."""
    from torch import nn

    from medkd3d.losses import class_weights_from_labels

    weights = class_weights_from_labels([r["label"] for r in records], num_classes)
    return nn.CrossEntropyLoss(weight=weights.to(device))


def _timed_run(trainer: Any) -> float:
    start = time.perf_counter()
    trainer.run()
    return time.perf_counter() - start


def _optimizer(modules: Sequence[Any], config: StudyConfig) -> Any:
    import torch

    parameters = [p for module in modules if module is not None for p in module.parameters() if p.requires_grad]
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)


# ------------------------------------------------------------------------------------------------------- study


class _Study:
    """The state of one :func:`run_study` call: data, folds, teachers, profiles."""

    def __init__(self, config: StudyConfig) -> None:
        import torch

        from medkd3d.data.splits import make_splits, split_records, write_splits

        self.config = config
        self.out = Path(config.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.store = ResultStore(self.out)
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.grid = config.grid()
        first_start = not self.store.settings_path.is_file()
        datalist = _load_datalist(config, validate=first_start)  # validate every file once, on the first start
        self.class_names = list(datalist["class_names"])
        records = list(datalist["training"])
        unlabeled = [r["subject"] for r in records if r.get("label") is None]
        if unlabeled:
            raise ValueError(
                f"subjects {unlabeled[:5]} of {config.dataset_dir} have no label; an ablation needs a label per "
                "subject (give a labels CSV to `medkd3d datalist`)"
            )
        self.store.bind_settings(
            {
                **config.run_settings(),
                "subjects": _subjects_fingerprint(records),
                "num_subjects": len({r["subject"] for r in records}),
                "class_names": self.class_names,
            }
        )
        splits = make_splits(records, num_folds=config.folds, seed=config.split_seed)
        write_splits(splits, self.out / "splits.json")
        self.sides = [split_records(records, splits, fold) for fold in range(config.folds)]
        self._teachers: dict[int, Any] = {}
        self.teachers_trained: list[int] = []

    # ------------------------------------------------------------------------------------------- teachers

    def teacher(self, fold: int) -> Any:
        """The frozen teacher of ``fold``: loaded, or trained on the fold's training side and saved.

        Its held-out metrics and cost are stored in ``<out>/teachers/fold<k>.json`` for the report.
        """
        if fold in self._teachers:
            return self._teachers[fold]
        from monai.utils import set_determinism

        self._teachers.clear()  # folds run one after the other: keep one teacher in memory
        set_determinism(seed=self.config.split_seed)
        teacher = _build_teacher(self.config, len(self.class_names)).to(self.device)
        checkpoint, train_time = self._teacher_weights(teacher, fold)
        info_path = self.out / "teachers" / f"fold{fold}.json"
        if train_time is not None or not info_path.is_file():
            profile = _cached_profile(self.out / "profiles" / "teacher.json", teacher, None, self.config)
            write_json_atomic(
                info_path,
                {"fold": fold, "model": self.config.teacher, "checkpoint": str(checkpoint),
                 **self.evaluate(teacher, "volume", 0, fold), **profile, "train_time_s": train_time,
                 "train_subjects": len(self.sides[fold]["train"])},
            )  # fmt: skip
        teacher.eval().requires_grad_(False)
        self._teachers[fold] = teacher
        return teacher

    def _teacher_weights(self, teacher: Any, fold: int) -> tuple[Path, float | None]:
        """Load the teacher's checkpoint, training and saving it first when it is the study's own and missing.

        Returns:
            The checkpoint and the training time in seconds (``None`` when nothing was trained).
        """
        import torch
        from monai.engines import SupervisedTrainer

        from medkd3d.engines import load_teacher_checkpoint

        config = self.config
        if config.teacher_checkpoint:
            if "{fold}" not in str(config.teacher_checkpoint):
                logger.warning(
                    "Teacher %s serves every fold: if it was trained on subjects a fold holds out, that fold's KD "
                    "runs see their test subjects through the teacher. Prefer per-fold teachers ({fold} in the path).",
                    config.teacher_checkpoint,
                )  # fmt: skip
            checkpoint = Path(str(config.teacher_checkpoint).replace("{fold}", str(fold)))
            load_teacher_checkpoint(teacher, checkpoint, map_location=self.device)
            return checkpoint, None
        checkpoint = self.out / "teachers" / f"fold{fold}.pt"
        if checkpoint.is_file():
            load_teacher_checkpoint(teacher, checkpoint, map_location=self.device)
            return checkpoint, None
        train = self.sides[fold]["train"]
        logger.info("Training the %s teacher of fold %d on %d subjects.", config.teacher, fold, len(train))
        trainer = SupervisedTrainer(
            device=self.device, max_epochs=config.teacher_epochs or config.epochs,
            train_data_loader=_loader(train, _transforms("volume", 0, config, train=True), config, train=True),
            network=teacher, optimizer=_optimizer([teacher], config),
            loss_function=_class_weighted_ce(train, len(self.class_names), self.device), decollate=False,
        )  # fmt: skip
        train_time = _timed_run(trainer)
        with atomic_path(checkpoint) as tmp:
            torch.save(teacher.state_dict(), tmp)
        self.teachers_trained.append(fold)
        return checkpoint, train_time

    def teacher_rows(self) -> list[dict[str, Any]]:
        """The stored teacher results, one per fold that has one."""
        paths = [self.out / "teachers" / f"fold{fold}.json" for fold in range(self.config.folds)]
        return [read_json(path, "teacher info") for path in paths if path.is_file()]

    # ------------------------------------------------------------------------------------------- students

    def evaluate(self, network: Any, layout: str, num_slices: int, fold: int) -> dict[str, Any]:
        """Subject-level metrics of ``network`` on the held-out subjects of ``fold``."""
        from monai.inferers import SimpleInferer

        from medkd3d.engines import evaluate_classifier
        from medkd3d.workflows.inferers import SliceStackInferer

        held_out = self.sides[fold]["val"]
        loader = _loader(held_out, _transforms(layout, num_slices, self.config, train=False), self.config, train=False)
        inferer = SliceStackInferer(aggregate="probabilities") if layout == "slice" else SimpleInferer()
        metrics = evaluate_classifier(network, loader, self.device, self.class_names, inferer=inferer)
        keys = ("balanced_accuracy", "auc", "f1", "sensitivity", "specificity", "accuracy")
        return {**{key: metrics[key] for key in keys}, "val_subjects": metrics["num_samples"]}

    def run(self, spec: RunSpec) -> dict[str, Any]:
        """Train and evaluate one run; returns its result row (without the coordinates)."""
        from monai.engines import SupervisedTrainer
        from monai.utils import set_determinism

        from medkd3d.engines import DistillationTrainer
        from medkd3d.losses import KDLoss, VolumeToSliceKDLoss

        config, student = self.config, STUDENTS[spec.student]
        num_slices = 1 if student.single_slice else config.num_slices
        train = training_subset(self.sides[spec.fold]["train"], spec.size, spec.seed)
        teacher = self.teacher(spec.fold) if spec.kd != "none" else None
        set_determinism(seed=spec.seed)
        network = _build_student(spec.student, config, len(self.class_names))
        profile = _cached_profile(self.out / "profiles" / f"{spec.student}.json", network, spec.student, config)
        network = network.to(self.device)
        ce = _class_weighted_ce(train, len(self.class_names), self.device)
        slices_to_volume = teacher is not None and student.layout != "volume"
        loader = _loader(
            train, _transforms(student.layout, num_slices, config, train=True, keep_volume=slices_to_volume), config,
            train=True,
        )  # fmt: skip
        common = {"device": self.device, "max_epochs": config.epochs, "train_data_loader": loader, "network": network}
        if teacher is None:
            trainer = SupervisedTrainer(
                **common, optimizer=_optimizer([network], config), loss_function=ce, decollate=False
            )
        else:
            kd_class = VolumeToSliceKDLoss if slices_to_volume else KDLoss
            kd_loss = kd_class(alpha=config.alpha, temperature=config.temperature, ce_loss=ce)
            features: dict[str, Any] = {}
            if spec.kd == "logit+feature":
                features = {
                    "feature_loss": _feature_loss(network, teacher, student.layout, config).to(self.device),
                    "student_feature_taps": "forward_features",
                    "teacher_feature_taps": "forward_features",
                    "feature_loss_batch_keys": ("slice_index",) if slices_to_volume else (),
                }
            trainer = DistillationTrainer(
                **common, teacher=teacher, optimizer=_optimizer([network, features.get("feature_loss")], config),
                kd_loss=kd_loss, teacher_image_key="volume" if slices_to_volume else None, decollate=False,
                **features,
            )  # fmt: skip
        train_time = _timed_run(trainer)
        metrics = self.evaluate(network, student.layout, num_slices, spec.fold)
        return {
            **metrics,
            **{key: profile[key] for key in ("parameters", "gflops", "cpu_latency_ms")},
            "train_time_s": train_time,
            "train_subjects": len(train),
        }


def run_study(config: StudyConfig, progress: bool = True) -> StudyOutcome:
    """Run (or resume) a study and write its reports.

    Runs whose result file exists are skipped; each finished run is stored at once (atomically), so an
    interrupted call loses at most the run in flight. After the grid, ``results.csv``, ``summary.md`` and the
    plots are (re)written from every finished run of the grid (:func:`medkd3d.ablation.report.write_report`).

    Args:
        config: the study.
        progress: show a progress bar over the grid.

    Returns:
        What was trained and skipped, and the report files.

    Raises:
        FileNotFoundError: if the dataset does not exist (and ``config.synthetic`` is ``None``).
        ValueError: for an invalid grid or settings that differ from those of the study already in ``out_dir``.
        medkd3d.data.DataValidationError: if the dataset has problems (checked on the first start).
    """
    with _torch_threads(config.threads):
        return _run_study(config, progress)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op CPU threads set to ``threads`` inside the block (``None``: unchanged), then restored."""
    import torch

    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be at least 1 (or None for PyTorch's default), got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _run_study(config: StudyConfig, progress: bool) -> StudyOutcome:
    from monai.utils import set_determinism
    from tqdm.auto import tqdm

    from medkd3d.ablation.report import write_report

    study = _Study(config)
    runs = study.grid.runs()
    outcome = StudyOutcome(skipped=[spec.key for spec in runs if study.store.is_done(spec)])
    pending = [spec for spec in runs if not study.store.is_done(spec)]
    logger.info(
        "Study %s: %d runs, %d already finished, %d to train.", study.out, len(runs), len(outcome.skipped), len(pending)
    )
    try:
        with tqdm(
            total=len(runs), initial=len(outcome.skipped), desc="ablation", unit="run", disable=not progress
        ) as bar:
            for spec in pending:
                bar.set_postfix_str(spec.key)
                result = study.run(spec)
                study.store.write(spec, result)
                outcome.trained.append(spec.key)
                logger.info(
                    "Run %s: balanced accuracy %.3f, AUC %.3f, %.1f s.",
                    spec.key, result["balanced_accuracy"], result["auc"], result["train_time_s"],
                )  # fmt: skip
                bar.update()
    finally:
        set_determinism(seed=None)
        outcome.teachers_trained = study.teachers_trained
    settings = {"dataset": str(config.dataset_dir), **config.run_settings()}
    outcome.reports = write_report(study.store.collect(study.grid), study.out, study.teacher_rows(), settings)
    return outcome


def override(config: StudyConfig, **changes: Any) -> StudyConfig:
    """``config`` with the non-``None`` ``changes`` applied (command-line flags left out keep the preset)."""
    return replace(config, **{key: value for key, value in changes.items() if value is not None})
