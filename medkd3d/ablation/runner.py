"""Run a distillation x data-size study through the bundles, on patient-level folds, resumably.

One recipe: every model of a study is trained and evaluated by its MONAI bundle (``configs/train.json`` and
``configs/evaluate.json``, run with :func:`medkd3d.bundles.run_bundle_config`), exactly as ``medkd3d pipeline``
and ``python -m monai.bundle run`` train it - same optimiser, schedule, transforms and checkpoint selection. A cell
of the study is a bundle run with overrides; the study never trains a network itself.

The study folder holds ``datalist.json`` (the dataset, validated once) and ``splits.json``: ``test_fraction`` of
each class is held out as the test set, the other subjects are dealt into ``folds`` stratified folds
(:func:`medkd3d.data.splits.make_splits`). Every bundle run gets that file (``splits_file``), so teacher and
students of a fold train and validate on the same subjects whatever their seed, and every run reports on the same
test subjects, which neither training nor checkpoint selection (validation side) ever sees.

For every fold:

1. **Teachers.** Each teacher bundle a student needs (``brats_teacher_vggvit3d``, ``brats_hdkd_teacher3d``) is
   trained once per fold on the fold's whole training side (HDKD's protocol: the teacher sees all the labelled
   data) into ``<out>/teachers/<bundle>/fold<k>/`` and evaluated on the test set.
2. **Students.** For each data size, seed, student bundle and KD mode, the student bundle is trained with
   ``kd_mode`` (``"none"``: class-weighted cross-entropy and no teacher; ``"logit"``; ``"logit+feature"`` where
   the bundle has a feature loss), ``train_per_class`` (``N`` labelled subjects per class, drawn per class with
   the seed and nested across sizes) and, for a size ``"N+unlabelled"``, ``unlabelled_train`` (the fold's other
   training subjects kept without their grade, for the KD term only), and its fold's ``teacher_ckpt``.
3. **Evaluation.** The checkpoint every run keeps (its bundle's ``model_selection``: the final model by default) is
   evaluated by the bundle's ``evaluate.json`` on the test split; the metrics come from the written
   ``eval/metrics.json`` and ``evaluation_predictions.csv``.

A KD run and the no-KD run of the same student, size, seed and fold share everything but the distillation -
training subjects, validation and test subjects, initial weights (the bundle's ``seed``) - so they form the pairs
of the KD gain (:mod:`medkd3d.ablation.stats`). The no-KD run of a size ``"N+unlabelled"`` is the no-KD run of
``N`` (cross-entropy cannot use unlabelled subjects), trained once and shared. Finished bundle runs are kept
(``result.json`` in their folder) and skipped on resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medkd3d.ablation.grid import (
    KD_MODES,
    ResultStore,
    RunSpec,
    StudyGrid,
    labelled_per_class,
    read_json,
    write_json_atomic,
)

__all__ = [
    "QUICK_SYNTHETIC",
    "STUDENTS",
    "StudyConfig",
    "StudyOutcome",
    "run_study",
    "student_teacher",
    "supported_kd_modes",
    "train_teachers",
    "training_subset",
]

logger = logging.getLogger(__name__)

#: The student bundles a study can compare (each distils from the teacher bundle its ``train.json`` names, see
#: :func:`student_teacher`).
STUDENTS: tuple[str, ...] = ("brats_student_effnet3d", "brats_student_effnet25d", "brats_hdkd_student3d")

#: The synthetic dataset ``--quick`` generates when the dataset folder does not exist: enough subjects for a test
#: set and two folds, small volumes.
QUICK_SYNTHETIC: dict[str, Any] = {"layout": "brats2019", "n_hgg": 12, "n_lgg": 12, "shape": (48, 48, 40), "seed": 0}

#: Result keys read from the bundle's ``eval/metrics.json``.
METRIC_KEYS = ("balanced_accuracy", "auc", "f1", "sensitivity", "specificity", "accuracy")


def student_teacher(student: str) -> str:
    """The teacher bundle of a student bundle: the ``teacher_bundle`` its ``train.json`` names
    (:func:`medkd3d.bundles.teacher_of`).

    Raises:
        ValueError: if ``student`` is not a student bundle.
    """
    from medkd3d.bundles import find_bundle_root, teacher_of

    teacher = teacher_of(find_bundle_root(student)) if student in STUDENTS else None
    if teacher is None:
        raise ValueError(f"unknown student bundle {student!r}; choose from {sorted(STUDENTS)}")
    return teacher


def supported_kd_modes(bundle_root: str | os.PathLike) -> tuple[str, ...]:
    """The KD modes of a student bundle: ``"none"``, ``"logit"``, and ``"logit+feature"`` when its trainer has a
    feature loss (read from ``configs/train.json``; nothing is instantiated)."""
    config = json.loads((Path(bundle_root) / "configs" / "train.json").read_text(encoding="utf-8"))
    has_features = "feature_loss" in config.get("train", {}).get("trainer", {})
    return KD_MODES if has_features else tuple(mode for mode in KD_MODES if mode != "logit+feature")


@dataclass
class StudyConfig:
    """Everything a study depends on. ``None`` keeps the bundle's own value (its ``train.json`` or profile).

    Args:
        dataset_dir: a BraTS 2019/2020 folder (discovered) or a datalist JSON (``medkd3d datalist``).
        out_dir: the study folder: results, bundle runs, teachers, caches and reports.
        students: student bundle names (:data:`STUDENTS`).
        kd_modes: KD modes (:data:`~medkd3d.ablation.grid.KD_MODES`); a mode a bundle lacks (``"logit+feature"``
            without a feature loss) is left out for that bundle.
        sizes: labelled training subjects per class, ``"all"``, or ``"N+unlabelled"`` (``N`` labelled per class,
            the other training subjects unlabelled for the KD term).
        seeds: seeds of the labelled subsets and of the bundles' ``seed`` (initialisation, augmentation).
        folds: number of patient-level stratified folds of the non-test subjects (each run is repeated per fold).
        test_fraction: fraction of each class held out once as the test set of every run.
        epochs: student training epochs.
        teacher_epochs: teacher training epochs (``None``: ``epochs``).
        spatial_size: edge of the cubic preprocessed volume ``(N, N, N)``.
        tiny: tiny networks in every bundle (:func:`medkd3d.bundles.tiny_overrides`), for ``--quick`` and tests.
        profiles: config overlays merged after ``train.json`` in every bundle (``configs/profiles/<name>.json``).
        overrides: config overrides given to every bundle run (e.g. ``{"learning_rate": 5e-4}``).
        bundle_overrides: config overrides per bundle name; a student builds its teacher as the teacher's checkpoint
            records it was trained (a teacher's ``network_def#...`` overrides are not repeated for its students).
        batch_size: training and evaluation batch size.
        split_seed: seed of the test hold-out and the folds (and the teachers' ``seed``).
        cache: the bundles' ``cache``: ``"disk"`` (preprocessed volumes stored once per bundle in ``<out>/cache``
            and shared by all runs and resumed invocations), ``"memory"`` or ``"none"``.
        num_workers: data-loading workers.
        device: training device (e.g. ``"cpu"``); ``None``: the bundles' choice (CUDA when available).
        threads: PyTorch CPU threads (``torch.set_num_threads``) while the study runs; ``None`` keeps PyTorch's
            default. Tiny networks gain nothing from several threads and, on shared cores, lose much to threads
            waiting for each other, so ``--quick`` uses 1. CPU latencies are measured with this many threads.
        latency_repeats: timed forward passes per CPU latency measurement.
        synthetic: when ``dataset_dir`` does not exist, generate a synthetic BraTS dataset there with these
            :func:`~medkd3d.data.generate_synthetic_brats` arguments (``None``: a missing folder is an error).
    """

    dataset_dir: str | os.PathLike
    out_dir: str | os.PathLike
    students: Sequence[str] = STUDENTS
    kd_modes: Sequence[str] = KD_MODES
    sizes: Sequence[int | str] = (10, "10+unlabelled", "all")
    seeds: Sequence[int] = (0, 1, 2)
    folds: int = 3
    test_fraction: float = 0.2
    epochs: int | None = None
    teacher_epochs: int | None = None
    spatial_size: int | None = None
    tiny: bool = False
    profiles: Sequence[str] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    bundle_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    batch_size: int | None = None
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

        Every student bundle with every KD mode it has, the data-limited (2 labelled subjects per class) and the
        unlabelled regime, one seed, two folds, 32^3 volumes, tiny networks, 2 student and 3 teacher epochs, one CPU
        thread: it shows that the study runs, not how good the models are (4 test subjects). ``overrides`` replace
        any of these.
        """
        settings: dict[str, Any] = {
            "students": STUDENTS,
            "kd_modes": KD_MODES,
            "sizes": (2, "2+unlabelled"),
            "seeds": (0,),
            "folds": 2,
            "epochs": 2,
            "teacher_epochs": 3,
            "spatial_size": 32,
            "tiny": True,
            "batch_size": 2,
            "latency_repeats": 3,
            "threads": 1,
            "device": "cpu",
            "synthetic": QUICK_SYNTHETIC,
        }
        settings.update(overrides)
        return cls(dataset_dir=dataset_dir, out_dir=out_dir, **settings)

    def grid(self) -> StudyGrid:
        """The study's runs; KD modes a student bundle lacks are left out for it.

        Raises:
            ValueError: for an unknown student, an invalid axis, or a student left without any KD mode.
        """
        from medkd3d.bundles import find_bundle_root

        unsupported = set()
        for student in self.students:
            student_teacher(student)  # validates the name
            modes = supported_kd_modes(find_bundle_root(student))
            unsupported |= {(student, mode) for mode in self.kd_modes if mode not in modes}
            if all((student, mode) in unsupported for mode in self.kd_modes):
                raise ValueError(f"{student} has none of the KD modes {list(self.kd_modes)}; it supports {list(modes)}")
        return StudyGrid(
            tuple(self.students), tuple(self.kd_modes), tuple(self.sizes), tuple(self.seeds), self.folds,
            unsupported=frozenset(unsupported),
        )  # fmt: skip

    def run_settings(self) -> dict[str, Any]:
        """The settings every run's result depends on (recorded in ``study.json``; the grid axes are not)."""
        keys = (
            "folds test_fraction epochs teacher_epochs spatial_size tiny profiles overrides bundle_overrides "
            "batch_size split_seed"
        ).split()
        settings = {key: getattr(self, key) for key in keys}
        settings["teacher_epochs"] = self.teacher_epochs or self.epochs
        settings["profiles"] = list(self.profiles)
        settings["overrides"] = dict(self.overrides)
        settings["bundle_overrides"] = {k: dict(v) for k, v in self.bundle_overrides.items()}
        return settings


@dataclass
class StudyOutcome:
    """What :func:`run_study` did and wrote.

    Attributes:
        trained: keys of the runs completed by this call (finished runs found on disk are skipped).
        skipped: keys of the runs that were already finished.
        teachers_trained: ``"<teacher bundle>/fold<k>"`` of the teachers this call trained.
        reports: the report files by name (``"results_csv"``, ``"summary_md"``, plots).
        rows: the result of every finished run of the grid (coordinates, test metrics, cost, ``teacher``).
        teacher_rows: one result per (teacher bundle, fold): ``model`` (the bundle), ``fold`` and test metrics.
        baseline_rows: the trivial baseline on the test subjects.
        missing: keys of the grid's runs that have no result yet (not selected, failed or still to do elsewhere).
        failed: ``"<key>: <error>"`` of the runs that raised (with ``keep_going``; otherwise the error propagates).
    """

    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    teachers_trained: list[str] = field(default_factory=list)
    reports: dict[str, Path] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    teacher_rows: list[dict[str, Any]] = field(default_factory=list)
    baseline_rows: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------- data


def _load_datalist(config: StudyConfig, validate: bool) -> dict[str, Any]:
    """The study's datalist; a missing folder is synthesised when ``config.synthetic`` says so."""
    from medkd3d.bundles import ensure_dataset
    from medkd3d.data import assert_data_valid, read_datalist

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
    return read_datalist(source)


def _subjects_fingerprint(records: Sequence[Mapping[str, Any]]) -> str:
    """Hash of the (subject, label) pairs: the same dataset, wherever it is stored."""
    pairs = sorted({(str(r["subject"]), r.get("label")) for r in records})
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def training_subset(records: Sequence[Mapping[str, Any]], size: int | str, seed: int) -> list[dict[str, Any]]:
    """The training items a student bundle sees for a data ``size`` (see :func:`labelled_per_class`).

    The same function the student bundles' ``train_records`` call
    (:func:`medkd3d.bundles.training.training_records`), so a study counts exactly what the bundle trains on.

    Args:
        records: the training side of a fold.
        size: labelled subjects per class, ``"all"``, or ``"N+unlabelled"``.
        seed: seed of the draw.

    Returns:
        The labelled records, then (for ``"N+unlabelled"``) the other subjects with ``label = -1``.
    """
    from medkd3d.bundles.training import training_records

    per_class, unlabelled = labelled_per_class(size)
    return training_records(records, per_class, seed, unlabelled)


# ------------------------------------------------------------------------------------------------- bundle runs


def _profile(
    bundle_root: Path, configs: Sequence[str], overrides: Mapping[str, Any], record: Mapping[str, Any], repeats: int
) -> dict:
    """Parameters, GFLOPs and median CPU latency of one subject-level prediction as the bundle evaluates it
    (``configs`` merged with ``overrides``: its ``validate#preprocessing`` on a real subject, its
    ``validate#inferer``; untrained weights: the cost does not depend on them)."""
    import torch
    from monai.bundle import ConfigParser
    from torch import nn

    from medkd3d.networks.profile import count_gflops, count_parameters, measure_latency

    class SubjectPredictor(nn.Module):
        """``inferer(x, network)`` as a module: what one subject-level prediction of the bundle runs."""

        def __init__(self, network: nn.Module, inferer: Any) -> None:
            super().__init__()
            self.network, self.inferer = network, inferer

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inferer(x, self.network)

    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / name) for name in configs])
    parser.read_meta(str(bundle_root / "configs" / "metadata.json"))
    parser.update({"bundle_root": str(bundle_root), **overrides, "device": "$torch.device('cpu')"})
    network = parser.get_parsed_content("network_def").cpu()
    image = parser.get_parsed_content("validate#preprocessing")(dict(record))["image"]
    shape = tuple(image.shape)
    predictor = SubjectPredictor(network, parser.get_parsed_content("validate#inferer"))
    # The random example inputs must not shift the seeded stream of the run that follows.
    with torch.random.fork_rng(devices=[]):
        latency = measure_latency(predictor, shape, repeats=repeats, device="cpu")
        gflops = count_gflops(predictor, shape, device="cpu")
    return {
        "parameters": count_parameters(network),
        "gflops": gflops,
        "cpu_latency_ms": latency["median_ms"],
        "profile_input": [1, *shape],
        "cpu_threads": torch.get_num_threads(),
    }


def _read_evaluation(eval_dir: Path) -> dict[str, Any]:
    """Test metrics of a bundle run from ``metrics.json`` and ``evaluation_predictions.csv``."""
    import csv

    metrics = read_json(eval_dir / "metrics.json", "evaluation metrics")
    with (eval_dir / "evaluation_predictions.csv").open(newline="", encoding="utf-8") as f:
        predicted = {row["predicted"] for row in csv.DictReader(f)}
    return {
        **{key: metrics.get(key) for key in METRIC_KEYS},
        "test_subjects": metrics.get("num_samples"),
        # the decision threshold evaluate.json chose on the validation subjects (behind the balanced accuracy)
        "threshold": metrics.get("threshold"),
        "predicted_classes": len(predicted),
        # the class a run predicts for every test subject (None when it predicts several): flagged by the report
        "one_class": next(iter(predicted)) if len(predicted) == 1 else None,
        "predictions": str(eval_dir / "evaluation_predictions.csv"),
    }


class _Study:
    """The state of one :func:`run_study` call: data, split, teachers, bundle runs."""

    def __init__(self, config: StudyConfig) -> None:
        from medkd3d.bundles import find_bundle_root
        from medkd3d.data import write_datalist
        from medkd3d.data.splits import load_splits, make_splits, split_records, write_splits

        self.config = config
        self.out = Path(config.out_dir).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.store = ResultStore(self.out)
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
        self.datalist_file = write_datalist(datalist, self.out / "datalist.json")
        self.splits_file = self.out / "splits.json"
        if not self.splits_file.is_file():  # bound by the settings above: the same split on every resume
            splits = make_splits(
                records, num_folds=config.folds, test_fraction=config.test_fraction, seed=config.split_seed
            )
            write_splits(splits, self.splits_file)
        splits = load_splits(self.splits_file)
        self.sides = [split_records(records, splits, fold) for fold in range(config.folds)]
        if not self.sides[0]["test"]:
            raise ValueError(
                f"the study's test split is empty; use a test_fraction above 0 (got {config.test_fraction})"
            )
        bundles = {*config.students, *(student_teacher(s) for s in config.students)}
        self.roots = {name: Path(find_bundle_root(name)) for name in bundles}
        self.teachers_trained: list[str] = []

    # --------------------------------------------------------------------------------------------- overrides

    def _bundle_overrides(self, bundle: str) -> dict[str, Any]:
        """Tiny networks (when asked) and the user's overrides of one bundle."""
        from medkd3d.bundles import tiny_overrides

        config = self.config
        overrides: dict[str, Any] = {}
        if config.tiny:
            overrides.update(tiny_overrides(self.roots[bundle], config.spatial_size or 32, config.profiles))
        overrides.update(config.bundle_overrides.get(bundle, {}))
        return overrides

    def _overrides(self, bundle: str, fold: int, seed: int, run_dir: Path, epochs: int | None) -> dict[str, Any]:
        """The config overrides of one bundle run: data, split, budget, output folders."""
        config = self.config
        overrides: dict[str, Any] = {
            "datalist": str(self.datalist_file),
            "dataset_dir": str(self.out),  # not read: the datalist holds absolute paths
            "validate_data": False,  # validated once by the study
            "class_names": self.class_names,
            "splits_file": str(self.splits_file),
            "fold": fold,
            "num_folds": config.folds,
            "seed": seed,
            "num_workers": config.num_workers,
            "cache": config.cache,
            "cache_dir": str(self.out / "cache" / bundle) if config.cache == "disk" else None,
            "ckpt_dir": str(run_dir / "models"),
            "output_dir": str(run_dir / "eval"),
            **({"epochs": epochs} if epochs else {}),
            **({"spatial_size": [config.spatial_size] * 3} if config.spatial_size else {}),
            **({"batch_size": config.batch_size} if config.batch_size else {}),
            **({"device": f"$torch.device({config.device!r})"} if config.device else {}),
            **config.overrides,
            **self._bundle_overrides(bundle),
        }
        return overrides

    def _configs(self, *names: str) -> list[str]:
        return ["train.json", *(f"profiles/{p}.json" for p in self.config.profiles), *names]

    def _train_and_evaluate(self, bundle: str, run_dir: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Train one bundle run, evaluate the checkpoint it keeps on the test split, store the result.

        A run whose ``result.json`` exists is not redone.
        """
        from medkd3d.bundles import run_bundle_config

        result_file = run_dir / "result.json"
        if result_file.is_file():
            return read_json(result_file, "bundle run result")
        root = self.roots[bundle]
        start = time.perf_counter()
        run_bundle_config(root, self._configs(), **overrides)
        train_time = time.perf_counter() - start
        run_bundle_config(
            root, self._configs("evaluate.json"), workflow_type="infer", evaluate_split="test", **overrides
        )
        result = {**_read_evaluation(run_dir / "eval"), **self._cost(bundle, overrides), "train_time_s": train_time}
        write_json_atomic(result_file, result)
        return result

    def _cost(self, bundle: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """The bundle's cost, measured once per study (``<out>/profiles/<bundle>.json``)."""
        path = self.out / "profiles" / f"{bundle}.json"
        if not path.is_file():
            record = self.sides[0]["test"][0]
            profile = _profile(self.roots[bundle], self._configs(), overrides, record, self.config.latency_repeats)
            write_json_atomic(path, profile)
        profile = read_json(path, "model profile")
        return {key: profile[key] for key in ("parameters", "gflops", "cpu_latency_ms")}

    # ------------------------------------------------------------------------------------------------ teachers

    def teacher_dir(self, teacher: str, fold: int) -> Path:
        return self.out / "teachers" / teacher / f"fold{fold}"

    def teacher(self, teacher: str, fold: int) -> dict[str, Any]:
        """Train (or find) the teacher bundle of ``fold`` on the fold's whole training side; its test result."""
        run_dir = self.teacher_dir(teacher, fold)
        if not (run_dir / "result.json").is_file():
            logger.info("Training the %s teacher of fold %d.", teacher, fold)
            self.teachers_trained.append(f"{teacher}/fold{fold}")
        epochs = self.config.teacher_epochs or self.config.epochs
        overrides = self._overrides(teacher, fold, self.config.split_seed, run_dir, epochs)
        result = self._train_and_evaluate(teacher, run_dir, overrides)
        return {"fold": fold, "model": teacher, **result, "train_subjects": len(self.sides[fold]["train"])}

    def teacher_rows(self) -> list[dict[str, Any]]:
        """The stored teacher results, one per (teacher bundle, fold) that has one."""
        rows = []
        for teacher in dict.fromkeys(student_teacher(s) for s in self.config.students):
            for fold in range(self.config.folds):
                path = self.teacher_dir(teacher, fold) / "result.json"
                if path.is_file():
                    result = read_json(path, "teacher result")
                    rows.append(
                        {"fold": fold, "model": teacher, **result, "train_subjects": len(self.sides[fold]["train"])}
                    )
        return rows

    def baseline_rows(self) -> list[dict[str, Any]]:
        """The trivial baseline (:func:`medkd3d.engines.evaluate_trivial_baseline`) on the test subjects, fitted on
        every non-test subject (the same for every fold: it has no model selection), computed once."""
        path = self.out / "baseline.json"
        if not path.is_file():
            from medkd3d.engines import evaluate_trivial_baseline

            metrics = evaluate_trivial_baseline(self.sides[0], self.class_names, fit_on=("train", "val"))
            row = {
                "fold": "all",
                **{k: metrics.get(k) for k in METRIC_KEYS},
                "test_subjects": metrics.get("num_samples"),
            }
            write_json_atomic(path, row)
        return [read_json(path, "trivial baseline")]

    # ------------------------------------------------------------------------------------------------ students

    def run(self, spec: RunSpec) -> dict[str, Any]:
        """Train and evaluate one run through its student bundle; returns its result row (without coordinates)."""
        per_class, unlabelled = labelled_per_class(spec.size)
        if spec.kd == "none":
            unlabelled = False  # cross-entropy has no use for unlabelled subjects: the run of N is shared
        effective = per_class if per_class is not None else "all"
        name = f"{spec.student}_{spec.kd}_{effective}{'+unlabelled' if unlabelled else ''}_s{spec.seed}_f{spec.fold}"
        run_dir = self.out / "bundle_runs" / name
        teacher = student_teacher(spec.student)
        overrides = self._overrides(spec.student, spec.fold, spec.seed, run_dir, self.config.epochs)
        overrides.update({"kd_mode": spec.kd, "train_per_class": per_class, "unlabelled_train": unlabelled})
        if spec.kd != "none":
            self.teacher(teacher, spec.fold)
            # the student builds the teacher as this checkpoint records it was trained (tiny networks included)
            overrides["teacher_ckpt"] = str(self.teacher_dir(teacher, spec.fold) / "models" / "model.pt")
        result = self._train_and_evaluate(spec.student, run_dir, overrides)
        items = training_subset(self.sides[spec.fold]["train"], per_class or "all", spec.seed)
        return {
            **result,
            "train_subjects": len(items),
            "unlabelled_subjects": len(self.sides[spec.fold]["train"]) - len(items) if unlabelled else 0,
            "teacher": teacher,
            "bundle_run": name,
        }


def run_study(
    config: StudyConfig,
    progress: bool = True,
    select: Callable[[RunSpec], bool] | None = None,
    report: bool = True,
    keep_going: bool = False,
) -> StudyOutcome:
    """Run (or resume) a study and write its reports.

    Runs whose result file exists are skipped; each finished run is stored at once (atomically), so an
    interrupted call loses at most the run in flight. After the grid, ``results.csv``, ``summary.md`` and the
    plots are (re)written from every finished run of the grid (:func:`medkd3d.ablation.report.write_report`).

    Several processes may share one study folder when each trains its own runs (``select``) and the study files
    exist: prepare them first with :func:`train_teachers` (which also trains the teachers, unless another process
    does), then start processes whose ``select`` picks disjoint (student, seed) or (student, seed, fold) groups - a
    no-KD run of ``"N+unlabelled"`` is the no-KD run of ``N``, so the sizes of one (student, seed, fold) must stay
    in one process - and never a KD run whose teacher has not finished (it would be trained by each process that
    needs it), with ``report=False``; a last call with ``select=lambda spec: False`` writes the report of
    whatever finished.

    Args:
        config: the study.
        progress: show a progress bar over the grid.
        select: train only the pending runs for which it returns true (``None``: all). It is asked right before
            each pending run, in grid order, so it may wait (e.g. for a teacher that another process trains). The
            rows, the report and :attr:`StudyOutcome.missing` still cover the whole grid.
        report: write the study folder's report files (``False`` for the worker processes of a parallel study).
        keep_going: log a run that raises (in :attr:`StudyOutcome.failed`) and go on with the next one, so that
            one failing cell of a time-boxed study does not cost the others; the failed run stays missing.

    Returns:
        What was trained and skipped, the rows of every finished run, the runs still missing, and the report files.

    Raises:
        FileNotFoundError: if the dataset does not exist (and ``config.synthetic`` is ``None``).
        ValueError: for an invalid grid or settings that differ from those of the study already in ``out_dir``.
        medkd3d.data.DataValidationError: if the dataset has problems (checked on the first start).
    """
    with _torch_threads(config.threads):
        return _run_study(config, progress, select, report, keep_going)


def train_teachers(config: StudyConfig, folds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Prepare a study folder and train the teachers its students need, without any student run.

    Writes the study files (``study.json``, ``datalist.json``, ``splits.json``; the dataset is synthesised when
    ``config.synthetic`` says so) and the trivial baseline, then trains (or finds) the teacher bundle of every
    student of ``config`` on each fold of ``folds``. Run it once before parallel :func:`run_study` processes, so
    none of them writes these shared files or trains a teacher another one also needs.

    Args:
        config: the study.
        folds: the folds whose teachers to train (``None``: all; ``()``: only prepare the study files).

    Returns:
        The test result of each teacher trained or found, with ``model`` and ``fold``.

    Raises:
        ValueError: for a fold outside the study, or as :func:`run_study`.
    """
    folds = range(config.folds) if folds is None else folds
    outside = [fold for fold in folds if not 0 <= fold < config.folds]
    if outside:
        raise ValueError(f"folds {outside} are outside the study's {config.folds} folds")
    with _torch_threads(config.threads):
        study = _Study(config)
        study.baseline_rows()
        rows = [
            study.teacher(teacher, fold)
            for fold in folds
            for teacher in dict.fromkeys(student_teacher(s) for s in config.students)
        ]
        logger.info("Teachers of folds %s ready in %s.", list(folds), study.out)
        return rows


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


def _run_study(
    config: StudyConfig,
    progress: bool,
    select: Callable[[RunSpec], bool] | None = None,
    report: bool = True,
    keep_going: bool = False,
) -> StudyOutcome:
    from monai.utils import set_determinism
    from tqdm.auto import tqdm

    from medkd3d.ablation.report import write_report

    study = _Study(config)
    runs = study.grid.runs()
    outcome = StudyOutcome(skipped=[spec.key for spec in runs if study.store.is_done(spec)])
    pending = [spec for spec in runs if not study.store.is_done(spec)]
    logger.info(
        "Study %s: %d runs, %d already finished, %d to do%s.",
        study.out,
        len(runs),
        len(outcome.skipped),
        len(pending),
        "" if select is None else " (those selected)",
    )
    try:
        with tqdm(total=len(pending), desc="ablation", unit="run", disable=not progress) as bar:
            for spec in pending:
                bar.set_postfix_str(spec.key)
                if select is not None and not select(spec):  # asked now: the selector may wait for a teacher
                    bar.update()
                    continue
                try:
                    result = study.run(spec)
                except Exception as error:  # keep_going: whatever one run raises is logged, not fatal
                    if not keep_going:
                        raise
                    logger.exception("Run %s failed; going on with the next run.", spec.key)
                    outcome.failed.append(f"{spec.key}: {type(error).__name__}: {error}")
                    bar.update()
                    continue
                study.store.write(spec, result)
                outcome.trained.append(spec.key)
                logger.info(
                    "Run %s: test balanced accuracy %.3f, AUC %.3f.",
                    spec.key,
                    result["balanced_accuracy"],
                    result["auc"],
                )
                bar.update()
    finally:
        set_determinism(seed=None)
        outcome.teachers_trained = study.teachers_trained
    settings = {"dataset": str(config.dataset_dir), **config.run_settings()}
    outcome.rows = study.store.collect(study.grid)
    outcome.teacher_rows = study.teacher_rows()
    outcome.baseline_rows = study.baseline_rows()
    outcome.missing = [spec.key for spec in study.store.pending(study.grid)]
    if report:
        outcome.reports = write_report(
            outcome.rows, study.out, outcome.teacher_rows, settings, baseline_rows=outcome.baseline_rows
        )
    return outcome


def override(config: StudyConfig, **changes: Any) -> StudyConfig:
    """``config`` with the non-``None`` ``changes`` applied (command-line flags left out keep the preset)."""
    return replace(config, **{key: value for key, value in changes.items() if value is not None})
