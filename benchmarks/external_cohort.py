"""The main job's trained models on an external synthetic cohort: subjects no run trained, selected or tested on.

``medkd3d pipeline --quick`` tests every model on 160 held-out subjects of its own dataset. This script tests the
same trained models again on a second cohort drawn by the synthetic generator with another seed, so the result does
not rest on one set of test subjects::

    for f in 0 1 2 3; do medkd3d pipeline --quick --fold $f --out runs/quick_f$f; done
    python benchmarks/external_cohort.py runs/quick_f0 runs/quick_f1 runs/quick_f2 runs/quick_f3 --seed 2

Every model is evaluated by its bundle's ``evaluate.json`` with its own validation subjects (the decision threshold
is still chosen on them, never on the cohort) and the cohort as the test subjects; the outputs go to
``<run>/<model>/eval_external_seed<seed>/``. The trivial baseline is refitted on each run's training and validation
subjects. It writes ``benchmarks/results/external_cohort.md`` (``--out``): per model, the cohort AUC and balanced
accuracy of each run with their mean.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medkd3d.utils import atomic_write_text

BASELINE = "trivial baseline"


def cohort_records(cohort_dir: Path, subjects_per_class: int, seed: int, shape: Sequence[int]) -> list[dict]:
    """The labelled records of the synthetic cohort in ``cohort_dir``, generated there first if it does not exist."""
    from medkd3d.bundles.data import prepare_dataset

    synthetic = {"n_hgg": subjects_per_class, "n_lgg": subjects_per_class, "shape": tuple(shape), "seed": seed}
    return list(prepare_dataset(cohort_dir, synthetic=synthetic)["training"])


def check_disjoint(cohort: Sequence[Mapping[str, Any]], seen: Sequence[Mapping[str, Any]], run_dir: Path) -> None:
    """Refuse a cohort that shares a subject with the subjects a run used (the same seed generates the same ones).

    Synthetic subject ids repeat across seeds, so subjects with the same id are compared by their first modality's
    file content.

    Raises:
        ValueError: naming the run, the subject and the two files.
    """
    by_id = {record["subject"]: record for record in seen}
    for record in cohort:
        other = by_id.get(record["subject"])
        if other is not None and filecmp.cmp(record["image"][0], other["image"][0], shallow=False):
            raise ValueError(
                f"{run_dir}: subject {record['subject']} of the cohort ({record['image'][0]}) is the run's own "
                f"({other['image'][0]}): generate the cohort with another --seed."
            )


def evaluate_run(run_dir: Path, cohort: list[dict], seed: int) -> dict[str, tuple[float, float]]:
    """Every trained model of ``run_dir`` and the trivial baseline on ``cohort``: ``{model: (AUC, balanced accuracy)}``.

    Raises:
        ValueError: from :func:`check_disjoint`.
    """
    from medkd3d.bundles import evaluate_bundle
    from medkd3d.pipeline import finished_trainings
    from medkd3d.pipeline.report import baseline_result, bundle_evaluation_split

    results: dict[str, tuple[float, float]] = {}
    for name, bundle_root, settings in finished_trainings(run_dir):
        split, _ = bundle_evaluation_split(bundle_root, settings["overrides"])
        if not results:  # the first model: every model of a run shares its split
            check_disjoint(cohort, [r for side in split.values() for r in side], run_dir)
            baseline = baseline_result({"train": split["train"], "val": split["val"], "test": cohort})
            results[BASELINE] = (baseline.metrics["auc"], baseline.metrics["balanced_accuracy"])
        out = Path(run_dir) / name / f"eval_external_seed{seed}"
        overrides = {**settings["overrides"], "output_dir": str(out)}
        overrides["split"] = {"train": [], "val": split["val"], "test": cohort}  # threshold from its own validation
        evaluate_bundle(bundle_root, logging_file=False, profiles=settings["profiles"], **overrides)
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        results[name] = (metrics["auc"], metrics["balanced_accuracy"])
    return results


def _listed(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in values) + f" (mean {statistics.mean(values):.3f})"


def format_markdown(runs: Mapping[str, dict[str, tuple[float, float]]], cohort: str, command: str) -> str:
    """One row per model: its cohort AUC and balanced accuracy in every run (a model missing from a run is left out)."""
    models = list(dict.fromkeys(model for results in runs.values() for model in results))
    lines = [
        "# The main job's models on an external synthetic cohort",
        "",
        f"Cohort: {cohort}. Runs, in this order in every cell: {', '.join(runs)}. Each model keeps the decision "
        f"threshold chosen on its own validation subjects. Command: `{command}`.",
        "",
        "| model | cohort AUC | cohort balanced accuracy |",
        "|---|---|---|",
    ]
    for model in models:
        pairs = [results[model] for results in runs.values() if model in results]
        lines.append(f"| {model} | {_listed([p[0] for p in pairs])} | {_listed([p[1] for p in pairs])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate the runs given on the command line on the cohort, write the Markdown file atomically and print it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="pipeline output folders")
    parser.add_argument("--seed", type=int, default=2, help="generator seed of the cohort (default: %(default)s)")
    parser.add_argument("--subjects-per-class", type=int, default=100, help="default: %(default)s")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="generator shape of the cohort (default: the main job's, medkd3d.pipeline.QUICK)",
    )
    parser.add_argument(
        "--cohort-dir", type=Path, help="where the cohort is generated (default: next to the first run)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "external_cohort.md", help="Markdown file"
    )
    args = parser.parse_args(argv)
    if args.shape is None:
        from medkd3d.pipeline import QUICK

        args.shape = QUICK["synthetic"]["shape"]
    cohort_dir = args.cohort_dir or args.runs[0].parent / f"external_cohort_seed{args.seed}"
    cohort = cohort_records(cohort_dir, args.subjects_per_class, args.seed, args.shape)
    runs = {str(run): evaluate_run(run, cohort, args.seed) for run in args.runs}
    description = (
        f"{len(cohort)} synthetic subjects ({args.subjects_per_class} per grade, shape {tuple(args.shape)}, generator "
        f"seed {args.seed}) in `{cohort_dir}`"
    )
    command = "python benchmarks/external_cohort.py " + " ".join(str(d) for d in args.runs) + f" --seed {args.seed}"
    text = format_markdown(runs, description, command)
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
