"""Which checkpoint should a bundle keep: the best validation epoch or the final model? Scored on test subjects.

The bundles' ``model_selection`` knob saves ``models/model.pt`` after the last epoch (``"final"``, the default) or
at the epoch with the best validation AUC (``"best"``). A run trained with ``"best"`` holds both: the selected
model in ``model.pt`` and the final one in the resumable ``last.pt``. This benchmark evaluates both with the
bundle's ``evaluate.json`` - the decision threshold chosen on the run's validation subjects, the metrics on its test
subjects - and compares them pairwise. Run it on a development cohort (another generator seed), not on the data
whose test results you report::

    medkd3d synth --out runs/dev --n-hgg 160 --n-lgg 160 --shape 64 64 48 --seed 1
    for f in 0 1 2; do
        medkd3d pipeline --quick --fold $f --dataset-dir runs/dev --override model_selection=best --out runs/dev_f$f
    done
    python benchmarks/checkpoint_selection.py runs/dev_f0 runs/dev_f1 runs/dev_f2

The evaluations go to ``<run>/<model>/eval_selection_{best,final}/``. It writes
``benchmarks/results/checkpoint_selection.md`` (``--out``): each model's test AUC and balanced accuracy with both
checkpoints, and the mean paired difference (final - best) with a 95% bootstrap CI over the models and runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from medkd3d.utils import atomic_write_text

#: The checkpoint file of each selection in a run trained with ``model_selection=best``.
CHECKPOINTS = {"best": "model.pt", "final": "last.pt"}


def evaluate_selections(run_dir: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """``{model: {selection: (test AUC, test balanced accuracy)}}`` for every finished training of ``run_dir``.

    Raises:
        FileNotFoundError: naming the run folder when it holds no finished training, or (from ``evaluate.json``'s
            checkpoint check) a missing ``model.pt`` or ``last.pt``.
        ValueError: naming a model trained with ``model_selection=final`` (its ``model.pt`` is its ``last.pt``).
    """
    from medkd3d.bundles import evaluate_bundle
    from medkd3d.pipeline import finished_trainings

    results: dict[str, dict[str, tuple[float, float]]] = {}
    for name, bundle_root, settings in finished_trainings(run_dir):
        overrides = settings["overrides"]
        if overrides.get("model_selection") != "best":
            raise ValueError(
                f"{run_dir / name}: trained without --override model_selection=best, so model.pt is the final "
                "model and the best validation epoch was not kept; train the runs again with that override."
            )
        ckpt_dir = Path(overrides["ckpt_dir"])
        results[name] = {}
        for selection, filename in CHECKPOINTS.items():
            out = Path(run_dir) / name / f"eval_selection_{selection}"
            evaluate_bundle(
                bundle_root, logging_file=False, profiles=settings["profiles"],
                **{**overrides, "ckpt_path": str(ckpt_dir / filename), "output_dir": str(out)},
            )  # fmt: skip
            metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
            results[name][selection] = (metrics["auc"], metrics["balanced_accuracy"])
    return results


def format_markdown(runs: Mapping[str, Mapping[str, Mapping[str, tuple[float, float]]]], command: str) -> str:
    """One row per run and model, then the paired difference final - best over all of them with a 95% CI."""
    from medkd3d.ablation.stats import bootstrap_ci

    lines = [
        "# Checkpoint selection: best validation epoch against the final model",
        "",
        f"Command: `{command}`. Test AUC / balanced accuracy of each model with the checkpoint of its best "
        "validation AUC and with its final one; both evaluated by the bundle's `evaluate.json` (decision threshold "
        "chosen on the run's validation subjects).",
        "",
        "| run | model | best: AUC / balanced accuracy | final: AUC / balanced accuracy |",
        "|---|---|---|---|",
    ]
    differences: dict[str, list[float]] = {"AUC": [], "balanced accuracy": []}
    for run, models in runs.items():
        for model, scores in models.items():
            (best_auc, best_ba), (final_auc, final_ba) = scores["best"], scores["final"]
            lines.append(f"| {run} | {model} | {best_auc:.3f} / {best_ba:.3f} | {final_auc:.3f} / {final_ba:.3f} |")
            differences["AUC"].append(final_auc - best_auc)
            differences["balanced accuracy"].append(final_ba - best_ba)
    lines += [
        "",
        "| metric | pairs | mean final - best [95% CI] | final better | final worse |",
        "|---|---|---|---|---|",
    ]
    for metric, values in differences.items():
        low, high = bootstrap_ci(values) if len(values) > 1 else (float("nan"), float("nan"))
        better, worse = sum(v > 0 for v in values), sum(v < 0 for v in values)
        mean = round(sum(values) / len(values), 9) or 0.0  # no "-0.000" from rounding errors
        lines.append(f"| {metric} | {len(values)} | {mean:+.3f} [{low:+.3f}, {high:+.3f}] | {better} | {worse} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate both checkpoints of every run given on the command line and write the Markdown file atomically."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="pipeline output folders trained with model_selection=best")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "checkpoint_selection.md", help="Markdown file"
    )
    args = parser.parse_args(argv)
    command = "python benchmarks/checkpoint_selection.py " + " ".join(str(d) for d in args.runs)
    text = format_markdown({d.name: evaluate_selections(d) for d in args.runs}, command)
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
