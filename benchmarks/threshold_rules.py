"""Which decision-threshold rule transfers best to unseen subjects? Measured on validation subjects only.

The bundles' ``evaluate.json`` chooses each model's two-class decision threshold (Youden's J,
:func:`medkd3d.engines.youden_threshold`) on its validation subjects (``threshold_split``; ``['train', 'val']``
adds its labelled training subjects) and writes their probabilities, with their ``side``, to
``eval/threshold_predictions.csv``. This benchmark compares that rule with the alternatives a reviewer would ask
about, without touching a test subject: for every validation subject, each rule chooses a threshold on the *other*
validation subjects of the same model (leave one out; ``youden_with_training`` also on every training subject in
the file), the held-out subject is classified at it, and the balanced accuracy of these held-out predictions
scores the rule::

    for f in 0 1 2 3; do medkd3d pipeline --quick --fold $f --out runs/quick_f$f; done
    python benchmarks/threshold_rules.py runs/quick_f0 runs/quick_f1 runs/quick_f2 runs/quick_f3

Rules: ``youden`` (the package's), ``argmax`` (0.5), ``balanced_logistic`` (a logistic calibration of the
log-odds with balanced class weights, cut where the calibrated odds are even) and ``equal_error`` (where
sensitivity and specificity are closest). It writes ``benchmarks/results/threshold_rules.md`` (``--out``).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score

from medkd3d.engines import threshold_operating_points, youden_threshold
from medkd3d.pipeline.report import read_predictions
from medkd3d.utils import atomic_write_text

#: A rule: (P(class 1), labels in {0, 1}) of the subjects it may use -> threshold on P(class 1).
ThresholdRule = Callable[[np.ndarray, np.ndarray], float]


def youden(scores: np.ndarray, labels: np.ndarray) -> float:
    """The package's rule: maximal sensitivity + specificity (0.5 when one class is missing)."""
    threshold = youden_threshold(np.stack([1 - scores, scores], axis=1), labels)
    return 0.5 if threshold is None else threshold


def argmax(scores: np.ndarray, labels: np.ndarray) -> float:
    """The model's own cut, whatever the subjects."""
    return 0.5


def balanced_logistic(scores: np.ndarray, labels: np.ndarray) -> float:
    """Logistic calibration of the log-odds with balanced class weights, cut where the calibrated odds are even."""
    clipped = np.clip(scores, 1e-7, 1 - 1e-7)
    model = LogisticRegression(class_weight="balanced", C=1e6).fit(np.log(clipped / (1 - clipped))[:, None], labels)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    if slope <= 0:  # the calibration reverses the ranking: no threshold on the model's scores follows from it
        return 0.5
    return float(1 / (1 + np.exp(intercept / slope)))


def equal_error(scores: np.ndarray, labels: np.ndarray) -> float:
    """The candidate threshold where sensitivity and specificity are closest."""
    candidates, sensitivity, specificity = threshold_operating_points(scores, labels == 1)
    return float(candidates[np.argmin(np.abs(sensitivity - specificity))])


RULES: dict[str, ThresholdRule] = {
    "youden": youden,
    "argmax": argmax,
    "balanced_logistic": balanced_logistic,
    "equal_error": equal_error,
}

#: Youden's J on the other validation subjects and the model's training subjects (where the file has them).
WITH_TRAINING = "youden_with_training"


def leave_one_out_balanced_accuracy(
    scores: np.ndarray,
    labels: np.ndarray,
    rule: ThresholdRule,
    training: tuple[np.ndarray, np.ndarray] | None = None,
) -> float:
    """Balanced accuracy of every subject classified at the threshold ``rule`` chose on the others.

    Args:
        scores: ``P(class 1)`` of the scored (validation) subjects.
        labels: their classes in ``{0, 1}``.
        rule: the threshold rule.
        training: ``(scores, labels)`` of subjects every choice may also use but that are never scored.

    Raises:
        ValueError: unless each class has at least two subjects (the rest must keep both classes).
    """
    if min(int((labels == 1).sum()), int((labels == 0).sum())) < 2:
        raise ValueError("leave-one-out needs at least two subjects of each class")
    extra_scores, extra_labels = training if training is not None else (scores[:0], labels[:0])
    keep = np.ones(labels.size, dtype=bool)
    predicted = np.zeros(labels.size, dtype=np.int64)
    for i in range(labels.size):
        keep[i] = False
        predicted[i] = scores[i] >= rule(
            np.concatenate([scores[keep], extra_scores]), np.concatenate([labels[keep], extra_labels])
        )
        keep[i] = True
    return float(balanced_accuracy_score(labels, predicted))


def _read_sides(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(P(class 1), labels, is_training)`` of the labelled rows of a ``threshold_predictions.csv`` (a file
    without a ``side`` column holds validation subjects only)."""
    probabilities, labels, subjects = read_predictions(path)
    with path.open(newline="", encoding="utf-8") as stream:
        side = {row["subject"]: row.get("side") or "val" for row in csv.DictReader(stream)}
    training = np.array([side[subject] == "train" for subject in subjects], dtype=bool)
    return np.asarray(probabilities)[:, 1], np.asarray(labels), training


def collect(run_dirs: Sequence[Path]) -> dict[str, dict[str, float]]:
    """``{"<run>/<model>": {rule: leave-one-out balanced accuracy}}`` for every model with threshold predictions.

    Raises:
        FileNotFoundError: naming a run folder without any ``*/eval/threshold_predictions.csv``.
    """
    results: dict[str, dict[str, float]] = {}
    for run_dir in map(Path, run_dirs):
        files = sorted(run_dir.glob("*/eval/threshold_predictions.csv"))
        if not files:
            raise FileNotFoundError(
                f"{run_dir}: no */eval/threshold_predictions.csv; evaluate the runs with this version's bundles."
            )
        for path in files:
            scores, labels, training = _read_sides(path)
            val_scores, val_labels = scores[~training], labels[~training]
            name = f"{run_dir.name}/{path.parent.parent.name}"
            results[name] = {r: leave_one_out_balanced_accuracy(val_scores, val_labels, f) for r, f in RULES.items()}
            if training.any():
                results[name][WITH_TRAINING] = leave_one_out_balanced_accuracy(
                    val_scores, val_labels, youden, (scores[training], labels[training])
                )
    return results


def format_markdown(results: dict[str, dict[str, float]], command: str) -> str:
    """Per rule: the models it was scored on, the mean leave-one-out balanced accuracy over them and their mean
    under ``youden``, and wins / losses against ``youden``."""
    lines = [
        "# Decision-threshold rules, compared on validation subjects only",
        "",
        f"{len(results)} models. For each validation subject, each rule chose a threshold on the model's other "
        f"validation subjects ({WITH_TRAINING}: and on the training subjects its file holds); the balanced "
        "accuracy of the held-out subjects scores the rule (leave one out). "
        f"No test subject is read. Command: `{command}`.",
        "",
        "| rule | models | mean balanced accuracy (leave one out) | youden on the same models | better than youden "
        "| worse than youden |",
        "|---|---|---|---|---|---|",
    ]
    for rule in [*RULES, WITH_TRAINING]:
        scored = [r for r in results.values() if rule in r]
        if not scored:
            continue
        better = sum(r[rule] > r["youden"] for r in scored)
        worse = sum(r[rule] < r["youden"] for r in scored)
        lines.append(
            f"| {rule} | {len(scored)} | {statistics.mean(r[rule] for r in scored):.3f} | "
            f"{statistics.mean(r['youden'] for r in scored):.3f} | {better} | {worse} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Score the rules on the runs given on the command line, write the Markdown file atomically and print it."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="pipeline output folders")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "threshold_rules.md", help="Markdown file"
    )
    args = parser.parse_args(argv)
    command = "python benchmarks/threshold_rules.py " + " ".join(str(d) for d in args.runs)
    text = format_markdown(collect(args.runs), command)
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
