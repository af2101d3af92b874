"""How much of the grade the data carries, against what the main job's teachers read from it.

The teachers' goals (AUC >= 0.95, balanced accuracy >= 0.90) are set on the synthetic default, whose generator draws
each grade's tumours from overlapping phenotypes. This script puts the teachers between a floor and a ceiling
measured on the same split, each a logistic regression fitted on the training and validation subjects and scored on
the held-out test subjects:

- the trivial baseline of every report (intensity percentiles of each modality);
- an oracle no model has at inference: the volume of each tumour compartment of the segmentation (necrotic /
  non-enhancing core 1, edema 2, enhancing 4; ``log(1 + voxels)``), counted at the dataset's own resolution and
  again after the bundle's preprocessing to the network input (e.g. the ``quick`` profiles' 32³), so that a
  ceiling set by the input size shows;
- each teacher's own test AUC, and the compartment volumes its auxiliary heads (``TumourCompartmentLoss``, kept
  in ``models/last.pt``) predict from the four modalities alone: how well the teacher delineates what grades::

    for f in 0 1 2 3; do medkd3d pipeline --quick --fold $f --out runs/quick_f$f; done
    python benchmarks/task_ceiling.py runs/quick_f0 runs/quick_f1 runs/quick_f2 runs/quick_f3

The oracle reads the test subjects' segmentations, so it chooses nothing: no model, recipe or threshold is selected
by it. It writes ``benchmarks/results/task_ceiling.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medkd3d.utils import atomic_write_text

#: BraTS labels of the tumour compartments whose volumes the oracle reads.
COMPARTMENTS = (1, 2, 4)
BASELINE = "trivial baseline (intensity percentiles)"
ORACLE_SOURCE = "oracle: compartment volumes of the segmentation, dataset resolution"


def compartment_volumes(seg: np.ndarray | torch.Tensor) -> np.ndarray:
    """``log(1 + voxels)`` of each BraTS compartment (1, 2, 4) of a label map.

    Args:
        seg: a label map of any shape.

    Returns:
        ``[3]`` float64 features.
    """
    seg = np.asarray(seg)
    return np.log1p([float((seg == label).sum()) for label in COMPARTMENTS])


def held_out_metrics(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> tuple[float, float]:
    """Test ``(AUC, balanced accuracy)`` of a standardised, class-balanced logistic regression fitted on ``train``.

    The balanced accuracy is at the regression's own cut (probability 0.5), as for the trivial baseline.
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from medkd3d.engines import balanced_logistic_regression

    scores = balanced_logistic_regression().fit(train_x, train_y).predict_proba(test_x)[:, 1]
    return float(roc_auc_score(test_y, scores)), float(balanced_accuracy_score(test_y, scores >= 0.5))


@torch.no_grad()
def predicted_volumes(parser: Any, checkpoint: Path, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """:func:`~medkd3d.networks.readout.compartment_log_volumes` of a trained teacher's auxiliary heads, per head (and
    of its compartment decoder, last, when the auxiliary task has one).

    Args:
        parser: the teacher bundle's ``train.json`` with the profiles and overrides it was trained with.
        checkpoint: its ``models/last.pt`` (network and ``seg_aux_loss`` weights).
        records: datalist records; only their images are read.

    Returns:
        ``[N, (heads + decoder) * 3]`` features.
    """
    from medkd3d.engines import forward_with_features, plain_tensor
    from medkd3d.networks.readout import compartment_log_volumes

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    network, heads = parser.get_parsed_content("network_def"), parser.get_parsed_content("seg_aux_loss")
    network.load_state_dict(state["model"])
    heads.load_state_dict(state["seg_aux_loss"])
    network.eval()
    stages = [int(s) for s in parser.get_parsed_content("seg_aux_stages")]
    preprocess = parser.get_parsed_content("validate#preprocessing")
    rows = []
    for record in records:
        image = torch.as_tensor(plain_tensor(preprocess(dict(record))["image"]))[None]
        _, features = forward_with_features(network, image)
        predictions = heads.predictions([features[s] for s in stages])
        volumes = [compartment_log_volumes(logits)[0] for logits in predictions]
        rows.append(torch.cat(volumes).double().numpy())
    return np.stack(rows)


def evaluate_run(run_dir: Path) -> dict[str, tuple[float, float]]:
    """The floor, the oracles and every teacher with auxiliary heads of one pipeline folder, on its test subjects.

    Returns:
        ``{row name: (test AUC, test balanced accuracy)}``.

    Raises:
        FileNotFoundError: naming the folder if it holds no finished training.
    """
    import nibabel as nib

    from medkd3d.bundles.io import bundle_parser
    from medkd3d.data import volume_transforms
    from medkd3d.pipeline import finished_trainings
    from medkd3d.pipeline.report import baseline_result, bundle_evaluation_split

    trainings = finished_trainings(run_dir)
    split, side = bundle_evaluation_split(trainings[0][1], trainings[0][2]["overrides"])
    fit, test = split["train"] + split["val"], split[side]
    fit_y, test_y = (np.array([int(r["label"]) for r in records]) for records in (fit, test))
    baseline = baseline_result(split, evaluate_split=side).metrics
    results = {BASELINE: (baseline["auc"], baseline["balanced_accuracy"])}

    def oracle(volumes: Any) -> tuple[float, float]:
        fit_x, test_x = (np.stack([volumes(r) for r in records]) for records in (fit, test))
        return held_out_metrics(fit_x, fit_y, test_x, test_y)

    results[ORACLE_SOURCE] = oracle(lambda r: compartment_volumes(np.asarray(nib.load(r["seg"]).dataobj)))
    for name, bundle_root, settings in trainings:
        parser = bundle_parser(bundle_root, settings["overrides"], "train.json", settings["profiles"])
        if "seg_aux_loss" not in parser or float(parser.get_parsed_content("seg_aux_weight")) == 0:
            continue  # a student (only the teachers have the auxiliary task), or a teacher trained without it
        size = tuple(int(s) for s in parser.get_parsed_content("spatial_size"))
        at_input = volume_transforms(size, load_seg=True)
        key = f"oracle: compartment volumes of the segmentation, network input {'x'.join(map(str, size))}"
        if key not in results:
            results[key] = oracle(lambda r, at_input=at_input: compartment_volumes(at_input(dict(r))["seg"]))
        metrics = json.loads((run_dir / name / "eval" / "metrics.json").read_text(encoding="utf-8"))
        results[f"{name}: the trained teacher"] = (metrics["auc"], metrics["balanced_accuracy"])
        predicted = predicted_volumes(parser, run_dir / name / "models" / "last.pt", fit + test)
        results[f"{name}: compartment volumes its auxiliary heads predict"] = held_out_metrics(
            predicted[: len(fit)], fit_y, predicted[len(fit) :], test_y
        )
    return results


def _listed(values: Sequence[float]) -> str:
    listed = " / ".join(f"{v:.3f}" for v in values)
    return f"{listed} (mean {statistics.mean(values):.3f})" if len(values) > 1 else listed


def format_markdown(runs: Mapping[str, Mapping[str, tuple[float, float]]], command: str) -> str:
    """One row per feature set or model: its test AUC and balanced accuracy in every run."""
    rows = list(dict.fromkeys(row for results in runs.values() for row in results))
    lines = [
        "# What the data carries, and what the teachers read",
        "",
        f"Runs, in this order in every cell: {', '.join(runs)}. Logistic regressions are fitted on each run's "
        "training and validation subjects and scored on its held-out test subjects (balanced accuracy at their own "
        "cut); a teacher's row is its report's (balanced accuracy at the threshold chosen on validation subjects). "
        f"Command: `{command}`.",
        "",
        "| features or model | test AUC | test balanced accuracy |",
        "|---|---|---|",
    ]
    for row in rows:
        pairs = [results[row] for results in runs.values() if row in results]
        lines.append(f"| {row} | {_listed([p[0] for p in pairs])} | {_listed([p[1] for p in pairs])} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Measure the runs given on the command line, write the Markdown file atomically and print it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="pipeline output folders")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "task_ceiling.md", help="Markdown file"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    runs = {str(run): evaluate_run(run) for run in args.runs}
    command = "python benchmarks/task_ceiling.py " + " ".join(str(d) for d in args.runs)
    text = format_markdown(runs, command)
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
