"""Study reports: ``results.csv`` (one row per run), ``summary.md`` (statistics per cell, KD gains) and plots.

Plots are drawn on matplotlib ``Figure`` objects with the Agg canvas (no display, no global pyplot state):

* ``metric_vs_size_<metric>.png`` - the data-size study: one panel per student, the metric's mean against the
  training subjects per class, one line per KD mode, with 95% bootstrap CIs as error bars;
* ``pareto_latency.png`` - the deployment trade-off: balanced accuracy against CPU latency of a subject-level
  prediction for every (student, KD mode) at the largest data size, the teacher for reference, and the Pareto
  front (no other model is both faster and more accurate).

``summary.md`` follows the package's evaluation protocol: it states the chance level, the trivial baseline when
the runner provides it (:func:`medkd3d.engines.trivial_baseline` per fold), the retention of every student
against its fold's teacher as the AUC ratio and as the margin retention over chance
(:func:`medkd3d.ablation.stats.summarize_retention`), and flags in words any cell whose runs predict one class,
whose AUC CI includes 0.5, that was evaluated on fewer than 20 subjects, or whose teacher is at chance.

Every file is written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd3d.ablation.grid import size_sort_key
from medkd3d.ablation.stats import (
    cell_flags,
    evaluated_subjects,
    kd_gains,
    predicts_one_class,
    summarize_cells,
    summarize_retention,
)
from medkd3d.reporting import format_interval, format_value, markdown_table, write_csv, write_markdown
from medkd3d.utils import atomic_path

__all__ = [
    "EXTRA_COLUMNS",
    "PLOTTED_METRICS",
    "RESULT_COLUMNS",
    "format_summary",
    "plot_metric_vs_size",
    "plot_pareto",
    "write_report",
    "write_results_csv",
]

#: The columns of ``results.csv``, in order.
RESULT_COLUMNS = (
    "student", "kd", "size", "seed", "fold", "balanced_accuracy", "auc", "f1", "sensitivity", "specificity",
    "parameters", "gflops", "cpu_latency_ms", "train_time_s",
)  # fmt: skip
#: Further columns appended after :data:`RESULT_COLUMNS` when present.
EXTRA_COLUMNS = ("accuracy", "train_subjects", "val_subjects", "test_subjects", "one_class")
#: Metrics with their own ``summary.md`` section and data-size plot.
PLOTTED_METRICS = ("balanced_accuracy", "auc")

_LABELS = {"balanced_accuracy": "balanced accuracy", "auc": "AUC"}
_TITLES = {"balanced_accuracy": "Balanced accuracy", "auc": "AUC"}
_KD_MARKERS = {"none": "o", "logit": "s", "logit+feature": "^"}


def write_results_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write one CSV row per run with :data:`RESULT_COLUMNS` (then :data:`EXTRA_COLUMNS`), atomically.

    Args:
        rows: run results (e.g. :meth:`~medkd3d.ablation.grid.ResultStore.collect`).
        path: the CSV file.

    Returns:
        ``path``.
    """
    return write_csv(path, rows, [*RESULT_COLUMNS, *(c for c in EXTRA_COLUMNS if any(c in row for row in rows))])


def _cell_order(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, Any]]:
    """Cells sorted by student (first appearance), size (learning-curve order), then KD mode."""
    students = list(dict.fromkeys(row["student"] for row in rows))
    modes = list(dict.fromkeys(row["kd"] for row in rows))
    cells = {(row["student"], row["kd"], row["size"]) for row in rows}
    return sorted(cells, key=lambda c: (students.index(c[0]), size_sort_key(c[2]), modes.index(c[1])))


def _metric_sections(rows: Sequence[Mapping[str, Any]], order: list[tuple], num_resamples: int) -> list[str]:
    """Mean ± std and bootstrap CI per cell, one table per metric of :data:`PLOTTED_METRICS`."""
    lines = []
    for metric in PLOTTED_METRICS:
        stats = {(c.student, c.kd, c.size): c for c in summarize_cells(rows, metric, num_resamples=num_resamples)}
        table = [
            (*cell, stats[cell].num_runs, f"{format_value(stats[cell].mean)} ± {format_value(stats[cell].std)}",
             format_interval(stats[cell].ci_low, stats[cell].ci_high))
            for cell in order
        ]  # fmt: skip
        lines += [f"## {_TITLES[metric]}", ""]
        lines += [*markdown_table(["student", "KD", "size", "runs", "mean ± std", "95% CI"], table), ""]
    return lines


def _gain_sections(rows: Sequence[Mapping[str, Any]], order: list[tuple], num_resamples: int) -> list[str]:
    """Paired KD gain over no KD with its CI, one table per metric of :data:`PLOTTED_METRICS`."""
    lines = []
    for metric in PLOTTED_METRICS:
        gains = kd_gains(rows, metric, num_resamples=num_resamples)
        lines += [f"## KD gain over no KD: {_LABELS[metric]}", ""]
        if not gains:
            lines += ["No KD run has a no-KD twin (add `none` to the KD modes).", ""]
            continue
        gains.sort(key=lambda g: order.index((g.student, g.kd, g.size)))
        table = [
            (g.student, g.kd, g.size, g.num_pairs, f"{g.gain:+.3f}", format_interval(g.ci_low, g.ci_high))
            for g in gains
        ]
        lines += [*markdown_table(["student", "KD", "size", "pairs", "gain", "95% CI"], table), ""]
    return lines


def _other_metrics_section(rows: Sequence[Mapping[str, Any]], order: list[tuple]) -> list[str]:
    """Mean ± std of F1, sensitivity and specificity per cell."""
    others = ("f1", "sensitivity", "specificity")
    stats = {m: {(c.student, c.kd, c.size): c for c in summarize_cells(rows, m, num_resamples=1)} for m in others}
    table = [
        (*cell, *(f"{format_value(stats[m][cell].mean)} ± {format_value(stats[m][cell].std)}" for m in others))
        for cell in order
    ]
    return [
        "## F1, sensitivity, specificity (mean ± std)",
        "",
        *markdown_table(["student", "KD", "size", *others], table),
        "",
    ]


def _retention_section(
    rows: Sequence[Mapping[str, Any]], teacher_rows: Sequence[Mapping[str, Any]], order: list[tuple], num_resamples: int
) -> list[str]:
    """AUC ratio and balanced-accuracy margin retention against the fold's teacher, per cell."""
    summaries = {
        (r.auc_ratio.student, r.auc_ratio.kd, r.auc_ratio.size): r
        for r in summarize_retention(rows, teacher_rows, num_resamples=num_resamples)
    }
    if not summaries:
        return []
    table = []
    for cell in order:
        if cell not in summaries:
            continue
        ratio, margin = summaries[cell].auc_ratio, summaries[cell].margin_retention
        table.append(
            (*cell, ratio.num_runs, f"{format_value(ratio.mean)} ± {format_value(ratio.std)}", format_interval(ratio.ci_low, ratio.ci_high),
             f"{format_value(margin.mean)} ± {format_value(margin.std)}", format_interval(margin.ci_low, margin.ci_high),
             summaries[cell].undefined_runs)
        )  # fmt: skip
    header = ["student", "KD", "size", "runs", "AUC ratio", "95% CI", "margin retention", "95% CI", "undefined"]
    return [
        "## Retention against the teacher",
        "",
        "Each run against its fold's teacher: AUC ratio = student AUC / teacher AUC; margin retention = (student - "
        "0.5) / (teacher - 0.5) of the balanced accuracy, the share of the teacher's margin over chance the student "
        "keeps (0 for a student that predicts one class). It is undefined when the teacher is at chance "
        "(`undefined` runs, left out of its statistics).",
        "",
        *markdown_table(header, table),
        "",
    ]


def _flags_section(
    rows: Sequence[Mapping[str, Any]], teacher_rows: Sequence[Mapping[str, Any]], order: list[tuple], num_resamples: int
) -> list[str]:
    """The cells a reader should not trust, and why, in words."""
    flags = cell_flags(rows, teacher_rows, num_resamples=num_resamples)
    lines = ["## Flags", ""]
    flagged = [cell for cell in order if cell in flags]
    lines += [
        f"- {student}, KD {kd}, size {size}: {'; '.join(flags[student, kd, size])}" for student, kd, size in flagged
    ]
    return [*lines, *([] if flagged else ["No cell is flagged."]), ""]


def _baseline_section(baseline_rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The trivial baseline per fold and its mean, the floor every model must clear."""
    if not baseline_rows:
        return []
    table = [
        (row.get("fold", "every fold"), format_value(row.get("balanced_accuracy")), format_value(row.get("auc")),
         format_value(evaluated_subjects(row)))
        for row in baseline_rows
    ]  # fmt: skip
    if len(baseline_rows) > 1:
        table.append(
            (
                "mean",
                format_value(_mean(baseline_rows, "balanced_accuracy")),
                format_value(_mean(baseline_rows, "auc")),
                "",
            )
        )
    return [
        "## Trivial baseline",
        "",
        "Logistic regression on per-modality percentiles of the z-scored brain intensities, fitted on the training "
        "(and validation) subjects and scored on the same held-out subjects as the models "
        "(`medkd3d.engines.trivial_baseline`).",
        "",
        *markdown_table(["fold", "balanced accuracy", "AUC", "n"], table),
        "",
    ]


def _cost_sections(rows: Sequence[Mapping[str, Any]], teacher_rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Size and speed per model (students and teacher), and the teacher's accuracy per fold."""

    def cost(name: str, members: Sequence[Mapping[str, Any]]) -> tuple:
        first = members[0]  # the cost of a model is measured once per study
        return (name, f"{first['parameters']:,}", format_value(first["gflops"]), format_value(first["cpu_latency_ms"], 1),
                format_value(_mean(members, "train_time_s"), 1))  # fmt: skip

    students = dict.fromkeys(row["student"] for row in rows)
    table = [cost(student, [row for row in rows if row["student"] == student]) for student in students]
    for teacher in dict.fromkeys(t["model"] for t in teacher_rows):
        table.append(cost(f"teacher ({teacher})", [t for t in teacher_rows if t["model"] == teacher]))
    lines = ["## Cost", "", "Per subject-level prediction as evaluated (CPU latency: median of eager passes).", ""]
    lines += [*markdown_table(["model", "parameters", "GFLOPs", "CPU latency (ms)", "mean train time (s)"], table), ""]
    if teacher_rows:
        table = [
            (t["model"], t["fold"], format_value(t["balanced_accuracy"]), format_value(t["auc"]), t.get("train_subjects", "n/a"),
             format_value(evaluated_subjects(t)), "predicts one class" if predicts_one_class(t) else "")
            for t in teacher_rows
        ]  # fmt: skip
        lines += ["## Teachers per fold", ""]
        header = ["teacher", "fold", "balanced accuracy", "AUC", "training subjects", "evaluated subjects", "flags"]
        lines += [*markdown_table(header, table), ""]
    return lines


def format_summary(
    rows: Sequence[Mapping[str, Any]],
    teacher_rows: Sequence[Mapping[str, Any]] = (),
    settings: Mapping[str, Any] | None = None,
    plots: Sequence[str] = (),
    num_resamples: int = 10_000,
    baseline_rows: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The Markdown text of ``summary.md``.

    Args:
        rows: run results.
        teacher_rows: per-fold teacher results (metrics and costs); students' retention is computed against them.
        settings: study settings listed at the top (``None``: none).
        plots: plot file names to embed.
        num_resamples: bootstrap resamples of every CI.
        baseline_rows: the trivial baseline's results per fold (``fold``, ``balanced_accuracy``, ``auc`` and the
            number of evaluated subjects), shown as the floor every model must clear.

    Returns:
        The Markdown document.
    """
    seeds = sorted({row["seed"] for row in rows})
    lines = [
        "# Ablation study summary",
        "",
        f"{len(rows)} finished runs over {len({row['fold'] for row in rows})} patient-level folds and seeds {seeds}. "
        "Sizes are training subjects per class; every run is evaluated on held-out subjects its training and model "
        "selection never saw, one prediction per subject (slice students: mean of the slice-stack probabilities). Chance level: AUC 0.5, "
        "balanced accuracy 0.5 (two classes).",
        "",
        f"Statistics over the (seed, fold) runs of a cell: mean ± sample std; 95% CI = percentile bootstrap of the "
        f"mean ({num_resamples:,} resamples). KD gain = mean paired difference to the no-KD run of the same "
        "student, size, seed and fold, with a paired bootstrap CI. Folds share training subjects, so the CIs "
        "describe this study's runs and are optimistic for new data (see `medkd3d.ablation.stats`).",
        "",
    ]
    if settings:
        lines += ["Settings: " + ", ".join(f"`{k}={v}`" for k, v in settings.items()), ""]
    if not rows:
        return "\n".join([*lines, "No finished runs yet.", ""])
    order = _cell_order(rows)
    lines += _flags_section(rows, teacher_rows, order, num_resamples)
    lines += _baseline_section(baseline_rows)
    lines += _metric_sections(rows, order, num_resamples)
    lines += _retention_section(rows, teacher_rows, order, num_resamples)
    lines += _gain_sections(rows, order, num_resamples)
    lines += _other_metrics_section(rows, order)
    lines += _cost_sections(rows, teacher_rows)
    if plots:
        lines += ["## Plots", "", *(f"![{name}]({name})" for name in plots), ""]
    return "\n".join(lines)


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float:
    values = [float(row[key]) for row in rows if row.get(key) is not None]
    return float(np.mean(values)) if values else float("nan")


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=150)
    return Path(path)


def plot_metric_vs_size(
    rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, metric: str = "balanced_accuracy"
) -> Path:
    """Plot ``metric`` against the data size, one panel per student and one line per KD mode.

    Args:
        rows: run results.
        path: the PNG file.
        metric: the plotted column.

    Returns:
        ``path``.
    """
    students = list(dict.fromkeys(row["student"] for row in rows))
    modes = list(dict.fromkeys(row["kd"] for row in rows))
    sizes = sorted({row["size"] for row in rows}, key=size_sort_key)
    stats = {(c.student, c.kd, c.size): c for c in summarize_cells(rows, metric)}
    figure = _figure(3.2 * max(1, len(students)), 3.2)
    axes = figure.subplots(1, max(1, len(students)), sharey=True, squeeze=False)[0]
    for ax, student in zip(axes, students):
        for offset, mode in enumerate(modes):
            points = [(i, stats[student, mode, n]) for i, n in enumerate(sizes) if (student, mode, n) in stats]
            if not points:
                continue
            x = np.array([i for i, _ in points]) + (offset - (len(modes) - 1) / 2) * 0.06  # keep error bars apart
            mean = np.array([c.mean for _, c in points])
            low = np.array([c.mean - c.ci_low if not math.isnan(c.ci_low) else 0.0 for _, c in points])
            high = np.array([c.ci_high - c.mean if not math.isnan(c.ci_high) else 0.0 for _, c in points])
            ax.errorbar(x, mean, yerr=[low, high], marker="o", capsize=3, label=f"KD: {mode}")
        ax.set_xticks(range(len(sizes)), [str(n) for n in sizes])
        ax.set_title(f"student {student}")
        ax.set_xlabel("training subjects per class")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{_LABELS.get(metric, metric)} (mean, 95% CI)")
    axes[0].legend(fontsize="small")
    return _save(figure, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(latency, accuracy)`` no other point beats on both (lower latency, higher
    accuracy), sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    teacher_rows: Sequence[Mapping[str, Any]] = (),
    metric: str = "balanced_accuracy",
) -> Path:
    """Plot ``metric`` against CPU latency for every (student, KD mode) at the largest data size, with the front.

    Args:
        rows: run results.
        path: the PNG file.
        teacher_rows: per-fold teacher results, drawn as one reference point (mean over folds).
        metric: the plotted column.

    Returns:
        ``path``.
    """
    from matplotlib.ticker import FuncFormatter

    size = max((row["size"] for row in rows), key=size_sort_key)
    at_size = [row for row in rows if row["size"] == size]
    students = list(dict.fromkeys(row["student"] for row in rows))
    # one colour per student, one marker per KD mode, a black star for the teacher
    styles, points = [], []
    for student, kd in dict.fromkeys((row["student"], row["kd"]) for row in at_size):
        mine = [row for row in at_size if row["student"] == student and row["kd"] == kd]
        styles.append((f"{student}, KD {kd}", f"C{students.index(student)}", _KD_MARKERS.get(kd, "D")))
        points.append((_mean(mine, "cpu_latency_ms"), _mean(mine, metric)))
    for index, teacher in enumerate(dict.fromkeys(t["model"] for t in teacher_rows)):
        mine = [t for t in teacher_rows if t["model"] == teacher]
        styles.append((f"teacher {teacher}", "black", "*P"[index % 2]))
        points.append((_mean(mine, "cpu_latency_ms"), _mean(mine, metric)))
    figure = _figure(6.0, 4.2)
    ax = figure.subplots()
    for (latency, value), (label, colour, marker) in zip(points, styles):
        ax.scatter(latency, value, color=colour, marker=marker, s=80, alpha=0.8, label=label)
    front = pareto_front(points)
    ax.step(
        [points[i][0] for i in front], [points[i][1] for i in front], "k--", where="post", lw=1, label="Pareto front"
    )
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize="x-small")
    ax.set_xlabel("CPU latency per subject (ms, log scale)")
    ax.set_ylabel(f"{_LABELS.get(metric, metric)} (mean over runs)")
    ax.set_title(f"{_LABELS.get(metric, metric)} vs latency, size {size}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="x-small", loc="best")
    return _save(figure, path)


def write_report(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    teacher_rows: Sequence[Mapping[str, Any]] = (),
    settings: Mapping[str, Any] | None = None,
    baseline_rows: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Path]:
    """Write ``results.csv``, the plots (when there are results) and ``summary.md`` into ``out_dir``.

    Args:
        rows: run results.
        out_dir: the study folder.
        teacher_rows: per-fold teacher results.
        settings: study settings listed in the summary.
        baseline_rows: the trivial baseline's results per fold (see :func:`format_summary`).

    Returns:
        The written files: ``"results_csv"``, ``"summary_md"`` and one ``"plot_<name>"`` per plot.
    """
    out = Path(out_dir)
    files = {"results_csv": write_results_csv(rows, out / "results.csv")}
    if rows:
        for metric in PLOTTED_METRICS:
            files[f"plot_{metric}_vs_size"] = plot_metric_vs_size(rows, out / f"metric_vs_size_{metric}.png", metric)
        files["plot_pareto"] = plot_pareto(rows, out / "pareto_latency.png", teacher_rows)
    plots = [path.name for key, path in files.items() if key.startswith("plot_")]
    text = format_summary(rows, teacher_rows, settings, plots, baseline_rows=baseline_rows)
    files["summary_md"] = write_markdown(out / "summary.md", text)
    return files
