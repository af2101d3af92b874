"""The report half of the deployment benchmark (:mod:`medkd3d.export.bench`): ratios, targets, markdown and CSV.

Ratios are taken between rows of the same run: each student against its teacher on the same runtime, each
runtime against eager PyTorch for the same bundle. Targets are not the library's: whoever runs the benchmark
states them as :class:`Target` values (``benchmarks/bench_deploy.py`` states the project's), and the report says
for each whether the run met it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medkd3d.export.bench_worker import BenchSettings
from medkd3d.reporting import markdown_table, write_csv, write_markdown

__all__ = ["Target", "check_targets", "compute_ratios", "write_results"]


@dataclass(frozen=True)
class Target:
    """A goal for one ratio of a benchmark run, e.g. "ONNX Runtime at most 0.6x eager latency, 3D student".

    Args:
        bundle: the bundle the ratio is about.
        runtime: the runtime of the ratio.
        ratio: the start of the ratio's name in :func:`compute_ratios` (``"latency vs eager"``,
            ``"speedup vs teacher"``).
        per: ``"input"`` (one network input, batch 1) or ``"subject"`` (all of one subject's inputs).
        comparison: ``"<="`` or ``">="``.
        threshold: the value the ratio is compared with.
        description: the goal in words, for the report.

    Raises:
        ValueError: for an unknown ``per`` or ``comparison``.
    """

    bundle: str
    runtime: str
    ratio: str
    per: str
    comparison: str
    threshold: float
    description: str

    def __post_init__(self) -> None:
        if self.per not in ("input", "subject") or self.comparison not in ("<=", ">="):
            raise ValueError(
                f"Target {self.description!r}: per must be 'input' or 'subject' and comparison '<=' or '>=', "
                f"got per={self.per!r}, comparison={self.comparison!r}."
            )

    def check(self, ratios: Sequence[Mapping[str, Any]]) -> str | None:
        """One markdown line with the measured value and MET / MISSED, or ``None`` if the run did not measure it.

        Args:
            ratios: :func:`compute_ratios` of the run.
        """
        match = [
            r
            for r in ratios
            if r["bundle"] == self.bundle and r["runtime"] == self.runtime and r["ratio"].startswith(self.ratio)
        ]
        value = match[0][f"per_{self.per}"] if match else None
        if value is None:
            return None
        met = value <= self.threshold if self.comparison == "<=" else value >= self.threshold
        return (
            f"- {self.description}: measured {value:.2f} ({self.comparison} {self.threshold:.2f}) - "
            f"{'MET' if met else 'MISSED'}"
        )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def compute_ratios(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ratios between rows of the same run.

    - ``speedup vs teacher``: teacher latency / student latency, same runtime, per network input (batch 1) and
      per subject;
    - ``latency vs eager``: runtime latency / eager latency of the same bundle (below 1 is faster).

    Args:
        rows: measured rows (``bundle``, ``runtime``, ``teacher``, ``latency_median_ms``, ``subject_latency_ms``);
            rows with an ``error`` are left out.

    Returns:
        One dict per ratio: ``bundle``, ``runtime``, ``ratio``, ``per_input``, ``per_subject``.
    """
    by_key = {(r["bundle"], r["runtime"]): r for r in rows if "error" not in r}
    ratios = []
    for (bundle, runtime), row in by_key.items():
        teacher = by_key.get((row["teacher"], runtime))
        if teacher is not None:
            ratios.append({
                "bundle": bundle, "runtime": runtime, "ratio": "speedup vs teacher " + row["teacher"],
                "per_input": _ratio(teacher["latency_median_ms"], row["latency_median_ms"]),
                "per_subject": _ratio(teacher["subject_latency_ms"], row["subject_latency_ms"]),
            })  # fmt: skip
        eager = by_key.get((bundle, "eager"))
        if runtime != "eager" and eager is not None:
            ratios.append({
                "bundle": bundle, "runtime": runtime, "ratio": "latency vs eager",
                "per_input": _ratio(row["latency_median_ms"], eager["latency_median_ms"]),
                "per_subject": _ratio(row["subject_latency_ms"], eager["subject_latency_ms"]),
            })  # fmt: skip
    return ratios


def check_targets(rows: Sequence[Mapping[str, Any]], targets: Sequence[Target]) -> list[str]:
    """One markdown line per target the run measured: the measured value and MET / MISSED.

    Args:
        rows: measured rows.
        targets: the goals to check.

    Returns:
        The lines, in the order of ``targets``.
    """
    ratios = compute_ratios(rows)
    return [line for line in (target.check(ratios) for target in targets) if line is not None]


_COLUMNS = (
    ("bundle", "bundle", "{}"), ("runtime", "runtime", "{}"), ("input_shape", "input", "{}"),
    ("params_m", "params (M)", "{:.2f}"), ("gflops", "GFLOPs/input", "{:.2f}"),
    ("subject_gflops", "GFLOPs/subject", "{:.2f}"), ("latency_median_ms", "latency median (ms)", "{:.1f}"),
    ("latency_p90_ms", "latency p90 (ms)", "{:.1f}"), ("subject_latency_ms", "subject latency (ms)", "{:.1f}"),
    ("throughput_per_s", "throughput (/s)", "{:.2f}"), ("peak_rss_mb", "peak RSS (MB)", "{:.0f}"),
    ("gpu_mem_mb", "GPU mem (MB)", "{:.0f}"),
)  # fmt: skip


def _cell(row: Mapping[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    return "" if value is None else fmt.format(value)


def _settings_line(settings: BenchSettings) -> str:
    return (
        f"Settings: batch-1 latency over {settings.min_repeats}-{settings.max_repeats} calls after "
        f"{settings.warmup} warm-up calls (at most {settings.max_seconds} s each), throughput at batch "
        f"{settings.batch}, {settings.threads or 'default'} threads, each runtime in a fresh process."
    )


def _markdown(
    rows: Sequence[Mapping[str, Any]], machine: Mapping[str, Any], settings: BenchSettings, target_lines: Sequence[str]
) -> str:
    ratios = compute_ratios(rows)
    columns = [c for c in _COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    lines = [f"# Deployment benchmark ({settings.device})", "", "## Machine", ""]
    lines += [f"- {key}: {value}" for key, value in machine.items()]
    lines += [
        "",
        _settings_line(settings),
        "",
        "## Results",
        "",
    ]
    lines += markdown_table(
        [title for _, title, _ in columns],
        [
            [row["bundle"], row["runtime"], f"failed: {row['error']}", *[""] * (len(columns) - 3)]
            if "error" in row
            else [_cell(row, key, fmt) for key, _, fmt in columns]
            for row in rows
        ],
    )
    lines += ["", "## Ratios (same run)", ""]
    lines += markdown_table(
        ["bundle", "runtime", "ratio", "per input", "per subject"],
        [
            [r["bundle"], r["runtime"], r["ratio"], _cell(r, "per_input", "{:.2f}"), _cell(r, "per_subject", "{:.2f}")]
            for r in ratios
        ],
    )
    if target_lines:
        lines += ["", "## Targets", "", *target_lines]
    return "\n".join(lines) + "\n"


def write_results(
    rows: Sequence[Mapping[str, Any]],
    *,
    machine: Mapping[str, Any],
    out_dir: str | os.PathLike,
    stem: str,
    settings: BenchSettings,
    targets: Sequence[Target] = (),
) -> tuple[Path, Path]:
    """Write ``<stem>.md`` (machine, settings, results, ratios, targets) and ``<stem>.csv`` (one row per
    measurement, with the machine's description in ``machine_*`` columns), each atomically.

    Args:
        rows: measured rows (a row with an ``error`` is reported as failed).
        machine: the machine's description.
        out_dir: the results directory.
        stem: file name without suffix.
        settings: how the rows were measured.
        targets: goals checked against the run's ratios (none: no targets section).

    Returns:
        The markdown and CSV paths.
    """
    out = Path(out_dir)
    markdown = write_markdown(out / f"{stem}.md", _markdown(rows, machine, settings, check_targets(rows, targets)))
    machine_columns = {f"machine_{key}": value for key, value in machine.items()}
    columns = [*dict.fromkeys(key for row in rows for key in row), *machine_columns]
    return markdown, write_csv(out / f"{stem}.csv", [{**row, **machine_columns} for row in rows], columns=columns)
