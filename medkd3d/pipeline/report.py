"""The teacher/student comparison report of ``medkd3d pipeline``: one row per model, written as Markdown and CSV.

The report follows the package's evaluation protocol (DESIGN.md): every metric is on the held-out test subjects
(never seen by training or model selection), and the report states the split and ``n``, the chance level, a
trivial baseline fitted on the training and validation subjects of the same split
(:func:`medkd3d.engines.trivial_baseline`), each model's AUC with a 95% bootstrap CI from its per-subject
probabilities, flags in words (one-class predictions, an AUC interval that includes 0.5, few test subjects), and
for students both retentions against their teacher: the AUC ratio and the margin retention of the balanced
accuracy over chance (:func:`medkd3d.engines.margin_retention`), which a constant classifier cannot pass. A
distilled student with a no-KD twin (the same bundle, split and recipe trained with ``kd_mode=none``) also gets its
KD gain, paired on the same test subjects: AUC and balanced accuracy of the student minus the twin's.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medkd3d.reporting import format_interval, format_value, markdown_table, write_csv, write_markdown

__all__ = [
    "METRIC_COLUMNS",
    "ModelResult",
    "add_honesty",
    "add_kd_gains",
    "add_teacher_ratios",
    "baseline_result",
    "bundle_evaluation_split",
    "read_predictions",
    "write_report",
]

#: Evaluation metrics shown per model (keys of :func:`medkd3d.engines.classification_metrics`; ``threshold`` is the
#: decision threshold the others used, chosen on the validation subjects by the bundles' ``evaluate.json``).
METRIC_COLUMNS: tuple[str, ...] = (
    "auc", "balanced_accuracy", "accuracy", "f1", "sensitivity", "specificity", "threshold",
)  # fmt: skip

#: Column titles of the Markdown report.
_LABELS = {"balanced_accuracy": "balanced accuracy", "f1": "F1", "threshold": "decision threshold"}

#: Role of the trivial baseline's row.
BASELINE_ROLE = "baseline"
#: Role of a student trained without KD (``kd_mode=none``), the reference of its distilled twin's KD gain.
NO_KD_ROLE = "student (no KD)"
#: Columns of a distilled student's KD gain over its no-KD twin (:func:`add_kd_gains`).
KD_GAIN_COLUMNS: tuple[str, ...] = ("kd_auc_gain", "kd_balanced_accuracy_gain")


@dataclass
class ModelResult:
    """Everything the report says about one trained model (or the trivial baseline).

    Args:
        bundle: bundle name (a no-KD twin: ``<bundle>_no_kd``; the baseline: what it is).
        role: ``"teacher"``, ``"student"``, ``"student (no KD)"`` (:data:`NO_KD_ROLE`) or ``"baseline"``.
        teacher: bundle name of its teacher (students only).
        network: class name of the network.
        input_per_subject: what one subject's prediction takes, e.g. ``"1 x [4, 128, 128, 128]"``.
        metrics: test metrics (``METRIC_COLUMNS``, ``num_samples``, ``confusion_matrix``...).
        parameters: number of parameters.
        gflops: GFLOPs of one subject's prediction.
        latency_ms: median CPU latency of one subject's prediction, eager PyTorch.
        exports: export format -> file.
        export_max_abs_diff: export format -> largest |exported - eager| logit difference over the random and real parity inputs.
        export_error: why the model's export failed its parity check (empty when it passed or was not exported).
        ratios: filled by :func:`add_teacher_ratios`.
        probabilities: ``[N][K]`` per-subject test probabilities (:func:`read_predictions`), for the AUC CI.
        labels: ``[N]`` true classes of those subjects.
        auc_ci: filled by :func:`add_honesty`: 95% bootstrap CI of the AUC.
        flags: filled by :func:`add_honesty` (and :func:`add_teacher_ratios` for students): warnings in words.
        no_kd_twin: ``bundle`` of the row of the same student trained without KD (distilled students only).
        kd_gain: filled by :func:`add_kd_gains` for a student with a ``no_kd_twin``: :data:`KD_GAIN_COLUMNS`.
    """

    bundle: str
    role: str
    teacher: str | None
    network: str
    input_per_subject: str
    metrics: dict[str, Any]
    parameters: int
    gflops: float
    latency_ms: float
    exports: dict[str, str] = field(default_factory=dict)
    export_max_abs_diff: dict[str, float] = field(default_factory=dict)
    export_error: str = ""
    ratios: dict[str, float] = field(default_factory=dict)
    probabilities: list[list[float]] | None = None
    labels: list[int] | None = None
    auc_ci: tuple[float, float] = (math.nan, math.nan)
    flags: list[str] = field(default_factory=list)
    no_kd_twin: str | None = None
    kd_gain: dict[str, float] = field(default_factory=dict)


def read_predictions(path: str | os.PathLike) -> tuple[list[list[float]], list[int], list[str]]:
    """Read the per-subject probabilities written by :class:`~medkd3d.engines.ClassProbabilityWriter`.

    Args:
        path: ``evaluation_predictions.csv`` (columns ``subject``, ``prob_<class>``..., ``predicted``, ``label``).

    Returns:
        ``(probabilities [N][K], labels [N], subjects [N])`` of the labelled rows, classes in column order.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if a label is not one of the ``prob_<class>`` classes.
    """
    with Path(path).open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    columns = [c for c in (rows[0] if rows else {}) if c.startswith("prob_")]
    names = [c[len("prob_") :] for c in columns]
    probabilities, labels, subjects = [], [], []
    for row in rows:
        if not row.get("label"):
            continue
        if row["label"] not in names:
            raise ValueError(f"{path}: subject {row['subject']!r} has label {row['label']!r}, not one of {names}")
        probabilities.append([float(row[c]) for c in columns])
        labels.append(names.index(row["label"]))
        subjects.append(row["subject"])
    return probabilities, labels, subjects


def bundle_evaluation_split(
    bundle_root: str | os.PathLike, overrides: Mapping[str, Any] | None = None
) -> tuple[dict[str, list[dict[str, Any]]], str]:
    """The split a bundle's ``train.json`` + ``evaluate.json`` use with these overrides, and the evaluated side.

    Parsing the bundle's own ``split`` component (not re-deriving it) keeps the baseline on exactly the subjects
    the models were trained, selected and tested on, whatever ``fold``, ``seed``, ``test_fraction`` or
    ``splits_file`` the overrides set.

    Args:
        bundle_root: the bundle directory.
        overrides: the config overrides the bundle ran with.

    Returns:
        ``(split, evaluate_split)``: ``{"train": [...], "val": [...], "test": [...]}`` records and e.g. ``"test"``.
    """
    from monai.bundle import ConfigParser

    configs = Path(bundle_root).resolve() / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "evaluate.json")])
    parser.update({"bundle_root": str(configs.parent), **dict(overrides or {})})
    return parser.get_parsed_content("split"), str(parser.get_parsed_content("evaluate_split"))


def baseline_result(
    split: Mapping[str, Sequence[Mapping[str, Any]]],
    class_names: Sequence[str] | None = None,
    evaluate_split: str = "test",
) -> ModelResult:
    """The report row of the trivial baseline: fitted on the training and validation subjects, scored on
    ``split[evaluate_split]`` (see :func:`medkd3d.engines.trivial_baseline`).

    Args:
        split: the models' split (:func:`bundle_evaluation_split`).
        class_names: class names in label order.
        evaluate_split: the side the models are reported on.

    Returns:
        A :class:`ModelResult` with role ``"baseline"`` and its per-subject probabilities.
    """
    from medkd3d.engines.baseline import BASELINE_NAME, DEFAULT_PERCENTILES, trivial_baseline

    train = [r for side in ("train", "val") if side != evaluate_split for r in split.get(side, [])]
    result = trivial_baseline(train, list(split[evaluate_split]), class_names)
    num_classes = result.probabilities.shape[1]
    num_modalities = len(train[0]["image"]) if train and isinstance(train[0].get("image"), list) else 1
    features = num_modalities * len(DEFAULT_PERCENTILES)
    return ModelResult(
        bundle=BASELINE_NAME,
        role=BASELINE_ROLE,
        teacher=None,
        network="LogisticRegression",
        input_per_subject=f"{num_modalities} x {len(DEFAULT_PERCENTILES)} percentiles",
        metrics=result.metrics,
        parameters=(features + 1) * (1 if num_classes == 2 else num_classes),
        gflops=math.nan,
        latency_ms=math.nan,
        probabilities=result.probabilities.tolist(),
        labels=result.labels.tolist(),
    )


def _predicted_one_class(metrics: Mapping[str, Any]) -> str | None:
    """The class predicted for every subject, read from the confusion matrix (columns: predicted classes)."""
    if not metrics.get("confusion_matrix"):
        return None
    matrix = np.asarray(metrics["confusion_matrix"])
    used = np.flatnonzero(matrix.sum(axis=0))
    if used.size != 1:
        return None
    names = metrics.get("class_names") or [str(i) for i in range(matrix.shape[1])]
    return str(names[int(used[0])])


def add_honesty(
    results: Sequence[ModelResult], num_resamples: int = 2000, seed: int = 0, baseline_auc: float | None = None
) -> None:
    """Fill each result's ``auc_ci`` and ``flags`` (one class, AUC CI includes 0.5 or lies below it, below the
    trivial baseline's ``baseline_auc``, few subjects), in place.

    The metrics themselves are left as evaluated. The one-class flag is read from the confusion matrix of the
    metrics (the evaluator's own predictions), else from the per-subject probabilities; the AUC CI needs the
    per-subject ``probabilities`` and a binary task, and stays NaN otherwise.
    """
    from medkd3d.engines.honesty import auc_bootstrap_ci, honesty_flags, predicts_one_class

    for result in results:
        probabilities = np.asarray(result.probabilities or [], dtype=float)
        labels = np.asarray(result.labels or [], dtype=np.int64)
        n = int(result.metrics.get("num_samples", labels.size))
        one_class = _predicted_one_class(result.metrics)
        if one_class is None and "confusion_matrix" not in result.metrics and probabilities.size:
            single = predicts_one_class(probabilities)
            names = result.metrics.get("class_names") or [str(i) for i in range(probabilities.shape[1])]
            one_class = None if single is None else str(names[single])
        if probabilities.ndim == 2 and probabilities.shape[1] == 2 and labels.size:
            result.auc_ci = auc_bootstrap_ci(probabilities[:, 1], labels == 1, num_resamples=num_resamples, seed=seed)
        auc = result.metrics.get("auc")
        is_baseline = result.role == BASELINE_ROLE
        result.flags = honesty_flags(
            n, one_class, result.auc_ci, auc=auc, baseline_auc=None if is_baseline else baseline_auc
        )


def add_teacher_ratios(results: Sequence[ModelResult]) -> None:
    """Fill each student's ``ratios`` relative to its teacher (in ``results``), in place.

    ``params_ratio`` and ``gflops_ratio`` are student / teacher (smaller is a stronger compression), ``speedup``
    is teacher latency / student latency, ``auc_ratio`` is student AUC / teacher AUC and
    ``balanced_accuracy_margin_retention`` is ``(student - chance) / (teacher - chance)`` of the balanced accuracy
    (chance ``1 / K``; NaN, with a flag on the student, when the teacher is at or below chance).
    """
    from medkd3d.engines.honesty import retention

    by_bundle = {r.bundle: r for r in results}
    for result in results:
        teacher = by_bundle.get(result.teacher or "")
        if teacher is None:
            continue
        num_classes = len(result.metrics.get("class_names") or [0, 1])
        kept = retention(result.metrics, teacher.metrics, chance=1.0 / num_classes)
        result.ratios = {
            "params_ratio": _ratio(result.parameters, teacher.parameters),
            "gflops_ratio": _ratio(result.gflops, teacher.gflops),
            "speedup": _ratio(teacher.latency_ms, result.latency_ms),
            "auc_ratio": kept.auc_ratio,
            "balanced_accuracy_margin_retention": kept.margin_retention,
        }
        result.flags = [*result.flags, *(f for f in kept.flags if f not in result.flags)]


def add_kd_gains(results: Sequence[ModelResult]) -> None:
    """Fill the ``kd_gain`` of each student with a ``no_kd_twin`` in ``results``, in place.

    The gain is paired: ``kd_auc_gain`` and ``kd_balanced_accuracy_gain`` are the student's test AUC and balanced
    accuracy minus its twin's, on the same test subjects. Twins whose labels differ from the student's (not the
    same subjects) leave the gain NaN and flag the student.
    """
    by_bundle = {r.bundle: r for r in results}
    for result in results:
        twin = by_bundle.get(result.no_kd_twin or "")
        if twin is None:
            continue
        if result.labels is not None and twin.labels is not None and list(result.labels) != list(twin.labels):
            result.kd_gain = dict.fromkeys(KD_GAIN_COLUMNS, math.nan)
            result.flags = [*result.flags, f"KD gain undefined: {twin.bundle} was tested on other subjects"]
            continue
        result.kd_gain = {
            "kd_auc_gain": _difference(result.metrics.get("auc"), twin.metrics.get("auc")),
            "kd_balanced_accuracy_gain": _difference(
                result.metrics.get("balanced_accuracy"), twin.metrics.get("balanced_accuracy")
            ),
        }


def _difference(a: float | None, b: float | None) -> float:
    return math.nan if a is None or b is None else float(a) - float(b)


def _ratio(numerator: float | None, denominator: float | None) -> float:
    if numerator is None or denominator is None or not denominator or math.isnan(denominator):
        return math.nan
    return float(numerator) / float(denominator)


_ROW_EXCLUDED = (
    "metrics", "ratios", "exports", "export_max_abs_diff", "probabilities", "labels", "auc_ci", "flags", "kd_gain"
)  # fmt: skip


def _rows(results: Sequence[ModelResult]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        row = {k: v for k, v in asdict(r).items() if k not in _ROW_EXCLUDED}
        row["n"] = r.metrics.get("num_samples")
        row.update({name: r.metrics.get(name) for name in METRIC_COLUMNS})
        row.update({"auc_ci_low": r.auc_ci[0], "auc_ci_high": r.auc_ci[1]})
        row.update({name: r.ratios.get(name) for name in _ratio_columns(results)})
        row.update({name: r.kd_gain.get(name) for name in _kd_gain_columns(results)})
        row["flags"] = "; ".join(r.flags)
        row.update({f"export_{fmt}": path for fmt, path in r.exports.items()})
        row.update({f"export_{fmt}_max_abs_diff": diff for fmt, diff in r.export_max_abs_diff.items()})
        rows.append(row)
    return rows


def _ratio_columns(results: Sequence[ModelResult]) -> list[str]:
    return list(dict.fromkeys(name for r in results for name in r.ratios))


def _kd_gain_columns(results: Sequence[ModelResult]) -> list[str]:
    return list(KD_GAIN_COLUMNS) if any(r.kd_gain for r in results) else []


def _test_labels(results: Sequence[ModelResult]) -> tuple[list[int], list[str]] | None:
    """The labels and class names of the evaluated subjects (from the first result with per-subject labels)."""
    for r in results:
        if r.labels is not None:
            return list(r.labels), list(r.metrics.get("class_names") or [])
    return None


def _chance_context(results: Sequence[ModelResult], evaluate_split: str) -> dict[str, str]:
    """The report's header lines on the evaluated subjects: split, n per class, chance levels."""
    from medkd3d.engines.honesty import chance_levels

    found = _test_labels(results)
    n = max((int(r.metrics.get("num_samples", 0)) for r in results), default=0)
    if found is None:
        return {"evaluation split": f"{evaluate_split} (n = {n} subjects)"}
    labels, names = found
    names = names or [str(i) for i in range(max(labels, default=0) + 1)]
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(names))
    chance = chance_levels(labels, len(names))
    per_class = ", ".join(f"{c} {name}" for name, c in zip(names, counts.tolist()))
    return {
        "evaluation split": f"{evaluate_split}, n = {len(labels)} subjects ({per_class}); the decision threshold "
        "and any model selection (early stopping, model_selection best) used the validation subjects only",
        "chance level": f"AUC {chance['auc']:.3f}, balanced accuracy {chance['balanced_accuracy']:.3f}, "
        f"accuracy {chance['accuracy']:.3f} (always predicting the majority class)",
    }


def _model_cells(r: ModelResult) -> list[str]:
    """One row of the report's model table."""
    metrics = [format_value(r.metrics.get(m)) for m in METRIC_COLUMNS]
    return [
        r.bundle, r.role, r.network, r.input_per_subject, format_value(r.metrics.get("num_samples")),
        metrics[0], format_interval(*r.auc_ci), *metrics[1:],
        f"{r.parameters:,}", format_value(r.gflops, 2), format_value(r.latency_ms, 1),
    ]  # fmt: skip


def _markdown(results: Sequence[ModelResult], context: Mapping[str, Any], evaluate_split: str) -> str:
    lines = ["# medkd3d: teacher vs student comparison", ""]
    lines += [f"- {key}: {value}" for key, value in {**_chance_context(results, evaluate_split), **context}.items()]
    shown = ("AUC", "AUC 95% CI", *(_LABELS.get(m, m) for m in METRIC_COLUMNS[1:]))
    lines += [
        "",
        "## Models",
        "",
        f"Metrics are on the held-out {evaluate_split} subjects, the same for every model; the AUC interval is a "
        "stratified bootstrap of the subjects (2,000 resamples). Balanced accuracy, accuracy, F1, sensitivity and "
        "specificity call a subject class 1 when its probability reaches the decision threshold, chosen for each "
        "model on the validation subjects (maximal sensitivity + specificity, Youden's J; n/a: the argmax); AUC "
        "does not depend on it. "
        + (
            "The trivial baseline is a logistic regression on per-modality intensity percentiles of the brain, fitted "
            "on the other subjects of the same split (training and validation). "
            if any(r.role == BASELINE_ROLE for r in results)
            else "No trivial baseline was computed for this report (see the log). "
        )
        + "GFLOPs and latency are per subject (2.5D students classify several slice stacks per subject); latency "
        "is the median of eager PyTorch forward passes on this machine's CPU."
        + (
            f" A '{NO_KD_ROLE}' row (<bundle>_no_kd) is the same student bundle, split and recipe trained with "
            "kd_mode=none, the reference of its student's KD gain: its student's network but for what only distillation "
            "gives (the HDKD student's compartment readout), counted from its own checkpoint; it is neither timed nor "
            "exported."
            if any(r.role == NO_KD_ROLE for r in results)
            else ""
        ),
        "",
    ]
    header = ["bundle", "role", "network", "input per subject", "n", *shown, "parameters", "GFLOPs", "CPU latency (ms)"]
    lines += markdown_table(header, [_model_cells(r) for r in results])
    lines += ["", "## Flags", ""]
    flagged = [r for r in results if r.flags]
    lines += [f"- {r.bundle}: {'; '.join(r.flags)}" for r in flagged] or ["No model is flagged."]
    students = [r for r in results if r.ratios]
    if students:
        columns, gains = _ratio_columns(results), _kd_gain_columns(results)
        lines += [
            "",
            "## Students relative to their teachers",
            "",
            "params_ratio and gflops_ratio: student / teacher; speedup: teacher latency / student latency; auc_ratio: "
            "student AUC / teacher AUC (n/a when the teacher's AUC is at or below 0.5); "
            "balanced_accuracy_margin_retention: (student - chance) / (teacher - chance) "
            "of the balanced accuracy (0 for a student at chance, e.g. one that predicts one class; n/a when the "
            "teacher is at chance)."
            + (
                " kd_auc_gain and kd_balanced_accuracy_gain: the distilled student minus its no-KD twin, on the same "
                "test subjects (one run each, no interval: benchmarks/bench_kd.py measures the paired KD gain over "
                "seeds and folds)."
                if gains
                else ""
            ),
            "",
        ]
        table = [
            [
                r.bundle,
                r.teacher,
                *(format_value(v) for v in [*(r.ratios[c] for c in columns), *(r.kd_gain.get(c) for c in gains)]),
            ]
            for r in students
        ]
        lines += markdown_table(["student", "teacher", *columns, *gains], table)
    exported = [r for r in results if r.exports]
    failed = [r for r in results if r.export_error]
    if exported or failed:
        table = [
            [r.bundle, fmt, path, format_value(r.export_max_abs_diff.get(fmt), 6)]
            for r in exported
            for fmt, path in r.exports.items()
        ]
        lines += ["", "## Exports", ""]
        lines += markdown_table(["bundle", "format", "file", "max abs logit diff vs eager"], table) if table else []
        lines += [f"- **{r.bundle}: export failed.** {r.export_error}" for r in failed]
    return "\n".join(lines) + "\n"


def write_report(
    results: Sequence[ModelResult],
    out_dir: str | os.PathLike,
    context: Mapping[str, Any] | None = None,
    baseline: ModelResult | None = None,
    evaluate_split: str = "test",
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.csv`` to ``out_dir``, each atomically.

    Args:
        results: one entry per model; AUC intervals and flags (:func:`add_honesty`), students' ratios
            (:func:`add_teacher_ratios`) and KD gains over their no-KD twins (:func:`add_kd_gains`) are filled here.
        out_dir: destination directory.
        context: run facts listed at the top of the Markdown report (dataset, epochs, machine...), after the
            evaluated split, ``n`` and the chance level.
        baseline: the trivial baseline on the same split (:func:`baseline_result`), shown as the first row.
        evaluate_split: the side of the split the metrics are on.

    Returns:
        The Markdown and CSV paths.
    """
    rows = [*([baseline] if baseline is not None else []), *results]
    add_honesty(rows, baseline_auc=baseline.metrics.get("auc") if baseline is not None else None)
    add_teacher_ratios(rows)
    add_kd_gains(rows)
    out_dir = Path(out_dir)
    markdown = write_markdown(out_dir / "report.md", _markdown(rows, dict(context or {}), evaluate_split))
    table = write_csv(out_dir / "report.csv", _rows(rows))
    return markdown, table
