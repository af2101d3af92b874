"""KD gain, measured: a distillation study on synthetic BraTS through the bundles, with test-set statistics.

One command runs a study with :func:`medkd3d.ablation.run_study` - every teacher and student is its bundle's
``train.json`` run with overrides and evaluated by its ``evaluate.json`` on the held-out test subjects:

- each teacher bundle once per fold, on all the fold's labelled training subjects;
- each student bundle without KD (``kd_mode=none``) and with each KD mode its bundle has, for >= 3 seeds x folds,
  in three regimes: ``all`` labelled training subjects; data-limited, ``N`` labelled subjects per class
  (``train_per_class``); and unlabelled, the same ``N`` per class plus every other training subject without its
  grade, which only the KD term (the teacher's soft targets) uses (``unlabelled_train``).

It writes ``<results-dir>/kd_synthetic.md`` and ``.csv``: test-set balanced accuracy and AUC per cell with 95%
bootstrap CIs over the (seed, fold) runs, the teachers and the trivial baseline on the same test subjects (with a
warning for a teacher whose mean AUC is below the baseline's), retention against each run's own teacher (AUC ratio
and balanced-accuracy margin over chance), the paired KD gain (same student, regime, seed and fold with and without
KD) with its CI, runs that predict one class, the wall time and the machine.

Run (the full study is sized for a GPU; it resumes from ``--out`` when interrupted)::

    python benchmarks/bench_kd.py                      # full study -> benchmarks/results/kd_synthetic.md
    python benchmarks/bench_kd.py --quick              # tiny smoke version, a few minutes on 2 CPU cores

``--quick`` writes ``kd_synthetic_quick.md``/``.csv`` (tiny networks, 2 epochs: it shows the benchmark runs, not
how well distillation works).

A parallel study (``benchmarks/run_kd_gpu.sh`` runs one on a single GPU) splits the same command into stages that
share one ``--out`` folder: ``--stage setup`` (dataset, split, study files, trivial baseline), ``--stage teachers``
(the teachers of ``--students`` on ``--run-folds``), then several ``--stage students`` processes, each with its own
``--students``/``--seeds``/``--run-folds`` group, and last ``--stage report``, which trains nothing and writes the
report of whatever finished, listing every planned run that did not.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd3d.ablation import StudyConfig, run_study, train_teachers
from medkd3d.ablation.grid import KD_MODES, ResultStore, RunSpec, parse_size, size_sort_key
from medkd3d.ablation.runner import STUDENTS, student_teacher
from medkd3d.ablation.stats import bootstrap_ci, kd_gains
from medkd3d.data import describe_synthetic
from medkd3d.engines.honesty import FLAG_BELOW_BASELINE, auc_ratio, margin_retention
from medkd3d.export.cli import parse_override
from medkd3d.utils import atomic_path, usable_cpus

#: The full study's synthetic dataset: 150 + 150 subjects, so a test fraction of 0.2 holds out 60 test subjects and
#: each of 2 folds trains on 120 (as ``medkd3d pipeline --quick``); 64 x 64 x 48 voxels are enough for volumes of
#: 32^3 or 48^3 and keep synthesis and loading quick.
FULL_SYNTHETIC: dict[str, Any] = {"layout": "brats2019", "n_hgg": 150, "n_lgg": 150, "shape": (64, 64, 48), "seed": 0}
#: The smoke version's dataset.
QUICK_SYNTHETIC: dict[str, Any] = {"layout": "brats2019", "n_hgg": 10, "n_lgg": 10, "shape": (48, 48, 40), "seed": 0}

METRICS = ("balanced_accuracy", "auc")
#: The stages of one study: ``all`` runs everything and reports; the others split it for parallel processes.
STAGES = ("all", "setup", "teachers", "students", "report")
_LABELS = {"balanced_accuracy": "balanced accuracy", "auc": "AUC"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny smoke version (tiny networks, 2 epochs)")
    parser.add_argument("--out", type=Path, help="study folder (default: runs/bench_kd, --quick: runs/bench_kd_quick)")
    parser.add_argument("--results-dir", type=Path, default=Path(__file__).parent / "results", help="where to write")
    parser.add_argument("--dataset-dir", type=Path, help="dataset (default: OUT/data, synthesised when missing)")
    parser.add_argument("--students", nargs="+", choices=STUDENTS, help="student bundles (default: all)")
    parser.add_argument("--labelled-per-class", type=int, help="N of the data-limited regimes (default 8, quick 2)")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: 0 1 2 (quick: 0)")
    parser.add_argument("--folds", type=int, help="default: 3 (quick: 2)")
    parser.add_argument("--test-fraction", type=float, help="default: 0.2")
    parser.add_argument("--epochs", type=int, help="student epochs (default: the bundles', quick: 2)")
    parser.add_argument("--teacher-epochs", type=int, help="teacher epochs (default: --epochs, quick: 3)")
    parser.add_argument("--spatial-size", type=int, help="volume edge (default: the --profile's, else 64; quick: 32)")
    parser.add_argument("--profile", action="append", dest="profiles", help="bundle config overlay (repeatable)")
    parser.add_argument(
        "--override",
        action="append",
        type=parse_override,
        dest="overrides",
        metavar="KEY=VALUE",
        help="config override for every bundle run, JSON value (repeatable), e.g. --override amp=false",
    )
    parser.add_argument("--device", help="training device (default: the bundles' choice; quick: cpu)")
    parser.add_argument("--threads", type=int, help="PyTorch CPU threads (default: PyTorch's; quick: 1)")
    parser.add_argument(
        "--stage",
        choices=STAGES,
        default="all",
        help="setup: study files and baseline; teachers: the teachers of --students on --run-folds; students: the "
        "runs of --students x --seeds on --run-folds, no report; report: train nothing, report what finished "
        "(default: all, then report)",
    )
    parser.add_argument(
        "--run-folds", type=int, nargs="+", help="folds this invocation trains (default: all --folds of the study)"
    )
    parser.add_argument(
        "--since", type=float, help="Unix time the study started (wall time of a staged study; default: now)"
    )
    parser.add_argument("--command", help="the command the report names (default: this one; for a staged study)")
    parser.add_argument(
        "--teacher-wait-until",
        type=float,
        help="--stage students: Unix time until which a KD run waits for its teacher (default: it does not wait)",
    )
    return parser.parse_args(argv)


def study_config(args: argparse.Namespace) -> StudyConfig:
    """The study of ``args``: the full benchmark or, with ``--quick``, its tiny smoke version."""
    quick = args.quick
    out = args.out or Path("runs/bench_kd_quick" if quick else "runs/bench_kd")
    n = args.labelled_per_class or (2 if quick else 8)
    settings: dict[str, Any] = {
        "students": tuple(args.students or STUDENTS),
        "kd_modes": KD_MODES,
        "sizes": (n, f"{n}+unlabelled") if quick else (n, f"{n}+unlabelled", "all"),
        "seeds": tuple(args.seeds or ((0,) if quick else (0, 1, 2))),
        "folds": args.folds or (2 if quick else 3),
        "test_fraction": args.test_fraction or 0.2,
        "epochs": args.epochs or (2 if quick else None),
        "teacher_epochs": args.teacher_epochs or (3 if quick else None),
        # a profile (e.g. quick.json) sets its own volume size: 64 only when nothing else says
        "spatial_size": args.spatial_size or (32 if quick else None if args.profiles else 64),
        "tiny": quick,
        "profiles": tuple(args.profiles or ()),
        "overrides": dict(args.overrides or ()),
        "batch_size": 2 if quick else None,
        "device": args.device or ("cpu" if quick else None),
        "threads": args.threads or (1 if quick else None),
        "latency_repeats": 3 if quick else 10,
        # synthesised in parallel threads: the files depend only on the seed, not on the number of workers
        "synthetic": {**(QUICK_SYNTHETIC if quick else FULL_SYNTHETIC), "num_workers": min(8, usable_cpus())},
    }
    return StudyConfig(args.dataset_dir or out / "data" / "synthetic_brats2019", out, **settings)


# ----------------------------------------------------------------------------------------------------- statistics


def _mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap CI of the finite values (NaN without any; NaN CI with one)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return math.nan, math.nan, math.nan
    low, high = bootstrap_ci(finite)
    return float(np.mean(finite)), low, high


def _fmt(mean: float, low: float, high: float) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.3f}" if math.isnan(low) else f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def retention_of_runs(rows: Sequence[Mapping[str, Any]], teachers: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Each student run with ``auc_ratio`` and ``margin_retention`` against its own teacher bundle on its fold."""
    by_teacher = {(t["model"], t["fold"]): t for t in teachers}
    paired = []
    for row in rows:
        teacher = by_teacher.get((row["teacher"], row["fold"]))
        if teacher is not None:
            paired.append(
                {
                    **row,
                    "auc_ratio": auc_ratio(row.get("auc"), teacher.get("auc")),
                    "margin_retention": margin_retention(
                        row.get("balanced_accuracy"), teacher.get("balanced_accuracy")
                    ),
                }
            )
    return paired


def cell_rows(
    rows: Sequence[Mapping[str, Any]],
    teachers: Sequence[Mapping[str, Any]],
    baseline: Sequence[Mapping[str, Any]],
    planned: Mapping[tuple[str, Any, str], int] | None = None,
) -> list[dict[str, Any]]:
    """One CSV row per model cell: teachers, the trivial baseline, then every (student, regime, KD mode).

    Args:
        rows: the finished student runs.
        teachers: the finished teacher runs.
        baseline: the trivial baseline's rows.
        planned: runs the study planned per ``(student, size, kd)`` cell; every planned cell gets a row (with
            ``runs`` 0 and NaN metrics when none of its runs finished) and a ``planned_runs`` column.

    Returns:
        The table's rows.
    """
    table: list[dict[str, Any]] = []
    for teacher in dict.fromkeys(t["model"] for t in teachers):
        members = [t for t in teachers if t["model"] == teacher]
        table.append(_cell("teacher", teacher, "-", "all", members))
    if baseline:
        table.append(_cell("baseline", "intensity percentiles + logistic regression", "-", "all", baseline))
    retained = retention_of_runs(rows, teachers)
    gains = {
        metric: {(g.student, g.kd, g.size): g for g in kd_gains(rows, metric)} for metric in METRICS
    }  # paired with the no-KD run of the same student, regime, seed and fold
    cells = dict.fromkeys([*(planned or {}), *((r["student"], r["size"], r["kd"]) for r in rows)])
    for student, size, kd in sorted(
        cells,
        key=lambda c: (STUDENTS.index(c[0]) if c[0] in STUDENTS else 99, size_sort_key(c[1]), KD_MODES.index(c[2])),
    ):
        members = [r for r in rows if (r["student"], r["size"], r["kd"]) == (student, size, kd)]
        row = _cell("student", student, kd, size, members)
        if planned is not None:
            row["planned_runs"] = planned.get((student, size, kd), 0)
        mine = [r for r in retained if (r["student"], r["size"], r["kd"]) == (student, size, kd)]
        for key in ("auc_ratio", "margin_retention"):
            mean, low, high = _mean_ci([r[key] for r in mine])
            row.update({key: mean, f"{key}_ci_low": low, f"{key}_ci_high": high})
        for metric in METRICS:
            gain = gains[metric].get((student, kd, size))
            row.update(
                {
                    f"kd_gain_{metric}": gain.gain if gain else math.nan,
                    f"kd_gain_{metric}_ci_low": gain.ci_low if gain else math.nan,
                    f"kd_gain_{metric}_ci_high": gain.ci_high if gain else math.nan,
                    f"kd_gain_{metric}_pairs": gain.num_pairs if gain else 0,
                }
            )
        table.append(row)
    return table


def _cell(kind: str, model: str, kd: str, size: Any, members: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": kind, "model": model, "kd": kd, "regime": _regime(size), "size": size}
    for metric in METRICS:
        mean, low, high = _mean_ci([m.get(metric) for m in members])
        row.update({metric: mean, f"{metric}_ci_low": low, f"{metric}_ci_high": high})
    row["runs"] = len(members)
    row["test_subjects"] = members[0].get("test_subjects") if members else None
    row["one_class_runs"] = sum(m.get("predicted_classes") == 1 for m in members)
    row["train_time_s"] = float(
        np.mean([m["train_time_s"] for m in members if m.get("train_time_s") is not None] or [math.nan])
    )
    row["parameters"] = members[0].get("parameters") if members else None
    return row


def _regime(size: Any) -> str:
    size = parse_size(size)
    if size == "all":
        return "all labelled"
    return f"{size.split('+')[0]} labelled/class + unlabelled" if isinstance(size, str) else f"{size} labelled/class"


# ------------------------------------------------------------------------------------------------------- writing


def write_csv(table: Sequence[Mapping[str, Any]], path: Path) -> Path:
    columns = list(dict.fromkeys(key for row in table for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def training_seconds(rows: Sequence[Mapping[str, Any]], teacher_rows: Sequence[Mapping[str, Any]]) -> float:
    """The finished trainings' own times summed: every teacher, and every student bundle run once, although the
    no-KD run of the data-limited regime also stands for its unlabelled regime (one ``bundle_run``, two rows)."""
    students = {r.get("bundle_run", id(r)): r.get("train_time_s") for r in rows}
    times = [*students.values(), *(t.get("train_time_s") for t in teacher_rows)]
    return float(sum(t for t in times if t is not None and math.isfinite(t)))


def format_markdown(
    table: Sequence[Mapping[str, Any]],
    config: StudyConfig,
    wall_s: float | None,
    machine: str,
    command: str,
    missing: Sequence[str] = (),
    missing_teachers: Sequence[str] = (),
    training_s: float | None = None,
) -> str:
    """The report: teachers and baseline, the student cells, the runs that did not finish, the verdicts.

    Args:
        table: :func:`cell_rows`.
        config: the study.
        wall_s: the study's wall time in seconds; ``None`` when unknown (a report stage without ``--since``).
        machine: :func:`machine_info`.
        command: the command that wrote the report.
        missing: keys of the planned student runs without a result (time-boxed out or failed).
        missing_teachers: ``"<teacher>/fold<k>"`` of the teachers without a result.
        training_s: the finished trainings' own times summed (:func:`training_seconds`), if known.

    Returns:
        The Markdown text.
    """
    students = [r for r in table if r["kind"] == "student"]
    n_test = next((r["test_subjects"] for r in table if r.get("test_subjects")), "n/a")
    if config.overrides.get("model_selection") == "best":
        weights = "each model is its best validation epoch (`model_selection=best`, on the fold's validation subjects)"
    else:
        weights = "each model keeps its final weights (the bundles' `model_selection`; `best` would pick an epoch)"
    lines = [
        "# KD gain on synthetic BraTS" + (" (smoke version: numbers mean nothing)" if config.tiny else ""),
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine}  ",
        f"Data: {dataset_description(config.dataset_dir)}  ",
        (
            f"Wall time: {wall_s / 60:.1f} min (study folder `{config.out_dir}`; a resumed run counts only its own time)  "
            if wall_s is not None
            else f"Wall time: not measured (study folder `{config.out_dir}`; this report stage trained nothing: pass "
            "`--since` with the study's start time)  "
        ),
        *(
            [f"Training time: {training_s / 60:.1f} min, the finished trainings' own times summed  "]
            if training_s
            else []
        ),
        f"Runs: {sum(r['runs'] for r in students)} student runs finished"
        + (f", **{len(missing)} planned runs missing** (see the end)" if missing else ", none missing")
        + (f"; **teachers missing: {', '.join(missing_teachers)}**" if missing_teachers else ""),
        "",
        f"Every model is its bundle's `train.json` run with overrides (medkd3d.ablation) and evaluated by its "
        f"`evaluate.json` on the same **{n_test} held-out test subjects** (test fraction {config.test_fraction}); "
        f"{weights}, and the decision threshold behind the balanced accuracy is chosen on the fold's validation "
        f"subjects (Youden's J; AUC does not depend on it). Seeds {list(config.seeds)} x {config.folds} folds; "
        f"profiles {list(config.profiles) or 'none'}; "
        f"{f'overrides {dict(config.overrides)}; ' if config.overrides else ''}"
        f"spatial size {config.spatial_size or 'the profile default'}; epochs {config.epochs or 'bundle default'} (teachers "
        f"{config.teacher_epochs or config.epochs or 'bundle default'}). Chance: balanced accuracy 0.5, AUC 0.5. "
        "Intervals are 95% percentile bootstraps over the (seed, fold) runs; folds share subjects, so they describe "
        "this study's runs and are optimistic for new data.",
        "",
        *(
            [
                f"**Only {n_test} test subjects** (fewer than 40): every interval here is wide; do not quote these numbers.",
                "",
            ]
            if isinstance(n_test, int) and n_test < 40
            else []
        ),
        "## Teachers and trivial baseline",
        "",
        "| model | runs | balanced accuracy [95% CI] | AUC [95% CI] | one-class runs |",
        "|---|---|---|---|---|",
    ]
    for row in table:
        if row["kind"] != "student":
            lines.append(
                f"| {row['kind']}: {row['model']} | {row['runs']} | "
                f"{_fmt(row['balanced_accuracy'], row['balanced_accuracy_ci_low'], row['balanced_accuracy_ci_high'])} | "
                f"{_fmt(row['auc'], row['auc_ci_low'], row['auc_ci_high'])} | {row['one_class_runs']} |"
            )
    lines += _teachers_below_baseline(table)
    lines += [
        "",
        "## Students",
        "",
        "Retention against each run's own teacher on its fold: AUC ratio = student AUC / teacher AUC; margin = "
        "(student - 0.5) / (teacher - 0.5) of the balanced accuracy (0 for a constant classifier). KD gain = mean "
        "paired difference to the no-KD run of the same student, regime, seed and fold.",
        "",
        "| student | regime | KD | runs | balanced accuracy | AUC | AUC ratio | margin retention | KD gain bal. acc. "
        "| KD gain AUC | one-class runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in students:
        gain = {
            m: "-"
            if row["kd"] == "none"
            else _fmt(row[f"kd_gain_{m}"], row[f"kd_gain_{m}_ci_low"], row[f"kd_gain_{m}_ci_high"])
            for m in METRICS
        }
        lines.append(
            f"| {row['model']} | {row['regime']} | {row['kd']} | {_runs(row)} | "
            f"{_fmt(row['balanced_accuracy'], row['balanced_accuracy_ci_low'], row['balanced_accuracy_ci_high'])} | "
            f"{_fmt(row['auc'], row['auc_ci_low'], row['auc_ci_high'])} | "
            f"{_fmt(row['auc_ratio'], row['auc_ratio_ci_low'], row['auc_ratio_ci_high'])} | "
            f"{_fmt(row['margin_retention'], row['margin_retention_ci_low'], row['margin_retention_ci_high'])} | "
            f"{gain['balanced_accuracy']} | {gain['auc']} | {row['one_class_runs']} |"
        )
    lines += ["", "## Verdict per student (KD gain with its 95% CI above 0)", ""]
    lines += _verdicts(students)
    lines += ["", "## Missing runs", ""]
    lines += _missing(missing, missing_teachers)
    return "\n".join(lines) + "\n"


def _teachers_below_baseline(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """A warning per teacher whose mean test AUC is below the trivial baseline's: retention against such a teacher
    is easy to reach and says little about the student."""
    baseline = next((row["auc"] for row in table if row["kind"] == "baseline"), math.nan)
    lines = []
    for row in table:
        if row["kind"] == "teacher" and row["auc"] < baseline:  # False for a NaN on either side
            lines += [
                "",
                f"**{row['model']}: mean {FLAG_BELOW_BASELINE} ({baseline:.3f}), {row['auc']:.3f}.** Its students' "
                "AUC ratio and margin retention measure them against a teacher that a logistic regression on "
                "intensity percentiles beats on these test subjects.",
            ]
    return lines


def _runs(row: Mapping[str, Any]) -> str:
    """``finished/planned`` when the plan is known, else the finished runs."""
    planned = row.get("planned_runs")
    return str(row["runs"]) if planned is None or planned == row["runs"] else f"{row['runs']}/{planned}"


def _missing(missing: Sequence[str], missing_teachers: Sequence[str]) -> list[str]:
    """The report's words on the planned runs without a result: none, or each of them."""
    if not missing and not missing_teachers:
        return ["Every planned run finished."]
    lines = [
        "These planned runs have no result (stopped by the time box, failed, or not started); the cells above use "
        "the finished runs only, and a KD gain pairs only runs whose no-KD twin finished:",
        "",
    ]
    lines += [f"- teacher {name}" for name in missing_teachers]
    lines += [f"- {key}" for key in missing]
    return lines


def _verdicts(students: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per student: the KD cells whose paired gain CI lies above 0, in words."""
    lines = []
    for student in dict.fromkeys(r["model"] for r in students):
        positive = [
            f"{r['kd']} in '{r['regime']}' ({r['kd_gain_auc']:+.3f} AUC)"
            for r in students
            if r["model"] == student and r["kd"] != "none" and r["kd_gain_auc_ci_low"] > 0
        ]
        lines.append(
            f"- {student}: " + ("KD gain > 0 with the CI above 0 for " + "; ".join(positive) if positive
                                else "no KD cell has an AUC gain whose 95% CI lies above 0.")
        )  # fmt: skip
    if not lines:
        lines.append("- no student run finished.")
    return lines


def dataset_description(dataset_dir: str | os.PathLike) -> str:
    """The study's dataset, with how it was generated when synthetic (the anatomy changes the data)."""
    synthetic = describe_synthetic(dataset_dir) if Path(dataset_dir).is_dir() else None
    return f"`{dataset_dir}`" + (f", {synthetic}" if synthetic else "")


def machine_info(threads: int | None = None) -> str:
    """This machine, and the PyTorch threads of the study's runs.

    Args:
        threads: the study's ``--threads``; ``None``: PyTorch's default here. A staged study's report process trains
            nothing, so the threads it happens to have would say nothing about the runs.

    Returns:
        One line: host, architecture, CPUs, GPU, Python, torch and its threads.
    """
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, {gpu}), Python {platform.python_version()}, "
        f"torch {torch.__version__}, {threads or torch.get_num_threads()} torch threads"
    )


def planned_cells(config: StudyConfig) -> tuple[dict[tuple[str, Any, str], int], list[str]]:
    """Runs planned per ``(student, size, kd)`` cell of the study's grid, and the keys of those without a result."""
    store = ResultStore(config.out_dir)
    planned: dict[tuple[str, Any, str], int] = {}
    missing = []
    for spec in config.grid().runs():
        cell = (spec.student, spec.size, spec.kd)
        planned[cell] = planned.get(cell, 0) + 1
        if not store.is_done(spec):
            missing.append(spec.key)
    return planned, missing


def _selector(args: argparse.Namespace, config: StudyConfig) -> Callable[[RunSpec], bool]:
    """Which runs a ``students`` stage trains: those of ``--run-folds`` (the grid already has --students/--seeds).

    A KD run is trained only once its fold's teacher has finished (trained by a ``--stage teachers`` process),
    waiting for it until ``--teacher-wait-until``, so that parallel student processes never train one teacher at
    the same time; a KD run whose teacher is not there by then stays missing. The runner asks right before each
    run, so the no-KD runs train while the teachers do.
    """
    folds = None if args.run_folds is None else set(args.run_folds)
    teachers = Path(config.out_dir) / "teachers"
    deadline = args.teacher_wait_until or 0.0

    def select(spec: RunSpec) -> bool:
        if folds is not None and spec.fold not in folds:
            return False
        if spec.kd == "none":
            return True
        result = teachers / student_teacher(spec.student) / f"fold{spec.fold}" / "result.json"
        while not result.is_file() and time.time() < deadline:
            time.sleep(1.0)
        if not result.is_file():
            print(f"skipping {spec.key}: the teacher of fold {spec.fold} has not finished", flush=True)
            return False
        return True

    return select


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = study_config(args)
    start = time.perf_counter() if args.since is None else time.perf_counter() - (time.time() - args.since)
    if args.stage in ("setup", "teachers"):
        teachers = train_teachers(config, () if args.stage == "setup" else args.run_folds)
        print(f"stage {args.stage} done: {len(teachers)} teachers ready in {config.out_dir}")
        return 0
    if args.run_folds is not None and args.stage == "all":
        raise SystemExit("--run-folds needs --stage students or teachers (a report covers every fold)")
    select = {"students": _selector(args, config), "report": lambda spec: False}.get(args.stage)
    worker = args.stage == "students"  # one of several parallel processes: no report, a failed run is not fatal
    progress = args.stage == "all"
    outcome = run_study(config, progress=progress, select=select, report=not worker, keep_going=worker)
    if worker:
        print(f"stage students done: {len(outcome.trained)} runs trained, {len(outcome.skipped)} found finished")
        for failure in outcome.failed:
            print(f"FAILED {failure}")
        return 1 if outcome.failed else 0
    # a report stage trains nothing: without --since its own seconds say nothing about the study
    wall = None if args.stage == "report" and args.since is None else time.perf_counter() - start
    rows = outcome.rows
    planned, missing = planned_cells(config)
    teachers_needed = [
        f"{t}/fold{fold}" for fold in range(config.folds) for t in dict.fromkeys(map(student_teacher, config.students))
    ]
    found = {f"{t['model']}/fold{t['fold']}" for t in outcome.teacher_rows}
    table = cell_rows(rows, outcome.teacher_rows, outcome.baseline_rows, planned)
    name = "kd_synthetic_quick" if args.quick else "kd_synthetic"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    write_csv(table, args.results_dir / f"{name}.csv")
    command = args.command or "python benchmarks/bench_kd.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = format_markdown(
        table,
        config,
        wall,
        machine_info(config.threads),
        command.strip(),
        missing=missing,
        missing_teachers=[t for t in teachers_needed if t not in found],
        training_s=training_seconds(rows, outcome.teacher_rows),
    )
    with atomic_path(args.results_dir / f"{name}.md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    print(
        f"wrote {args.results_dir / f'{name}.md'} and .csv ({len(rows)} student runs, {len(missing)} missing, "
        + (f"{wall / 60:.1f} min)" if wall is not None else "wall time not measured)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
