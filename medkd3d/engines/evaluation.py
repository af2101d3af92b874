"""Evaluate any classifier (student or teacher, by the same code) and write its metrics to CSV and JSON."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import default_prepare_batch
from monai.inferers import Inferer
from torch import nn

from medkd3d.utils import atomic_write_text

from .metrics import ClassificationReport

__all__ = ["evaluate_classifier", "flatten_metrics", "write_metrics"]


def evaluate_classifier(
    network: nn.Module,
    data_loader: Iterable,
    device: str | torch.device = "cpu",
    class_names: Sequence[str] | None = None,
    inferer: Inferer | None = None,
    prepare_batch: Callable = default_prepare_batch,
    amp: bool = False,
) -> dict[str, Any]:
    """Run a MONAI ``SupervisedEvaluator`` over ``data_loader`` and return every classification metric.

    The network runs in eval mode without gradients; its ``forward`` output (logits; the mean of both heads
    for two-head students) is turned into probabilities by softmax.

    Args:
        network: the classifier, already on ``device``.
        data_loader: yields dictionaries with ``image`` and ``label``.
        device: where batches go.
        class_names: names of the classes for the per-class entries (e.g. ``["LGG", "HGG"]``).
        inferer: MONAI inferer; ``SimpleInferer`` by default.
        prepare_batch: MONAI ``prepare_batch`` callable.
        amp: CUDA autocast (ignored on other devices).

    Returns:
        :func:`~medkd3d.engines.metrics.classification_metrics` of all samples.
    """
    device = torch.device(device)
    evaluator = SupervisedEvaluator(
        device=device,
        val_data_loader=data_loader,
        network=network,
        inferer=inferer,
        prepare_batch=prepare_batch,
        amp=amp and device.type == "cuda",
        decollate=False,
    )
    ClassificationReport(class_names=class_names).attach(evaluator, "classification")
    evaluator.run()
    return evaluator.state.metrics["classification"]


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """One level of ``name -> scalar``: nested dicts join their keys with ``/`` and the confusion matrix becomes
    ``confusion_matrix/<true class>/<predicted class>`` (class names from ``metrics["class_names"]``)."""
    names = metrics.get("class_names")
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if key == "class_names":
            continue
        if key == "confusion_matrix":
            labels = names or [str(i) for i in range(len(value))]
            for true_name, row in zip(labels, value):
                for predicted_name, count in zip(labels, row):
                    flat[f"{key}/{true_name}/{predicted_name}"] = count
        elif isinstance(value, Mapping):
            flat.update({f"{key}/{inner}": v for inner, v in flatten_metrics(value).items()})
        else:
            flat[key] = value
    return flat


def _json_safe(value: Any) -> Any:
    """NaN/inf become ``null`` (strict JSON has no NaN); tensors/numpy scalars become Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(metrics: Mapping[str, Any], out_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write metrics to ``<out_dir>/<name>.json`` (nested, as given) and ``<out_dir>/<name>.csv`` (flattened,
    columns ``metric,value``), each atomically (:func:`medkd3d.utils.atomic_write_text`, so with the permissions
    of a plain ``open``, not a temporary file's ``0o600``).

    Args:
        metrics: e.g. the result of :func:`evaluate_classifier`.
        out_dir: created if missing.
        name: file stem, e.g. ``"student_test"``.

    Returns:
        The JSON and CSV paths.

    Raises:
        ValueError: if ``name`` is empty or contains a path separator.
    """
    if not name or os.sep in name or (os.altsep and os.altsep in name):
        raise ValueError(f"write_metrics: name={name!r} must be a plain file stem like 'student_test'.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / f"{name}.json", out_dir / f"{name}.csv"
    atomic_write_text(json_path, json.dumps(_json_safe(metrics), indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric", "value"])
    writer.writerows(flatten_metrics(_json_safe(metrics)).items())
    atomic_write_text(csv_path, buffer.getvalue())
    return json_path, csv_path
