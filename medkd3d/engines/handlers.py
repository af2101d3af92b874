"""Ignite handlers the bundles add to MONAI's: atomic checkpoints, per-subject probability CSVs, readable metric logs."""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver, EarlyStopHandler, StatsHandler
from monai.utils import evenly_divisible_all_gather, string_list_all_gather

from medkd3d.bundles.io import attach_config
from medkd3d.engines.metrics import predicted_classes
from medkd3d.reporting import csv_text
from medkd3d.utils import atomic_path, atomic_write_text, lock_folder, remove_stale_temp_files, unlock_folder

__all__ = [
    "AtomicCheckpointSaver",
    "ClassProbabilityWriter",
    "ClassificationMetricsWriter",
    "MetricsStatsHandler",
    "RandomStates",
    "TrainingCheckpoint",
    "ValidationEarlyStopping",
    "metric_lines",
]

logger = logging.getLogger(__name__)


class _AtomicDiskSaver(DiskSaver):
    """Ignite ``DiskSaver`` that writes atomically and optionally always to one fixed file name.

    With a fixed name, ``remove`` is a no-op: the next save replaces the file in one ``os.replace``, whereas
    removing it first (what Ignite does when it drops a worse checkpoint) would leave a window without any.
    """

    def __init__(
        self, dirname: str | os.PathLike, filename: str | None = None, config: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(dirname=dirname, atomic=True, create_dir=True, require_empty=False)
        self.filename = filename
        self.config = config

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        # medkd3d's atomic writer rather than Ignite's: its temporary file names the target and the writer's pid,
        # so a later run can remove what a killed save left (Ignite's anonymous ``tmpXXXXXXXX`` files pile up)
        if self.config is not None:
            checkpoint = attach_config(checkpoint, self.config)
        with atomic_path(self.dirname / (self.filename or filename)) as tmp, tmp.open("wb") as stream:
            torch.save(checkpoint, stream, **self.kwargs)

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

    A final checkpoint (``save_final``) is written when the run completes, never when it fails: MONAI also saves
    it on an exception, which with ``final_filename="model.pt"`` would put a half-trained network - or an untrained
    one, for a run refused at its start - where a finished model is expected, over the one a complete run left.
    A failed run resumes from ``last.pt`` (:class:`TrainingCheckpoint`).

    Args:
        save_dir: directory of the checkpoints.
        save_dict: objects to save, e.g. ``{"model": network, "optimizer": optimizer, "trainer": trainer}``.
        interval_filename: fixed file name for the interval checkpoint (``save_interval > 0``), e.g.
            ``"last.pt"`` to keep only the most recent state for resuming; ``None`` keeps MONAI's names.
        config: the configuration the run trains with (:func:`medkd3d.export.bundle.run_config`, plain data),
            stored in every checkpoint file so that export, inference and students can check that they build the
            same network (:func:`medkd3d.export.bundle.check_checkpoint_config`); ``None`` stores nothing.
        kwargs: the other arguments of :class:`monai.handlers.CheckpointSaver`.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        interval_filename: str | None = None,
        config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, **kwargs)
        # MONAI offers no public way to choose the saver of its three ignite ``Checkpoint``s, so their private
        # attributes are used; tests/misc/test_monai_private_api.py fails when a MONAI release renames them.
        fixed_names = {
            "_final_checkpoint": kwargs.get("final_filename"),
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": interval_filename,
        }
        for attribute, filename in fixed_names.items():
            checkpoint = getattr(self, attribute)
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(save_dir, filename, config)
        self.config = config

    def attach(self, engine: Engine) -> None:
        """Attach as MONAI does, without its save of the final checkpoint on an exception (see the class).

        The exception handler is never registered rather than removed afterwards: an engine that has had an
        ``EXCEPTION_RAISED`` handler swallows exceptions once the list is empty.
        """
        final, self._final_checkpoint = self._final_checkpoint, None
        try:
            super().attach(engine)  # the key-metric and interval checkpoints, as MONAI attaches them
        finally:
            self._final_checkpoint = final
        if final is not None:
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def state_dict(self) -> dict:
        """The key-metric tracking state (which scores were saved), empty without key-metric saving."""
        return dict(self._key_metric_checkpoint.state_dict()) if self._key_metric_checkpoint is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the key-metric tracking state saved by :meth:`state_dict`."""
        if self._key_metric_checkpoint is not None and state_dict:
            self._key_metric_checkpoint.load_state_dict(state_dict)


class TrainingCheckpoint:
    """Save the whole training state after every epoch to one file, and resume from it on request.

    Attach it to the trainer. It saves ``save_dict`` plus the trainer itself (epoch and iteration counters) and
    the random number generators (see :class:`RandomStates`) to ``path`` atomically after every epoch, replacing
    the previous state. With ``resume=True`` and an existing ``path``, the state is restored when the run starts,
    so training continues at the next epoch with the optimizer, learning-rate schedule, best-metric tracking and
    random streams it had: on the CPU a resumed run reproduces the uninterrupted one bit for bit. A bundle config
    cannot reference the trainer from one of its own handlers (that would be a reference cycle); this handler
    receives it in :meth:`attach` instead.

    When the run starts, the checkpoint folder is locked (:func:`medkd3d.utils.lock_folder`) until it completes,
    so a second run into the same folder stops with a message naming the folder and the running one instead of
    overwriting its best model; then the temporary files of killed checkpoint writes are removed.

    Args:
        path: the checkpoint file, e.g. ``models/last.pt``.
        save_dict: the objects to save besides the trainer, e.g. ``{"model": net, "optimizer": opt,
            "lr_scheduler": sched, "best_model_saver": saver}``.
        resume: restore the state from ``path`` before training when it exists.
        config: the configuration the run trains with, stored in the file under ``"config"`` (see
            :class:`AtomicCheckpointSaver`); by default that of ``save_dict["best_model_saver"]`` when it has one.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        save_dict: Mapping[str, Any],
        resume: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.save_dict = dict(save_dict)
        self.resume = resume
        self.config = config if config is not None else getattr(save_dict.get("best_model_saver"), "config", None)

    def attach(self, engine: Engine) -> None:
        """Attach the folder lock, the saver (and, when resuming, the loader) to the trainer ``engine``."""
        # registered first, so the folder is ours before anything in it is read or written
        engine.add_event_handler(Events.STARTED, self._take_folder)
        engine.add_event_handler(Events.COMPLETED, self._release_folder)
        objects = {**self.save_dict, "trainer": engine}
        random_states = RandomStates(engine)
        if self.resume:
            if self.path.is_file():
                CheckpointLoader(load_path=str(self.path), load_dict=objects, map_location="cpu").attach(engine)
                # after the loader, so that nothing it restores draws from the generators once they are restored
                engine.add_event_handler(Events.STARTED, self._restore_random_states, random_states)
            else:
                logger.warning("resume=True but there is no checkpoint %s yet: training from the start.", self.path)
        AtomicCheckpointSaver(
            save_dir=str(self.path.parent),
            save_dict={**objects, RANDOM_STATES_KEY: random_states},
            save_interval=1,
            n_saved=1,
            interval_filename=self.path.name,
            config=self.config,
        ).attach(engine)

    def _take_folder(self, _engine: Engine) -> None:
        if idist.get_rank() != 0:  # only rank 0 writes checkpoints under DDP
            return
        folder = self.path.parent
        lock_folder(folder, purpose=f"training into {self.path.name}")
        remove_stale_temp_files(folder)
        # Ignite's atomic saver (used before medkd3d's) left anonymous ``tmpXXXXXXXX`` files on a kill; with the
        # folder locked, no other writer of this folder can own one
        for leftover in folder.iterdir():
            if _IGNITE_TEMP.fullmatch(leftover.name) and leftover.is_file():
                leftover.unlink(missing_ok=True)
                logger.info("Removed %s, left by an interrupted checkpoint write.", leftover)

    def _release_folder(self, _engine: Engine) -> None:
        if idist.get_rank() == 0:
            unlock_folder(self.path.parent)

    def _restore_random_states(self, _engine: Engine, random_states: RandomStates) -> None:
        checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
        if RANDOM_STATES_KEY in checkpoint:
            random_states.load_state_dict(checkpoint[RANDOM_STATES_KEY])
        else:
            logger.warning(
                "%s has no random number generator states (an older checkpoint): the resumed run continues "
                "correctly but does not reproduce an uninterrupted one exactly.",
                self.path,
            )


#: Key of the :class:`RandomStates` in a :class:`TrainingCheckpoint` file.
RANDOM_STATES_KEY = "random_states"

#: Names of the temporary files of ``tempfile.NamedTemporaryFile`` (Ignite's atomic checkpoint writes).
_IGNITE_TEMP = re.compile(r"tmp[a-z0-9_]{8}")


class RandomStates:
    """The random number generators a training run draws from, as a state dict of tensors and plain values.

    It covers PyTorch's CPU (and, when available, CUDA) generators, NumPy's and Python's global generators, the
    data loader's and its sampler's own generators when they have one, and the ``RandomState`` of every MONAI
    randomizable transform of the loader's dataset: with ``num_workers=0`` those transforms draw in the main
    process across epochs, so a resumed run needs their states, not fresh seeds. With workers, each epoch's
    workers are seeded from PyTorch's generator (restored here) unless ``persistent_workers`` keeps them alive.
    Everything is stored as tensors and numbers, so ``torch.load(..., weights_only=True)`` reads it.

    Args:
        engine: the trainer; its ``data_loader`` (a MONAI trainer's) is inspected for generators and transforms.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _loader(self) -> Any:
        return getattr(self.engine, "data_loader", None)

    def _loader_generators(self) -> list[torch.Generator | None]:
        loader = self._loader()
        return [getattr(loader, "generator", None), getattr(getattr(loader, "sampler", None), "generator", None)]

    def _transform_states(self) -> list[np.random.RandomState]:
        dataset = getattr(self._loader(), "dataset", None)
        return _random_states_of(dataset) if dataset is not None else []

    def state_dict(self) -> dict[str, Any]:
        """The current states (see the class docstring)."""
        version, mt_state, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # NumPy's legacy global generator: the one third-party code (and np.random.* calls) draw from
            "numpy": _numpy_state(np.random.get_state()),  # noqa: NPY002
            "python": [version, list(mt_state), gauss],
            "loader": [None if g is None else g.get_state() for g in self._loader_generators()],
            "transforms": [_numpy_state(r.get_state()) for r in self._transform_states()],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the states saved by :meth:`state_dict`; a part that no longer matches is skipped with a warning."""
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        np.random.set_state(_from_numpy_state(state_dict["numpy"]))  # noqa: NPY002
        version, mt_state, gauss = state_dict["python"]
        random.setstate((version, tuple(mt_state), gauss))
        for generator, saved in zip(self._loader_generators(), state_dict["loader"]):
            if generator is not None and saved is not None:
                generator.set_state(saved)
        transforms = self._transform_states()
        if len(transforms) != len(state_dict["transforms"]):
            logger.warning(
                "The checkpoint has the random states of %d transforms but the data pipeline has %d: the "
                "transforms keep fresh seeds and the resumed run will not reproduce an uninterrupted one exactly.",
                len(state_dict["transforms"]),
                len(transforms),
            )
            return
        for generator, saved in zip(transforms, state_dict["transforms"]):
            generator.set_state(_from_numpy_state(saved))


def _numpy_state(state: tuple) -> dict[str, Any]:
    """A NumPy ``MT19937`` state tuple as tensors and numbers (``weights_only`` loading refuses arrays)."""
    _, keys, position, has_gauss, cached_gaussian = state
    return {
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "pos": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _from_numpy_state(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return "MT19937", keys, state["pos"], state["has_gauss"], state["cached_gaussian"]


def _random_states_of(root: Any) -> list[np.random.RandomState]:
    """The ``RandomState`` (``.R``) of every MONAI randomizable object reachable from ``root``, in a fixed order.

    The walk follows :func:`monai.data.utils.set_rnd` (what seeds the transforms of a MONAI data loader: object
    attributes, lists and tuples, no dicts, so cached data is not visited) but also enters randomizable
    objects, as a ``Compose`` holds the randomizable transforms it seeds.
    """
    found: list[np.random.RandomState] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen or isinstance(obj, (torch.Tensor, np.ndarray, str, bytes)):
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)
            return
        state = getattr(obj, "R", None) if hasattr(obj, "set_random_state") else None
        if isinstance(state, np.random.RandomState) and id(state) not in seen:
            seen.add(id(state))
            found.append(state)
        for key, value in getattr(obj, "__dict__", {}).items():
            if not key.startswith("__"):
                visit(value)

    visit(root)
    return found


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
        from medkd3d.engines.evaluation import write_metrics

        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        if self.metric_name not in engine.state.metrics:
            raise KeyError(
                f"No metric {self.metric_name!r} on the evaluator (it has {sorted(engine.state.metrics)}); add a "
                f"medkd3d.engines.ClassificationReport under that name to its additional_metrics."
            )
        json_path, _ = write_metrics(engine.state.metrics[self.metric_name], self.output_dir, self.name)
        engine.logger.info(f"Wrote evaluation metrics to {json_path} (and .csv).")


def metric_lines(metrics: Mapping[str, Any], key_var_format: str = "{}: {:.4f}") -> list[str]:
    """One ``name: value`` line per metric of ``engine.state.metrics``.

    Nested reports (a :class:`medkd3d.engines.ClassificationReport`) are flattened with ``/`` joining the names, so
    ``precision/LGG`` and ``recall/LGG`` stay apart; a confusion matrix is one line that names its rows and columns;
    ``class_names`` only serves the matrix.

    Args:
        metrics: metric name -> scalar, sequence or nested mapping.
        key_var_format: format of a name and a float value.

    Returns:
        The lines, sorted by metric name.
    """
    lines: dict[str, str] = {}

    def visit(prefix: str, values: Mapping[str, Any]) -> None:
        names = values.get("class_names")
        for key, value in values.items():
            name = f"{prefix}{key}"
            if key == "class_names":
                continue
            if isinstance(value, Mapping):
                visit(f"{name}/", value)
            elif key == "confusion_matrix" and names is not None:
                classes = ", ".join(str(n) for n in names)
                lines[name] = f"{name} (rows = true {classes}; columns = predicted): {_plain(value)}"
            else:
                lines[name] = _metric_line(name, _plain(value), key_var_format)

    visit("", metrics)
    return [lines[name] for name in sorted(lines)]


def _plain(value: Any) -> Any:
    """Tensors and numpy values as Python numbers and lists (``[[3, 0], [2, 0]]``, not ``tensor([[3, 0], ...``)."""
    return value.tolist() if hasattr(value, "tolist") else value


def _metric_line(name: str, value: Any, key_var_format: str) -> str:
    if isinstance(value, float):  # counts (num_samples), lists and texts are printed as they are
        return key_var_format.format(name, value).rstrip()
    return f"{name}: {value}"


class MetricsStatsHandler(StatsHandler):
    """MONAI's ``StatsHandler`` that logs each epoch metric on its own line.

    MONAI's handler writes all metrics of an epoch into one line and appends non-scalar values without a separator
    (``class_names: ['LGG', 'HGG']confusion_matrix: [[3, 0], [2, 0]]eval_auc: ...``); its flattening of nested
    reports also drops the parent names, so a per-class precision is overwritten by the recall of the same class.
    This handler logs ``Epoch[<n>] Metrics -- <name>: <value>`` per metric (see :func:`metric_lines`) and otherwise
    behaves as ``StatsHandler`` (same arguments, same iteration log, key-metric and state-attribute lines).
    """

    def _default_epoch_print(self, engine: Engine) -> None:
        epoch = self.global_epoch_transform(engine.state.epoch)
        for line in metric_lines(engine.state.metrics or {}, self.key_var_format.rstrip()):
            self.logger.info(f"Epoch[{epoch}] Metrics -- {line}")
        metrics, engine.state.metrics = engine.state.metrics, {}
        try:  # the key-metric and state-attribute lines of the base class, without its metrics line
            super()._default_epoch_print(engine)
        finally:
            engine.state.metrics = metrics


class ClassProbabilityWriter:
    """Write one CSV row per subject with the predicted class probabilities, on labelled or unlabelled data.

    Attach it to a MONAI evaluator whose postprocessing turns ``pred`` into probabilities (``Activationsd``
    with ``softmax=True``). Columns: ``subject``, ``prob_<class>`` for each class, ``predicted`` (class name: the
    argmax, or at ``threshold``, as :func:`medkd3d.engines.predicted_classes`), ``label`` (class name, empty for an
    unlabelled subject) and any ``extra_columns``. Under DDP the rows of all ranks are gathered
    and ``save_rank`` writes the file. The file is replaced atomically at the end of each run.

    Args:
        output_dir: directory of the CSV file (created when missing).
        class_names: class names in label-index order, e.g. ``["LGG", "HGG"]``.
        filename: CSV file name.
        subject_key: batch key with the subject identifier.
        label_key: batch key with the integer label; missing or ``None``/negative labels are left empty.
        pred_key: output key with the class probabilities.
        save_rank: rank that writes the file under DDP.
        threshold: the two-class decision threshold (a number or a :class:`medkd3d.engines.OperatingPoint`, read
            when the file is written), ``None`` for the argmax.
        extra_columns: batch keys written as columns after ``label`` (e.g. ``side``, the split side of
            :func:`medkd3d.bundles.threshold_records`), empty for an item without the key.
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
        threshold: Any = None,
        extra_columns: Sequence[str] = (),
    ) -> None:
        self.path = Path(output_dir) / filename
        self.class_names = list(class_names)
        self.subject_key = subject_key
        self.label_key = label_key
        self.pred_key = pred_key
        self.save_rank = save_rank
        self.threshold = threshold
        self.extra_columns = list(extra_columns)
        self._subjects: list[str] = []
        self._extras: dict[str, list[str]] = {key: [] for key in self.extra_columns}
        self._probabilities: list[torch.Tensor] = []
        self._labels: list[int] = []

    def attach(self, engine: Engine) -> None:
        """Collect rows on every iteration and write the file when the evaluation epoch completes."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, _engine: Engine) -> None:
        self._subjects, self._probabilities, self._labels = [], [], []
        self._extras = {key: [] for key in self.extra_columns}

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
            for key, values in self._extras.items():
                values.append(str(item.get(key, "")))

    def _write(self, engine: Engine) -> None:
        probabilities = (
            torch.stack(self._probabilities) if self._probabilities else torch.zeros(0, len(self.class_names))
        )
        labels = torch.tensor(self._labels, dtype=torch.long)
        subjects, extras = self._subjects, self._extras
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            probabilities = evenly_divisible_all_gather(probabilities, concat=True)
            labels = evenly_divisible_all_gather(labels, concat=True)
            subjects = string_list_all_gather(subjects)
            extras = {key: string_list_all_gather(values) for key, values in extras.items()}
            if torch.distributed.get_rank() != self.save_rank:
                return
        atomic_write_text(self.path, self._to_csv(subjects, probabilities, labels.tolist(), extras))
        engine.logger.info(f"Wrote class probabilities of {len(subjects)} subjects to {self.path}.")

    def _to_csv(
        self, subjects: list[str], probabilities: torch.Tensor, labels: list[int], extras: Mapping[str, list[str]]
    ) -> str:
        columns = ["subject", *(f"prob_{name}" for name in self.class_names), "predicted", "label", *self.extra_columns]
        predicted = predicted_classes(probabilities, self.threshold)
        rows = [
            dict(
                zip(
                    columns,
                    [subject, *(f"{p:.6f}" for p in probs), self.class_names[index],
                     self.class_names[label] if label >= 0 else "", *(extras[key][row] for key in self.extra_columns)],
                )
            )
            for row, (subject, probs, index, label) in enumerate(
                zip(subjects, probabilities.tolist(), predicted, labels)
            )
        ]  # fmt: skip
        return csv_text(rows, columns)


def _label_index(label: Any) -> int:
    """Integer class index of a batch label, ``-1`` when the subject is unlabelled."""
    if label is None:
        return -1
    value = torch.as_tensor(label).flatten()
    if value.numel() == 0:
        return -1
    # one-hot labels (after AsDiscreted(to_onehot=...)) hold the index as their argmax
    return int(value.argmax()) if value.numel() > 1 else int(value.item())
