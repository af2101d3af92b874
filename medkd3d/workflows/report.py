"""The teacher/student comparison report of ``medkd3d pipeline``: one row per model, written as Markdown and CSV."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medkd3d.utils import atomic_write_text

__all__ = ["METRIC_COLUMNS", "ModelResult", "add_teacher_ratios", "write_report"]

#: Evaluation metrics shown per model (keys of :func:`medkd3d.engines.classification_metrics`).
METRIC_COLUMNS: tuple[str, ...] = ("auc", "balanced_accuracy", "accuracy", "f1", "sensitivity", "specificity")


@dataclass
class ModelResult:
    """Everything the report says about one trained model.

    Args:
        bundle: bundle name.
        role: ``"teacher"`` or ``"student"``.
        teacher: bundle name of its teacher (students only).
        network: class name of the network.
        input_per_subject: what one subject's prediction takes, e.g. ``"1 x [4, 128, 128, 128]"``.
        metrics: evaluation metrics (``METRIC_COLUMNS`` and more).
        parameters: number of parameters.
        gflops: GFLOPs of one subject's prediction.
        latency_ms: median CPU latency of one subject's prediction, eager PyTorch.
        exports: export format -> file.
        export_max_abs_diff: export format -> largest |exported - eager| logit difference over the random and real parity inputs.
        ratios: filled by :func:`add_teacher_ratios`.
    """

    bundle: str
    role: str
    teacher: str | None
    network: str
    input_per_subject: str
    metrics: dict[str, float]
    parameters: int
    gflops: float
    latency_ms: float
    exports: dict[str, str] = field(default_factory=dict)
    export_max_abs_diff: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)


def add_teacher_ratios(results: Sequence[ModelResult]) -> None:
    """Fill each student's ``ratios`` relative to its teacher (in ``results``), in place.

    ``params_ratio`` and ``gflops_ratio`` are student / teacher (smaller is a stronger compression),
    ``speedup`` is teacher latency / student latency, and ``<metric>_retention`` is student / teacher metric.
    """
    by_bundle = {r.bundle: r for r in results}
    for result in results:
        teacher = by_bundle.get(result.teacher or "")
        if teacher is None:
            continue
        result.ratios = {
            "params_ratio": _ratio(result.parameters, teacher.parameters),
            "gflops_ratio": _ratio(result.gflops, teacher.gflops),
            "speedup": _ratio(teacher.latency_ms, result.latency_ms),
            **{
                f"{name}_retention": _ratio(result.metrics.get(name), teacher.metrics.get(name))
                for name in ("auc", "balanced_accuracy")
            },
        }


def _ratio(numerator: float | None, denominator: float | None) -> float:
    if numerator is None or denominator is None or not denominator or math.isnan(denominator):
        return math.nan
    return float(numerator) / float(denominator)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _rows(results: Sequence[ModelResult]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row = {k: v for k, v in asdict(r).items() if k not in ("metrics", "ratios", "exports", "export_max_abs_diff")}
        row.update({name: r.metrics.get(name) for name in METRIC_COLUMNS})
        row.update({name: r.ratios.get(name) for name in _ratio_columns(results)})
        row.update({f"export_{fmt}": path for fmt, path in r.exports.items()})
        row.update({f"export_{fmt}_max_abs_diff": diff for fmt, diff in r.export_max_abs_diff.items()})
        rows.append(row)
    return rows


def _ratio_columns(results: Sequence[ModelResult]) -> list[str]:
    return list(dict.fromkeys(name for r in results for name in r.ratios))


def _csv(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _markdown(results: Sequence[ModelResult], context: Mapping[str, Any]) -> str:
    lines = ["# medkd3d: teacher vs student comparison", ""]
    lines += [f"- {key}: {value}" for key, value in context.items()]
    lines += [
        "",
        "## Models",
        "",
        "Metrics are on the evaluation subjects of the same fold for every model. GFLOPs and latency are per subject"
        " (2.5D students classify several slice stacks per subject); latency is the median of eager PyTorch forward"
        " passes on this machine's CPU.",
        "",
        "| bundle | role | network | input per subject | " + " | ".join(METRIC_COLUMNS) + " | parameters | GFLOPs"
        " | CPU latency (ms) |",
        "|" + "---|" * (7 + len(METRIC_COLUMNS)),
    ]
    for r in results:
        metrics = " | ".join(_fmt(r.metrics.get(name)) for name in METRIC_COLUMNS)
        lines.append(
            f"| {r.bundle} | {r.role} | {r.network} | {r.input_per_subject} | {metrics} | {r.parameters:,} "
            f"| {_fmt(r.gflops, 2)} | {_fmt(r.latency_ms, 1)} |"
        )
    students = [r for r in results if r.ratios]
    if students:
        columns = _ratio_columns(results)
        lines += [
            "",
            "## Students relative to their teachers",
            "",
            "params_ratio and gflops_ratio: student / teacher; speedup: teacher latency / student latency; "
            "retention: student metric / teacher metric.",
            "",
            "| student | teacher | " + " | ".join(columns) + " |",
            "|" + "---|" * (2 + len(columns)),
        ]
        for r in students:
            lines.append(f"| {r.bundle} | {r.teacher} | " + " | ".join(_fmt(r.ratios[c]) for c in columns) + " |")
    exported = [r for r in results if r.exports]
    if exported:
        lines += ["", "## Exports", "", "| bundle | format | file | max abs logit diff vs eager |", "|---|---|---|---|"]
        for r in exported:
            for fmt, path in r.exports.items():
                lines.append(f"| {r.bundle} | {fmt} | {path} | {_fmt(r.export_max_abs_diff.get(fmt), 6)} |")
    return "\n".join(lines) + "\n"


def write_report(
    results: Sequence[ModelResult], out_dir: str | os.PathLike, context: Mapping[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.csv`` to ``out_dir``, each atomically.

    Args:
        results: one entry per model; students' ratios are filled from their teachers here.
        out_dir: destination directory.
        context: run facts listed at the top of the Markdown report (dataset, epochs, machine...).

    Returns:
        The Markdown and CSV paths.
    """
    add_teacher_ratios(results)
    out_dir = Path(out_dir)
    markdown = atomic_write_text(out_dir / "report.md", _markdown(results, dict(context or {})))
    table = atomic_write_text(out_dir / "report.csv", _csv(_rows(results)))
    return markdown, table
