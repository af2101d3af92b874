"""``DistillationTrainer``: MONAI's ``SupervisedTrainer`` with frozen teacher(s), KD losses and feature taps."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn
from torch.optim import Optimizer

from medkd3d.losses import labelled_mask

from .batch import plain_tensor
from .soft_targets import SoftTargetCache, as_teacher_list, check_deterministic_teacher_input, teacher_fingerprint
from .taps import FORWARD_FEATURES, FeatureTaps, feature_info_taps, has_two_heads, returning_features, unwrap_model

__all__ = ["LOSS_PREFIX", "NUM_LABELLED", "DistillationTrainer", "loss_terms"]


#: ``engine.state.output`` key prefix of every loss component (``"loss_kd"``, ``"loss_ce"``, ``"loss_feat_1"``).
LOSS_PREFIX = "loss_"

#: ``engine.state.output`` key of the number of labelled items in the batch (the others have label ``-1``).
NUM_LABELLED = "num_labelled"

Taps = str | Sequence[str] | None


def loss_terms(output: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The scalar loss terms of a ``DistillationTrainer`` iteration: the total ``"loss"`` and each ``"loss_*"``.

    Use it as the ``output_transform`` of ``StatsHandler``/``TensorBoardStatsHandler`` (in a bundle config:
    ``"output_transform": "$medkd3d.engines.loss_terms"``). Decollated outputs (a list with one dict per batch
    item, each holding a copy of the scalars) are read from their first item.

    Args:
        output: ``engine.state.output``.

    Returns:
        ``{"loss": ..., "loss_kd": ..., ...}`` as floats.
    """
    if isinstance(output, Sequence):
        output = output[0]
    return {
        key: float(value.detach() if isinstance(value, torch.Tensor) else value)
        for key, value in output.items()
        if key == Keys.LOSS or (isinstance(key, str) and key.startswith(LOSS_PREFIX))
    }


def _num_labelled(targets: Any) -> torch.Tensor | None:
    """Number of labelled items of a batch of class indices (label ``-1`` marks unlabelled ones), else ``None``."""
    if isinstance(targets, torch.Tensor) and targets.ndim == 1 and not targets.is_floating_point():
        return labelled_mask(targets).sum()
    return None


def _teacher_index(teacher: Any, name_or_index: int | str) -> int:
    """Position of the feature teacher among the teachers, from its index or its key in a dict of teachers."""
    if not isinstance(name_or_index, str):
        return int(name_or_index)
    named = isinstance(teacher, (Mapping, nn.ModuleDict))
    if not named or name_or_index not in teacher:
        names = list(teacher) if named else "none (the teachers are not a dict; use an index)"
        raise ValueError(f"feature_teacher={name_or_index!r} names no teacher; teacher names: {names}.")
    return list(teacher).index(name_or_index)


def _split_loss(output: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total, {"loss_<name>": term})`` from a medkd3d loss's ``(total, components)`` or a bare scalar."""
    total, components = output if isinstance(output, tuple) else (output, {})
    return total, {
        name if name.startswith(LOSS_PREFIX) else LOSS_PREFIX + name: term for name, term in components.items()
    }


class DistillationTrainer(SupervisedTrainer):
    """Knowledge distillation with MONAI's supervised training loop.

    Each iteration runs the frozen teacher(s) (eval mode, ``torch.no_grad``) or looks up their cached logits,
    runs the student, and minimises ``kd_loss(student_logits, teacher_logits, label)`` plus, optionally,
    ``feature_loss(student_features, teacher_features, **batch_kwargs)``. It fires every ``IterationEvents``
    of ``SupervisedTrainer`` in the same order (``FORWARD_COMPLETED``, ``LOSS_COMPLETED``,
    ``BACKWARD_COMPLETED``, ``MODEL_COMPLETED``), so MONAI handlers, decollation, post-processing and metrics
    work unchanged. ``engine.state.output`` holds ``image``, ``label``, ``pred`` (student logits; the mean
    of both heads for a two-head student), ``loss`` (the total) and every weighted loss term as a detached
    tensor under ``"loss_<name>"`` (e.g. ``"loss_kd"``, ``"loss_ce"``, ``"loss_feat_1"``); log them with
    ``StatsHandler(output_transform=medkd3d.engines.loss_terms)``.

    Batches may mix labelled items with unlabelled ones (label ``-1``, as
    :func:`medkd3d.bundles.inference_records` writes subjects without a grade): the teacher terms learn from
    every item, the supervised term of the medkd3d KD losses only from the labelled ones (``0`` for a batch
    without any), and ``engine.state.output["num_labelled"]`` says how many items were labelled. A custom
    ``kd_loss`` must do the same (see :func:`medkd3d.losses.supervised_term`).

    Features come from the same forward pass as the logits: module paths are tapped with forward hooks
    (:class:`~medkd3d.engines.FeatureTaps`, any model), or ``"forward_features"`` uses a zoo model's
    ``forward_features``/``forward_head``. Hooks exist only while :meth:`run` runs.

    Under ``DistributedDataParallel`` wrap only the student; gradients of trainable loss modules (projectors,
    discriminators) are averaged across processes here, so every process keeps the same loss modules.

    Args:
        device: device the batches are moved to (the networks must already be there).
        max_epochs: number of training epochs.
        train_data_loader: training data; yields dictionaries (``image``, ``label``, ``subject``, ...).
        network: the student, possibly wrapped in ``DistributedDataParallel``.
        teacher: a teacher, or a sequence/dict of teachers for multi-teacher losses (``kd_loss`` then gets a
            list of logits in that order). ``None`` only with ``soft_target_cache``. Teachers are frozen
            (``requires_grad=False``) and kept in eval mode.
        optimizer: must hold every trainable parameter of the student, ``kd_loss`` and ``feature_loss``.
        kd_loss: logit-level loss ``(student_logits, teacher_logits, target) -> (total, components)``.
        feature_loss: optional feature-level loss ``(student_features, teacher_features, **kw) -> (total, components)``.
        student_feature_taps: module paths of the student to tap, or ``"forward_features"``.
        teacher_feature_taps: module paths of the feature teacher, or ``"forward_features"``.
        feature_teacher: index (or dict key) of the teacher whose features ``feature_loss`` uses.
        teacher_image_key: batch key of the teacher input when it differs from the student's (e.g. ``"volume"``
            for volume-to-slice distillation of a 2.5D student); ``None`` feeds the student's input.
        feature_loss_batch_keys: batch keys passed to ``feature_loss`` as keyword arguments (``("slice_index",)``).
        soft_target_cache: precomputed teacher logits (a :class:`SoftTargetCache` or its file), looked up by
            ``batch[subject_key]`` instead of running the teacher.
        allow_random_teacher_input: with a cache, only warn (instead of raising) when random transforms reach
            the teacher input.
        subject_key: batch key of the subject id used for cache look-ups.
        two_head_student: give ``kd_loss`` the pair ``(cls_logits, dist_logits)`` of the student's
            ``forward_heads``; ``None`` decides by whether the student has ``forward_heads``.
        kwargs: every other ``SupervisedTrainer`` argument (``epoch_length``, ``prepare_batch``, ``inferer``,
            ``postprocessing``, ``key_train_metric``, ``additional_metrics``, ``train_handlers``, ``amp``,
            ``amp_kwargs``, ``event_names``, ``decollate``, ``optim_set_to_none``, ``accumulation_steps``,
            ``compile``, ...). ``amp=True`` needs a CUDA device and falls back to float32 with a warning.

    Raises:
        ValueError: for inconsistent arguments (feature loss without taps, cached targets with random teacher
            input or with teacher feature taps, an optimizer missing trainable parameters, ...).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: nn.Module,
        teacher: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module] | None,
        optimizer: Optimizer,
        kd_loss: nn.Module,
        *,
        feature_loss: nn.Module | None = None,
        student_feature_taps: Taps = None,
        teacher_feature_taps: Taps = None,
        feature_teacher: int | str = 0,
        teacher_image_key: str | None = None,
        feature_loss_batch_keys: Sequence[str] = (),
        soft_target_cache: SoftTargetCache | str | os.PathLike | None = None,
        allow_random_teacher_input: bool = False,
        subject_key: str = "subject",
        two_head_student: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("iteration_update") is not None:
            raise ValueError("DistillationTrainer runs its own iteration; iteration_update is not supported.")
        if kwargs.get("amp") and torch.device(device).type != "cuda":
            warnings.warn(f"amp=True needs a CUDA device but device is {device!r}: training in float32.", stacklevel=2)
            kwargs["amp"] = False
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=kd_loss,
            **kwargs,
        )
        self.teacher = teacher
        self.teachers = as_teacher_list(teacher)
        for t in self.teachers:
            t.requires_grad_(False)
            t.eval()
        self.feature_loss = feature_loss
        self.student_feature_taps = student_feature_taps
        self.teacher_feature_taps = teacher_feature_taps
        self.teacher_image_key = teacher_image_key
        self.feature_loss_batch_keys = tuple(feature_loss_batch_keys)
        self.subject_key = subject_key
        self.two_head_student = has_two_heads(network) if two_head_student is None else two_head_student
        if isinstance(soft_target_cache, (str, os.PathLike)):
            soft_target_cache = SoftTargetCache.load(soft_target_cache)
        self.soft_target_cache = soft_target_cache
        self.feature_teacher_index = _teacher_index(teacher, feature_teacher)
        self._student_taps: FeatureTaps | None = None
        self._teacher_taps: FeatureTaps | None = None

        self._check_arguments(allow_random_teacher_input)
        self._check_optimizer_covers(optimizer, {"network": network, "kd_loss": kd_loss, "feature_loss": feature_loss})
        self._loss_parameters = [
            p
            for module in (kd_loss, feature_loss)
            if isinstance(module, nn.Module) and not isinstance(module, nn.parallel.DistributedDataParallel)
            for p in module.parameters()
            if p.requires_grad
        ]

    # ------------------------------------------------------------------------------------------------ checks

    def _check_arguments(self, allow_random_teacher_input: bool) -> None:
        features_wanted = (
            self.feature_loss is not None,
            self.student_feature_taps is not None,
            self.teacher_feature_taps is not None,
        )
        if any(features_wanted) and not all(features_wanted):
            raise ValueError(
                "Feature distillation needs feature_loss, student_feature_taps and teacher_feature_taps together "
                f"(got feature_loss={type(self.feature_loss).__name__ if self.feature_loss is not None else None}, "
                f"student_feature_taps={self.student_feature_taps!r}, teacher_feature_taps={self.teacher_feature_taps!r})."
            )
        if self.soft_target_cache is None:
            if not self.teachers:
                raise ValueError(
                    "DistillationTrainer needs a teacher, or a soft_target_cache of precomputed teacher logits."
                )
        else:
            self._check_cache(allow_random_teacher_input)
        if self.teacher_feature_taps is not None and not 0 <= self.feature_teacher_index < len(self.teachers):
            raise ValueError(
                f"feature_teacher={self.feature_teacher_index} does not name one of the {len(self.teachers)} teachers."
            )

    def _check_cache(self, allow_random_teacher_input: bool) -> None:
        cache = self.soft_target_cache
        source = cache.metadata.get("path", "the soft-target cache")
        if self.teacher_feature_taps is not None:
            raise ValueError(
                "Cached soft targets replace the teacher's forward pass, but teacher_feature_taps need it: run the "
                "teacher online (soft_target_cache=None) for feature distillation."
            )
        cached_key = cache.metadata.get("image_key")
        if self.teacher_image_key is not None and cached_key is not None and cached_key != self.teacher_image_key:
            raise ValueError(
                f"{source} holds teacher logits for input {cached_key!r} but teacher_image_key={self.teacher_image_key!r}; "
                "recompute the cache with image_key matching the trainer."
            )
        if self.teachers:
            if cache.num_teachers != len(self.teachers):
                raise ValueError(
                    f"{source} holds {cache.num_teachers} teacher(s) but the trainer has {len(self.teachers)}."
                )
            cached = cache.metadata.get("teacher_fingerprints")
            if cached is not None and cached != [teacher_fingerprint(t) for t in self.teachers]:
                raise ValueError(
                    f"{source} was computed with different teacher weights than the teacher given to the trainer; "
                    "recompute it with precompute_soft_targets() after loading the teacher checkpoint."
                )
        key = self.teacher_image_key or cached_key or Keys.IMAGE
        check_deterministic_teacher_input(self.data_loader, key, allow_random_teacher_input)

    @staticmethod
    def _check_optimizer_covers(optimizer: Optimizer, modules: Mapping[str, nn.Module | None]) -> None:
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [
            f"{owner}.{name}"
            for owner, module in modules.items()
            if isinstance(module, nn.Module)
            for name, p in unwrap_model(module).named_parameters()
            if p.requires_grad and id(p) not in in_optimizer
        ]
        if missing:
            listed = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
            raise ValueError(
                f"The optimizer does not hold {len(missing)} trainable parameter(s): {listed}. Build it over the "
                "student and the loss modules, e.g. torch.optim.Adam([*student.parameters(), *kd_loss.parameters(), "
                "*feature_loss.parameters()]), or set requires_grad=False on parameters meant to stay fixed."
            )

    # ------------------------------------------------------------------------------------------------ running

    @contextmanager
    def _installed_taps(self) -> Iterator[None]:
        """Register the module-path hooks for the duration of a run, and remove them however it ends."""
        with ExitStack() as stack:
            if self.student_feature_taps == FORWARD_FEATURES and self.two_head_student:
                self._student_taps = stack.enter_context(feature_info_taps(self.network))
            elif self.student_feature_taps not in (None, FORWARD_FEATURES):
                self._student_taps = stack.enter_context(FeatureTaps(self.network, self.student_feature_taps))
            if self.teacher_feature_taps not in (None, FORWARD_FEATURES):
                teacher = self.teachers[self.feature_teacher_index]
                self._teacher_taps = stack.enter_context(FeatureTaps(teacher, self.teacher_feature_taps, detach=True))
            try:
                yield
            finally:
                self._student_taps = self._teacher_taps = None

    def run(self) -> None:  # type: ignore[override]
        """Train; the feature-tap hooks are registered for the run only."""
        with self._installed_taps():
            super().run()

    def _accumulation_flags(self, engine: DistillationTrainer) -> tuple[bool, bool]:
        """``(zero_grad, step)`` for this iteration, with ``SupervisedTrainer``'s accumulation schedule."""
        acc = engine.accumulation_steps
        if acc == 1:
            return True, True
        epoch_length = engine.state.epoch_length
        local_iter = engine.state.iteration - 1
        if epoch_length is not None:
            local_iter %= epoch_length
        step = (local_iter + 1) % acc == 0 or (epoch_length is not None and local_iter + 1 == epoch_length)
        return local_iter % acc == 0, step

    def _student_forward(self, engine: DistillationTrainer, inputs: torch.Tensor, args: tuple, kwargs: dict):
        """``(logits for kd_loss, pred, features)`` of the student from one forward pass."""
        use_forward_features = self.student_feature_taps == FORWARD_FEATURES and not self.two_head_student
        context = (
            returning_features(engine.network, features=use_forward_features, two_heads=self.two_head_student)
            if use_forward_features or self.two_head_student
            else nullcontext()
        )
        with context:
            out = engine.inferer(inputs, engine.network, *args, **kwargs)
        features = None
        if use_forward_features:
            out, features = out
        elif self._student_taps is not None:  # module paths, or a two-head student's feature_info modules
            features = self._student_taps.pop()
        pred = (out[0] + out[1]) / 2 if self.two_head_student else out  # the contract's forward(): mean of both heads
        return out, pred, features

    def _teacher_forward(self, batchdata: Mapping[str, Any], teacher_inputs: torch.Tensor):
        """``(teacher logits for kd_loss, teacher features)``; logits are a list for several teachers."""
        if self.soft_target_cache is not None:
            if self.subject_key not in batchdata:
                raise KeyError(
                    f"Cached soft targets are looked up by batch[{self.subject_key!r}], but the batch has only "
                    f"{sorted(batchdata)}; keep the subject id in the data (or set subject_key)."
                )
            logits = self.soft_target_cache.lookup(batchdata[self.subject_key], self.state.device)
            return (logits[:, 0] if logits.shape[1] == 1 else list(logits.unbind(1))), None
        features = None
        logits = []
        with torch.no_grad():
            for i, teacher in enumerate(self.teachers):
                teacher.eval()  # re-asserted every iteration: handlers or user code may have called train()
                if i == self.feature_teacher_index and self.teacher_feature_taps == FORWARD_FEATURES:
                    with returning_features(teacher):
                        out, features = teacher(teacher_inputs)
                else:
                    out = teacher(teacher_inputs)
                logits.append(out)
            if self._teacher_taps is not None:
                features = self._teacher_taps.pop()
        return (logits[0] if len(logits) == 1 else logits), features

    def _batch_value(self, batchdata: Mapping[str, Any], key: str, engine: DistillationTrainer) -> Any:
        if key not in batchdata:
            raise KeyError(f"DistillationTrainer needs batch[{key!r}], but the batch has only {sorted(batchdata)}.")
        value = batchdata[key]
        if isinstance(value, torch.Tensor):
            value = value.to(engine.state.device, non_blocking=engine.non_blocking, **engine.to_kwargs)
        return value

    def _sync_loss_module_gradients(self) -> None:
        """Average the gradients of trainable loss modules across processes (DDP only syncs the student)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        world_size = dist.get_world_size()
        for p in self._loss_parameters:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world_size

    def _iteration(self, engine: DistillationTrainer, batchdata: dict[str, Any]) -> dict:
        """One distillation step; the structure and events follow ``SupervisedTrainer._iteration``.

        Returns:
            ``engine.state.output``: ``image``, ``label``, ``pred``, ``loss``, each ``loss_<name>`` term and
            ``num_labelled``.

        Raises:
            ValueError: when ``batchdata`` is None.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, args, kwargs = (*batch, (), {}) if len(batch) == 2 else batch
        teacher_inputs = (
            inputs if self.teacher_image_key is None else self._batch_value(batchdata, self.teacher_image_key, engine)
        )
        feature_kwargs = {key: self._batch_value(batchdata, key, engine) for key in self.feature_loss_batch_keys}
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        # the networks get plain tensors (medkd3d.engines.batch: faster, and torch.compile does not take MetaTensors,
        # pytorch#117026); the output keeps the originals
        inputs, targets, teacher_inputs = plain_tensor(inputs), plain_tensor(targets), plain_tensor(teacher_inputs)

        def _compute_pred_loss() -> None:
            teacher_logits, teacher_features = self._teacher_forward(batchdata, teacher_inputs)
            student_logits, pred, student_features = self._student_forward(engine, inputs, args, kwargs)
            engine.state.output[Keys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            total, components = _split_loss(engine.loss_function(student_logits, teacher_logits, targets))
            if self.feature_loss is not None:
                feature_total, feature_components = _split_loss(
                    self.feature_loss(student_features, teacher_features, **feature_kwargs)
                )
                clash = sorted(set(components) & set(feature_components))
                if clash:
                    raise ValueError(f"kd_loss and feature_loss both report the loss terms {clash}; rename one.")
                total = total + feature_total
                components.update(feature_components)
            engine.state.output[Keys.LOSS] = total
            engine.state.output.update({name: term.detach() for name, term in components.items()})
            num_labelled = _num_labelled(targets)
            if num_labelled is not None:
                engine.state.output[NUM_LABELLED] = num_labelled
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        should_zero_grad, should_step = self._accumulation_flags(engine)
        acc = engine.accumulation_steps
        for module in (engine.network, engine.loss_function, self.feature_loss):
            if isinstance(module, nn.Module):  # loss modules too: some behave differently in training mode
                module.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        # between optimizer steps DDP need not all-reduce: gradients accumulate locally and sync on the step
        skip_sync = isinstance(engine.network, nn.parallel.DistributedDataParallel) and not should_step
        with engine.network.no_sync() if skip_sync else nullcontext():
            if engine.amp and engine.scaler is not None:
                with torch.autocast("cuda", **engine.amp_kwargs):
                    _compute_pred_loss()
                loss = engine.state.output[Keys.LOSS]
                engine.scaler.scale(loss / acc if acc > 1 else loss).backward()
            else:
                _compute_pred_loss()
                loss = engine.state.output[Keys.LOSS]
                (loss / acc if acc > 1 else loss).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if should_step:
            self._sync_loss_module_gradients()
            if engine.amp and engine.scaler is not None:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
