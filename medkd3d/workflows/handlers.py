"""Ignite handlers the bundles add to MONAI's: atomic checkpoints and per-subject probability CSVs."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver, EarlyStopHandler
from monai.utils import evenly_divisible_all_gather, string_list_all_gather

from medkd3d.utils import atomic_write_text

__all__ = [
    "AtomicCheckpointSaver",
    "ClassProbabilityWriter",
    "ClassificationMetricsWriter",
    "TrainingCheckpoint",
    "ValidationEarlyStopping",
]

logger = logging.getLogger(__name__)


class _AtomicDiskSaver(DiskSaver):
    """Ignite ``DiskSaver`` that writes atomically and optionally always to one fixed file name.

    With a fixed name, ``remove`` is a no-op: the next save replaces the file in one ``os.replace``, whereas
    removing it first (what Ignite does when it drops a worse checkpoint) would leave a window without any.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename or filename, metadata)

    def remove(self, filename: str) -> None:
        if self.filename is None:
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` whose files are never half-written, plus a fixed-name "last" checkpoint.

    MONAI saves straight to the final file name (``torch.save`` into ``model.pt``), so a crash or a full disk
    during a save destroys the best model. Here every checkpoint goes to a temporary file that is renamed
    into place. The arguments are those of :class:`monai.handlers.CheckpointSaver`, plus ``interval_filename``.

    The saver is itself stateful (``state_dict``/``load_state_dict`` forward to the key-metric tracker), so a
    "last" checkpoint can include it and a resumed run keeps comparing against the best metric seen before the
    interruption instead of overwriting the best model with the first validation after resuming.

    Args:
        save_dir: directory of the checkpoints.
        save_dict: objects to save, e.g. ``{"model": network, "optimizer": optimizer, "trainer": trainer}``.
        interval_filename: fixed file name for the interval checkpoint (``save_interval > 0``), e.g.
            ``"last.pt"`` to keep only the most recent state for resuming; ``None`` keeps MONAI's names.
        kwargs: the other arguments of :class:`monai.handlers.CheckpointSaver`.
    """

    def __init__(self, save_dir: str, save_dict: dict, interval_filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        fixed_names = {
            "_final_checkpoint": kwargs.get("final_filename"),
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": interval_filename,
        }
        for attribute, filename in fixed_names.items():
            checkpoint = getattr(self, attribute)
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(save_dir, filename)

    def state_dict(self) -> dict:
        """The key-metric tracking state (which scores were saved), empty without key-metric saving."""
        return dict(self._key_metric_checkpoint.state_dict()) if self._key_metric_checkpoint is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the key-metric tracking state saved by :meth:`state_dict`."""
        if self._key_metric_checkpoint is not None and state_dict:
            self._key_metric_checkpoint.load_state_dict(state_dict)


class TrainingCheckpoint:
    """Save the whole training state after every epoch to one file, and resume from it on request.

    Attach it to the trainer. It saves ``save_dict`` plus the trainer itself (epoch and iteration counters) to
    ``path`` atomically after every epoch, replacing the previous state. With ``resume=True`` and an existing
    ``path``, the state is restored when the run starts, so training continues at the next epoch with the
    optimizer, learning-rate schedule and best-metric tracking it had. A bundle config cannot reference the
    trainer from one of its own handlers (that would be a reference cycle); this handler receives it in
    :meth:`attach` instead.

    Args:
        path: the checkpoint file, e.g. ``models/last.pt``.
        save_dict: the objects to save besides the trainer, e.g. ``{"model": net, "optimizer": opt,
            "lr_scheduler": sched, "best_model_saver": saver}``.
        resume: restore the state from ``path`` before training when it exists.
    """

    def __init__(self, path: str | os.PathLike, save_dict: Mapping[str, Any], resume: bool = False) -> None:
        self.path = Path(path)
        self.save_dict = dict(save_dict)
        self.resume = resume

    def attach(self, engine: Engine) -> None:
        """Attach the saver (and, when resuming, the loader) to the trainer ``engine``."""
        objects = {**self.save_dict, "trainer": engine}
        if self.resume:
            if self.path.is_file():
                CheckpointLoader(load_path=str(self.path), load_dict=objects, map_location="cpu").attach(engine)
            else:
                logger.warning("resume=True but there is no checkpoint %s yet: training from the start.", self.path)
        AtomicCheckpointSaver(
            save_dir=str(self.path.parent),
            save_dict=objects,
            save_interval=1,
            n_saved=1,
            interval_filename=self.path.name,
        ).attach(engine)


class ValidationEarlyStopping:
    """Stop training when the validator's key metric has not improved for ``patience`` validations.

    MONAI's ``EarlyStopHandler`` needs the trainer, which a validation handler in a bundle config cannot
    reference without a cycle; attached to the trainer, this handler hooks the stopper onto ``validator``.

    Args:
        validator: the evaluator run by ``ValidationHandler``; its key metric is the score (higher is better).
        patience: number of validations without improvement before stopping.
        min_delta: smallest increase that counts as an improvement.
    """

    def __init__(self, validator: Engine, patience: int, min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"early stopping patience must be >= 1 validations, got {patience}.")
        self.validator = validator
        self.patience = patience
        self.min_delta = min_delta

    def attach(self, engine: Engine) -> None:
        """Stop the trainer ``engine`` from the validator's epoch-completed event."""
        EarlyStopHandler(
            patience=self.patience, score_function=_key_metric, trainer=engine, min_delta=self.min_delta
        ).attach(self.validator)


def _key_metric(engine: Engine) -> float:
    return float(engine.state.metrics[engine.state.key_metric_name])


class ClassificationMetricsWriter:
    """Write an evaluator's classification metrics to ``<output_dir>/<name>.json`` and ``.csv`` when it completes.

    The metrics are those of a :class:`medkd3d.engines.ClassificationReport` attached to the evaluator under
    ``metric_name`` (accuracy, balanced accuracy, ROC AUC, F1, sensitivity, specificity, per-class precision and
    recall, confusion matrix); files are written atomically by :func:`medkd3d.engines.write_metrics`, by rank 0.

    Args:
        output_dir: directory of the files.
        metric_name: name of the ``ClassificationReport`` in ``engine.state.metrics``.
        name: file stem.
    """

    def __init__(
        self, output_dir: str | os.PathLike, metric_name: str = "classification", name: str = "metrics"
    ) -> None:
        self.output_dir = output_dir
        self.metric_name = metric_name
        self.name = name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from medkd3d.engines import write_metrics

        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        if self.metric_name not in engine.state.metrics:
            raise KeyError(
                f"No metric {self.metric_name!r} on the evaluator (it has {sorted(engine.state.metrics)}); add a "
                f"medkd3d.engines.ClassificationReport under that name to its additional_metrics."
            )
        json_path, _ = write_metrics(engine.state.metrics[self.metric_name], self.output_dir, self.name)
        engine.logger.info(f"Wrote evaluation metrics to {json_path} (and .csv).")


class ClassProbabilityWriter:
    """Write one CSV row per subject with the predicted class probabilities, on labelled or unlabelled data.

    Attach it to a MONAI evaluator whose postprocessing turns ``pred`` into probabilities (``Activationsd``
    with ``softmax=True``). Columns: ``subject``, ``prob_<class>`` for each class, ``predicted`` (class name)
    and, when the batch carries labels, ``label`` (class name). Under DDP the rows of all ranks are gathered
    and ``save_rank`` writes the file. The file is replaced atomically at the end of each run.

    Args:
        output_dir: directory of the CSV file (created when missing).
        class_names: class names in label-index order, e.g. ``["LGG", "HGG"]``.
        filename: CSV file name.
        subject_key: batch key with the subject identifier.
        label_key: batch key with the integer label; missing or ``None``/negative labels are left empty.
        pred_key: output key with the class probabilities.
        save_rank: rank that writes the file under DDP.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        filename: str = "predictions.csv",
        subject_key: str = "subject",
        label_key: str = "label",
        pred_key: str = "pred",
        save_rank: int = 0,
    ) -> None:
        self.path = Path(output_dir) / filename
        self.class_names = list(class_names)
        self.subject_key = subject_key
        self.label_key = label_key
        self.pred_key = pred_key
        self.save_rank = save_rank
        self._subjects: list[str] = []
        self._probabilities: list[torch.Tensor] = []
        self._labels: list[int] = []

    def attach(self, engine: Engine) -> None:
        """Collect rows on every iteration and write the file when the evaluation epoch completes."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, _engine: Engine) -> None:
        self._subjects, self._probabilities, self._labels = [], [], []

    def _collect(self, engine: Engine) -> None:
        # MONAI decollates both batch and output into lists of per-sample dicts; inputs stay in the batch.
        for item, output in zip(engine.state.batch, engine.state.output):
            probabilities = torch.as_tensor(output[self.pred_key]).detach().float().flatten().cpu()
            if probabilities.numel() != len(self.class_names):
                raise ValueError(
                    f"Subject {item.get(self.subject_key)!r}: the prediction has {probabilities.numel()} values but "
                    f"there are {len(self.class_names)} classes {self.class_names}; set class_names to match the "
                    "network's num_classes."
                )
            self._subjects.append(str(item.get(self.subject_key, f"sample_{len(self._subjects)}")))
            self._probabilities.append(probabilities)
            self._labels.append(_label_index(item.get(self.label_key)))

    def _write(self, engine: Engine) -> None:
        probabilities = (
            torch.stack(self._probabilities) if self._probabilities else torch.zeros(0, len(self.class_names))
        )
        labels = torch.tensor(self._labels, dtype=torch.long)
        subjects = self._subjects
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            probabilities = evenly_divisible_all_gather(probabilities, concat=True)
            labels = evenly_divisible_all_gather(labels, concat=True)
            subjects = string_list_all_gather(subjects)
            if torch.distributed.get_rank() != self.save_rank:
                return
        atomic_write_text(self.path, self._to_csv(subjects, probabilities, labels.tolist()))
        engine.logger.info(f"Wrote class probabilities of {len(subjects)} subjects to {self.path}.")

    def _to_csv(self, subjects: list[str], probabilities: torch.Tensor, labels: list[int]) -> str:
        rows = [["subject", *(f"prob_{name}" for name in self.class_names), "predicted", "label"]]
        for subject, probs, label in zip(subjects, probabilities.tolist(), labels):
            predicted = self.class_names[max(range(len(probs)), key=probs.__getitem__)]
            rows.append(
                [subject, *(f"{p:.6f}" for p in probs), predicted, self.class_names[label] if label >= 0 else ""]
            )
        return _csv_text(rows)


def _label_index(label: Any) -> int:
    """Integer class index of a batch label, ``-1`` when the subject is unlabelled."""
    if label is None:
        return -1
    value = torch.as_tensor(label).flatten()
    if value.numel() == 0:
        return -1
    # one-hot labels (after AsDiscreted(to_onehot=...)) hold the index as their argmax
    return int(value.argmax()) if value.numel() > 1 else int(value.item())


def _csv_text(rows: list[list[Any]]) -> str:
    """Render rows as CSV text with ``\\n`` line endings."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()
