"""The main job over several folds: one table from the ``report.csv`` of several ``medkd3d pipeline`` runs.

``medkd3d pipeline --quick`` reports one fold: one training of each model, tested on 160 held-out subjects. Its
other folds keep the same test subjects and train and select on other subjects, so running each fold and reading
the reports together shows how much of one run's result is the training subjects and the model selection::

    for f in 0 1 2 3; do medkd3d pipeline --quick --fold $f --out runs/quick_f$f; done
    python benchmarks/main_job_folds.py runs/quick_f0 runs/quick_f1 runs/quick_f2 runs/quick_f3

It writes ``benchmarks/results/main_job_folds.md`` (``--out``): per model, the test AUC and balanced accuracy of
each fold with their mean, and per student the AUC ratio, the balanced-accuracy margin retention and the KD gain
over its no-KD twin (mean and lowest).
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
from collections.abc import Sequence
from pathlib import Path

from medkd3d.utils import atomic_write_text

#: Report columns summarised per student.
STUDENT_COLUMNS = (
    ("auc_ratio", "AUC ratio"),
    ("balanced_accuracy_margin_retention", "margin retention"),
    ("kd_auc_gain", "KD gain (AUC)"),
)


def read_run(run_dir: Path) -> tuple[str, dict[str, dict[str, str]]]:
    """A pipeline run's fold (``"fold K of N"`` from ``report.md``) and its ``report.csv`` rows by bundle.

    Raises:
        FileNotFoundError: naming the run folder without a ``report.csv`` or ``report.md``.
    """
    run_dir = Path(run_dir)
    for name in ("report.csv", "report.md"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}: no {name}; run `medkd3d pipeline --out {run_dir}` first.")
    match = re.search(r"^- split: (fold \d+ of \d+)", (run_dir / "report.md").read_text(encoding="utf-8"), re.M)
    with (run_dir / "report.csv").open(newline="", encoding="utf-8") as stream:
        rows = {row["bundle"]: row for row in csv.DictReader(stream)}
    return (match.group(1) if match else run_dir.name), rows


def _values(runs: Sequence[dict[str, dict[str, str]]], bundle: str, column: str) -> list[float]:
    """The column's numbers over the runs that have the bundle, skipping empty and ``n/a`` cells."""
    cells = [rows[bundle].get(column) for rows in runs if bundle in rows]
    return [float(c) for c in cells if c not in (None, "", "n/a")]


def _listed(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in values) + f" (mean {statistics.mean(values):.3f})" if values else "n/a"


def format_markdown(runs: Sequence[tuple[str, dict[str, dict[str, str]]]], command: str) -> str:
    """The Markdown tables of :func:`read_run` results: every model's test metrics per run, then the students'."""
    tables = [rows for _, rows in runs]
    bundles = list(dict.fromkeys(bundle for rows in tables for bundle in rows))
    roles = {bundle: next(rows[bundle]["role"] for rows in tables if bundle in rows) for bundle in bundles}
    lines = [
        "# The main job over folds",
        "",
        f"Runs, in this order in every cell: {', '.join(label for label, _ in runs)}. The folds of one dataset share "
        "their held-out test subjects and differ in their training and validation subjects. "
        f"Command: `{command}`.",
        "",
        "| model | role | test AUC | test balanced accuracy |",
        "|---|---|---|---|",
    ]
    for bundle in bundles:
        auc, balanced = (_listed(_values(tables, bundle, c)) for c in ("auc", "balanced_accuracy"))
        lines.append(f"| {bundle} | {roles[bundle]} | {auc} | {balanced} |")
    lines += [
        "",
        "| student | " + " | ".join(label for _, label in STUDENT_COLUMNS) + " |",
        "|---" * (len(STUDENT_COLUMNS) + 1) + "|",
    ]
    for bundle in (b for b in bundles if roles[b] == "student"):
        cells = []
        for column, _ in STUDENT_COLUMNS:
            values = _values(tables, bundle, column)
            cells.append(f"{_listed(values)}, lowest {min(values):.3f}" if values else "n/a")
        lines.append(f"| {bundle} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Read the runs given on the command line, write the Markdown file atomically and print it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="pipeline output folders, fold 0 first")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "main_job_folds.md", help="Markdown file"
    )
    args = parser.parse_args(argv)
    command = "python benchmarks/main_job_folds.py " + " ".join(str(d) for d in args.runs)
    text = format_markdown([read_run(d) for d in args.runs], command)
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
