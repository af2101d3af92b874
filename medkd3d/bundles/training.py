"""The bundles' training knobs: ``model_selection``, and the students' ``kd_mode``, ``train_per_class`` and
``unlabelled_train``.

A bundle trains one way (its ``train.json``); these knobs select what a study varies without another training loop:

* :func:`selects_best_checkpoint` - which model ``models/model.pt`` keeps: the one after the last epoch
  (``"final"``, the default) or the epoch with the best validation AUC (``"best"``).
* :func:`training_records` - the training subjects of a run: all of the fold's training side, or
  ``train_per_class`` labelled subjects per class (drawn per class with the seed, nested across sizes), with the
  remaining training subjects optionally kept as unlabelled items (``label = -1``) that only the KD term uses.
* :func:`labelled_pred_and_label` - the training metric's ``output_transform``: unlabelled items have no grade
  to score.
* :func:`unique_parameters` - the optimizer's parameters, each once, when the network and a loss share a module.
* :func:`build_trainer` - the trainer of a KD mode: ``"none"`` is MONAI's ``SupervisedTrainer`` with the bundle's
  class-weighted cross-entropy (no teacher is built or loaded), ``"logit"`` and ``"logit+feature"`` are
  :class:`medkd3d.engines.DistillationTrainer` with the frozen teacher, without or with the bundle's feature loss.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "KD_MODES",
    "MODEL_SELECTIONS",
    "UNLABELLED",
    "build_trainer",
    "labelled_pred_and_label",
    "selects_best_checkpoint",
    "training_records",
    "unique_parameters",
]

logger = logging.getLogger(__name__)

#: The KD modes of the student bundles: no teacher, logit KD, logit plus feature KD.
KD_MODES: tuple[str, ...] = ("none", "logit", "logit+feature")

#: Label of a training item kept without its grade (only the KD term uses it).
UNLABELLED = -1

#: Which model a bundle saves as ``models/model.pt``: the one after the last epoch, or the best-validation one.
MODEL_SELECTIONS: tuple[str, ...] = ("final", "best")


def unique_parameters(modules: Sequence[Any]) -> list[Any]:
    """The parameters of ``modules`` in order, each once (a module may be shared, e.g. a readout's head that the
    auxiliary loss supervises), for an optimizer's ``params``: ``{"_target_": "medkd3d.bundles.unique_parameters",
    "modules": ["@network", "@seg_aux_loss"]}``.

    Args:
        modules: ``torch.nn.Module`` objects.

    Returns:
        The list of parameters, first occurrence kept.
    """
    return list(dict.fromkeys(p for module in modules for p in module.parameters()))


def selects_best_checkpoint(model_selection: str) -> bool:
    """Whether a bundle keeps its best-validation-AUC checkpoint (``"best"``) rather than its final model.

    ``train.json`` saves ``models/model.pt`` after the last epoch (``"final"``, the default) or whenever the
    validation AUC improves (``"best"``). With a few dozen validation subjects the best epoch is a noisy pick that
    fits those subjects: on a development cohort the final models of a cosine schedule tested better (the bundles'
    docs give the numbers). Validation still drives early stopping and the decision threshold.

    Args:
        model_selection: one of :data:`MODEL_SELECTIONS`.

    Returns:
        ``True`` for ``"best"``, ``False`` for ``"final"``.

    Raises:
        ValueError: for any other value.
    """
    if model_selection not in MODEL_SELECTIONS:
        raise ValueError(f"model_selection must be one of {MODEL_SELECTIONS}, got {model_selection!r}")
    return model_selection == "best"


def training_records(
    records: Sequence[Mapping[str, Any]],
    train_per_class: int | str | None = None,
    seed: int = 0,
    unlabelled: bool = False,
) -> list[dict[str, Any]]:
    """The training items of a run: every record, or ``train_per_class`` labelled subjects per class.

    The labelled subjects are drawn per class with :func:`medkd3d.data.splits.per_class_subset`, so for one seed
    the subset of ``N`` is contained in the subset of any ``M > N`` (a learning curve adds subjects instead of
    redrawing them). A class with fewer subjects than ``train_per_class`` contributes all of them, with a warning
    (HDKD's data-size study does the same for its small classes).

    Args:
        records: the training side of a fold (every record must have a label).
        train_per_class: labelled subjects per class; ``None`` or ``"all"`` keeps every record labelled.
        seed: seed of the draw.
        unlabelled: keep the training subjects outside the labelled subset as items with ``label = -1``
            (:data:`UNLABELLED`) for the KD term; ``False`` leaves them out.

    Returns:
        The labelled records (in their original order), then the unlabelled ones.

    Raises:
        ValueError: for a ``train_per_class`` below 1.
    """
    from medkd3d.data.splits import per_class_subset, subject_labels

    if train_per_class in (None, "all"):
        return [dict(r) for r in records]
    size = int(train_per_class)
    if size < 1:
        raise ValueError(f"train_per_class must be a positive number of subjects per class or null, got {size}")
    by_label: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_label.setdefault(repr(record.get("label")), []).append(record)
    chosen: set[str] = set()
    for members in by_label.values():
        available = len(subject_labels(members))
        if available < size:
            logger.warning(
                "Class %r has %d training subjects, fewer than the %d per class asked for: using all of them.",
                members[0].get("label"), available, size,
            )  # fmt: skip
        chosen.update(per_class_subset(members, min(size, available), seed))
    labelled = [dict(r) for r in records if r["subject"] in chosen]
    rest = [{**r, "label": UNLABELLED} for r in records if r["subject"] not in chosen] if unlabelled else []
    logger.info(
        "Training on %d labelled subjects (%d per class)%s.",
        len(labelled), size, f" and {len(rest)} unlabelled ones (KD term only)" if rest else "",
    )  # fmt: skip
    return labelled + rest


def labelled_pred_and_label(output: Any) -> tuple[Any, Any]:
    """``(pred [n, K], label [n])`` of the labelled items of an engine output (decollated or batch); items with
    ``label = -1`` (:data:`UNLABELLED`) are left out, so a training metric scores only subjects with a grade.

    Args:
        output: ``engine.state.output``: a list of per-item dicts or one batch dict, with ``pred`` and ``label``.

    Returns:
        The stacked predictions and labels of the labelled items (``n`` may be 0).
    """
    import torch

    items = output if isinstance(output, (list, tuple)) else [output]
    preds = torch.cat(
        [torch.as_tensor(item["pred"]).reshape(-1, torch.as_tensor(item["pred"]).shape[-1]) for item in items]
    )
    labels = torch.cat([torch.as_tensor(item["label"]).reshape(-1) for item in items]).long()
    keep = labels != UNLABELLED
    return preds[keep], labels[keep]


def build_trainer(
    kd_mode: str,
    teacher: Any,
    kd_loss: Any,
    supervised_loss: Any,
    *,
    feature_loss: Any = None,
    student_feature_taps: str | Sequence[str] | None = None,
    teacher_feature_taps: str | Sequence[str] | None = None,
    teacher_image_key: str | None = None,
    feature_loss_batch_keys: Sequence[str] = (),
    **kwargs: Any,
) -> Any:
    """The training engine of a student bundle for ``kd_mode``.

    Args:
        kd_mode: ``"none"``, ``"logit"`` or ``"logit+feature"`` (:data:`KD_MODES`).
        teacher: the frozen teacher (``None`` for ``"none"``: the bundles do not build it then).
        kd_loss: the logit KD loss ``(student_logits, teacher_logits, target)``.
        supervised_loss: the loss of ``"none"`` (the bundle's class-weighted cross-entropy).
        feature_loss: the bundle's feature KD loss (``"logit+feature"`` only; ignored by the other modes).
        student_feature_taps, teacher_feature_taps, feature_loss_batch_keys: see
            :class:`~medkd3d.engines.DistillationTrainer` (``"logit+feature"`` only).
        teacher_image_key: batch key of the teacher's input (KD modes only).
        kwargs: every other ``SupervisedTrainer`` argument (``device``, ``max_epochs``, ``train_data_loader``,
            ``network``, ``optimizer``, handlers, metrics, ``amp``, ...).

    Returns:
        A ``monai.engines.SupervisedTrainer`` (``"none"``) or a :class:`~medkd3d.engines.DistillationTrainer`.

    Raises:
        ValueError: for an unknown mode, a KD mode without a teacher, or ``"logit+feature"`` in a bundle that has
            no feature loss.
    """
    if kd_mode not in KD_MODES:
        raise ValueError(f"kd_mode must be one of {list(KD_MODES)}, got {kd_mode!r}")
    if kd_mode == "none":
        from monai.engines import SupervisedTrainer

        return SupervisedTrainer(loss_function=supervised_loss, **kwargs)
    from medkd3d.engines import DistillationTrainer

    if teacher is None:
        raise ValueError(f"kd_mode={kd_mode!r} distils from a teacher, but none was built; set --teacher_ckpt")
    features: dict[str, Any] = {}
    if kd_mode == "logit+feature":
        if feature_loss is None or student_feature_taps is None or teacher_feature_taps is None:
            raise ValueError(
                "kd_mode='logit+feature' needs the bundle's feature_loss and feature taps, and this bundle has none; "
                "use --kd_mode logit or --kd_mode none"
            )
        features = {
            "feature_loss": feature_loss,
            "student_feature_taps": student_feature_taps,
            "teacher_feature_taps": teacher_feature_taps,
            "feature_loss_batch_keys": feature_loss_batch_keys,
        }
    return DistillationTrainer(
        teacher=teacher, kd_loss=kd_loss, teacher_image_key=teacher_image_key, **features, **kwargs
    )
