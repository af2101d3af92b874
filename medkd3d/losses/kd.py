"""Logit knowledge distillation (Hinton et al., 2015) and the checks every logit-level loss shares.

The seed formula (``DESIGN``, HDKD eq. 6) is::

    L = alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * CE(student, y),    p = softmax(z / T)

The ``T^2`` factor keeps the gradient of the soft term at the same scale whatever the temperature, so
``alpha`` keeps its meaning when ``T`` changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["UNLABELLED", "KDLoss", "kl_divergence", "labelled_mask", "supervised_term"]

#: Label of an item without a class (``medkd3d.bundles.inference_records``: MONAI cannot collate ``None``).
#: Distillation losses train on such items through their teacher terms only; supervised criteria reject them.
UNLABELLED = -1

_REDUCTIONS = ("batchmean", "sum", "none")


def kl_divergence(student_log_probs: Tensor, teacher_log_probs: Tensor, reduction: str = "batchmean") -> Tensor:
    """``KL(p_teacher || p_student) = sum_c p_teacher,c * (log p_teacher,c - log p_student,c)`` per sample.

    Both arguments are log-probabilities (``log_softmax`` outputs), so a teacher probability of exactly zero
    never produces ``0 * log 0``.

    Args:
        student_log_probs: ``[B, C]`` student log-probabilities.
        teacher_log_probs: ``[B, C]`` teacher log-probabilities (not detached here; the losses detach).
        reduction: ``"batchmean"`` (sum over classes, mean over the batch - the mathematically correct KL
            per sample), ``"sum"`` or ``"none"`` (one value per sample, ``[B]``).

    Returns:
        The divergence, a scalar or ``[B]`` for ``reduction="none"``.

    Raises:
        ValueError: for an unknown ``reduction``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"kl_divergence: reduction={reduction!r} is not one of {_REDUCTIONS}.")
    per_sample = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True).sum(dim=1)
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


# ---------------------------------------------------------------------------------------------------------------
# Argument and input checks shared by the logit-level losses of this package (not part of the public API).
# ---------------------------------------------------------------------------------------------------------------


def check_fraction(value: float, name: str, owner: str) -> float:
    """Return ``value`` as a float in ``[0, 1]`` or raise a ``ValueError`` naming ``owner`` and ``name``."""
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}: {name}={value} must lie in [0, 1] (0 and 1 switch one of the two terms off).")
    return value


def check_positive(value: float, name: str, owner: str) -> float:
    """Return ``value`` as a float ``> 0`` (finite) or raise a ``ValueError`` naming ``owner`` and ``name``."""
    value = float(value)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{owner}: {name}={value} must be a finite number > 0.")
    return value


def check_non_negative(value: float, name: str, owner: str) -> float:
    """Return ``value`` as a float ``>= 0`` (finite) or raise a ``ValueError`` naming ``owner`` and ``name``."""
    value = float(value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{owner}: {name}={value} must be a finite number >= 0 (0 switches the term off).")
    return value


def check_logits(logits: object, name: str, owner: str) -> Tensor:
    """Check that ``logits`` is one floating ``[B, C]`` tensor with ``C >= 2`` and return it.

    Raises:
        TypeError: for a tuple/list (a two-head student's pair) or a non-tensor.
        ValueError: for a wrong shape.
    """
    if isinstance(logits, (tuple, list)):
        raise TypeError(
            f"{owner}: {name} is a {type(logits).__name__} of {len(logits)} items but must be one [batch, num_classes] "
            "tensor. Two-head students (class and distillation tokens) go with TokenDistillationLoss."
        )
    if not isinstance(logits, Tensor):
        raise TypeError(f"{owner}: {name} must be a torch.Tensor, got {type(logits).__name__}.")
    if logits.ndim != 2 or logits.shape[1] < 2 or not logits.is_floating_point():
        raise ValueError(
            f"{owner}: {name} has shape {tuple(logits.shape)} and dtype {logits.dtype} but must be a floating "
            "[batch, num_classes] tensor with num_classes >= 2 (raw logits, before softmax)."
        )
    return logits


def check_logit_pair(
    student_logits: object, teacher_logits: object, owner: str, teacher_name: str = "teacher logits"
) -> tuple[Tensor, Tensor]:
    """Check student and teacher logits and that their shapes agree; return them (teacher detached)."""
    student_logits = check_logits(student_logits, "student logits", owner)
    teacher_logits = check_logits(teacher_logits, teacher_name, owner)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"{owner}: student logits have shape {tuple(student_logits.shape)} but {teacher_name} have shape "
            f"{tuple(teacher_logits.shape)}; both must be [batch, num_classes] with the same batch and the same "
            "num_classes (were teacher and student built with different num_classes?)."
        )
    return student_logits, teacher_logits.detach()


def check_target(target: object, logits: Tensor, owner: str, why: str, allow_unlabelled: bool = False) -> Tensor:
    """Check that ``target`` is an integer ``[B]`` tensor of class indices matching ``logits``' batch.

    Args:
        why: the end of the sentence explaining why a target is needed, e.g. ``"alpha=0.5 < 1 keeps a CE term"``.
        allow_unlabelled: accept :data:`UNLABELLED` (``-1``) items; otherwise they are refused with a message
            saying what to do with unlabelled subjects.

    Raises:
        TypeError: for a target that is not a tensor.
        ValueError: for a wrong shape or dtype, or labels outside ``[0, C)`` (besides allowed ``-1``).
    """
    if target is None:
        raise ValueError(f"{owner}: target is None but {why}; pass the int64 [batch] class labels.")
    if not isinstance(target, Tensor):
        raise TypeError(f"{owner}: target must be a torch.Tensor of class indices, got {type(target).__name__}.")
    if target.ndim != 1 or target.shape[0] != logits.shape[0] or target.is_floating_point():
        raise ValueError(
            f"{owner}: target has shape {tuple(target.shape)} and dtype {target.dtype} but must be an integer "
            f"[batch] tensor of class indices with batch={logits.shape[0]} like the logits "
            "(squeeze a [batch, 1] label, or use .long())."
        )
    num_classes = logits.shape[1]
    unlabelled = target == UNLABELLED
    if not allow_unlabelled and bool(unlabelled.any()):
        raise ValueError(
            f"{owner}: {int(unlabelled.sum())} of {target.shape[0]} item(s) have label {UNLABELLED} (unlabelled "
            f"subjects) but {why}, which needs a class for every item. Drop unlabelled subjects from this training "
            "split, or distil on them with medkd3d.engines.DistillationTrainer and a KD loss (KDLoss, "
            "TokenDistillationLoss), whose teacher terms use every item and whose CE term only the labelled ones."
        )
    # out-of-range classes would otherwise surface as an index error deep inside torch (or a CUDA assert)
    bad = ((target < 0) | (target >= num_classes)) & ~unlabelled
    if bool(bad.any()):
        note = f"; {UNLABELLED} marks an unlabelled item" if allow_unlabelled else ""
        raise ValueError(
            f"{owner}: labels {sorted(set(target[bad].tolist()))} are not class indices in [0, {num_classes}) "
            f"(the logits have {num_classes} classes{note}); check class_names/num_classes and the datalist's labels."
        )
    return target


def labelled_mask(target: Tensor) -> Tensor:
    """Boolean ``[B]`` mask of the items that have a class label (every label but :data:`UNLABELLED`)."""
    return target != UNLABELLED


def supervised_term(ce_loss: nn.Module, logits: Tensor, target: Tensor, owner: str, why: str) -> Tensor:
    """``ce_loss`` over the labelled items of the batch only; ``0`` (still in the graph) when none is labelled.

    The supervised term of every distillation loss goes through here, so a batch may mix labelled subjects
    with unlabelled ones (label ``-1``) that only the teacher terms learn from. The criterion sees just the
    labelled rows, so its own reduction (a class-weighted CE divides by the labelled items' weights) is the
    same as for a batch of those items alone.

    Args:
        ce_loss: criterion ``ce_loss(logits, target) -> scalar``.
        logits: ``[B, C]`` logits.
        target: ``[B]`` class indices, ``-1`` for unlabelled items.
        owner: name of the calling loss, for messages.
        why: why the calling loss needs labels (see :func:`check_target`).

    Returns:
        The scalar supervised term.

    Raises:
        TypeError, ValueError: from :func:`check_target`.
    """
    target = check_target(target, logits, owner, why, allow_unlabelled=True)
    mask = labelled_mask(target)
    if bool(mask.all()):
        return ce_loss(logits, target)
    if not bool(mask.any()):
        # an empty sum is an exact 0 attached to the logits, so backward() works even when this is the only term
        return logits[:0].sum()
    return ce_loss(logits[mask], target[mask])


def check_teacher_sequence(teacher_logits: object, owner: str) -> Sequence[Tensor]:
    """Check that ``teacher_logits`` is a non-empty sequence of tensors (one per teacher)."""
    if isinstance(teacher_logits, Tensor) and teacher_logits.ndim == 2:
        raise TypeError(
            f"{owner}: teacher_logits is one [batch, num_classes] tensor but must be a sequence with one tensor per "
            "teacher; wrap a single teacher as [teacher_logits] (or use KDLoss)."
        )
    if (
        not isinstance(teacher_logits, (Sequence, Tensor))
        or isinstance(teacher_logits, str)
        or len(teacher_logits) == 0
    ):
        raise TypeError(f"{owner}: teacher_logits must be a non-empty list/tuple of [batch, num_classes] tensors.")
    return teacher_logits


def temperature_log_softmax(logits: Tensor, temperature: float) -> Tensor:
    """``log softmax(z / T)`` computed in float32, so fp16/bf16 logits under AMP do not lose the soft targets."""
    return F.log_softmax(logits.float() / temperature, dim=1)


def sum_components(components: dict[str, Tensor]) -> Tensor:
    """Sum the weighted terms into the total (in insertion order, so the result is deterministic)."""
    terms = iter(components.values())
    total = next(terms)
    for term in terms:
        total = total + term
    return total


class KDLoss(nn.Module):
    """Logit knowledge distillation, exactly the seed formula.

    ``L = alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(z_s, y)`` with ``p = softmax(z / T)``; the KL is summed
    over classes and averaged over the batch ("batchmean"), the CE is ``ce_loss``'s own reduction (batch mean for
    the default ``nn.CrossEntropyLoss()``; a class-weighted CE averages with the class weights).

    Components (the weighted terms; they sum to the total): ``"kd"`` = ``alpha * T^2 * KL`` and ``"ce"`` =
    ``(1 - alpha) * CE``. A term whose weight is zero is neither computed nor reported, so with ``alpha=1`` the
    target may be ``None`` and with ``alpha=0`` the teacher logits may be ``None``.

    Unlabelled items (label ``-1``, e.g. subjects without a grade) are distilled like the others: the KD term
    averages over the whole batch, the CE term over the labelled items only (``0`` when the batch has none).

    Args:
        alpha: weight of the distillation term in ``[0, 1]``; 1 is pure KD, 0 pure supervised CE.
        temperature: softmax temperature ``T > 0``.
        ce_loss: criterion of the supervised term, called as ``ce_loss(student_logits, target)`` and returning a
            scalar. Defaults to ``nn.CrossEntropyLoss()``; pass ``nn.CrossEntropyLoss(weight=...)`` or
            :class:`~medkd3d.losses.FocalLoss` for imbalanced classes.

    Raises:
        ValueError: for ``alpha`` outside ``[0, 1]`` or a non-positive temperature.

    Example::

        loss = KDLoss(alpha=0.5, temperature=4.0)
        total, components = loss(student(x), teacher(x), y)  # components: {"kd": ..., "ce": ...}
    """

    def __init__(self, alpha: float = 0.5, temperature: float = 4.0, ce_loss: nn.Module | None = None) -> None:
        super().__init__()
        self.alpha = check_fraction(alpha, "alpha", type(self).__name__)
        self.temperature = check_positive(temperature, "temperature", type(self).__name__)
        self.ce_loss = ce_loss if ce_loss is not None else nn.CrossEntropyLoss()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}"

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor | None, target: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            student_logits: ``[B, C]`` student logits.
            teacher_logits: ``[B, C]`` teacher logits (detached here; ``None`` allowed when ``alpha == 0``).
            target: ``[B]`` int64 class indices, ``-1`` for unlabelled items (``None`` allowed when ``alpha == 1``).

        Returns:
            ``(total, components)``.

        Raises:
            TypeError, ValueError: for malformed logits or target; messages name the shapes.
        """
        owner = type(self).__name__
        components: dict[str, Tensor] = {}
        if self.alpha > 0:
            student_logits, teacher_logits = check_logit_pair(student_logits, teacher_logits, owner)
            t = self.temperature
            kl = kl_divergence(temperature_log_softmax(student_logits, t), temperature_log_softmax(teacher_logits, t))
            components["kd"] = self.alpha * t * t * kl
        if self.alpha < 1:
            student_logits = check_logits(student_logits, "student logits", owner)
            why = f"alpha={self.alpha} < 1 keeps the CE term"
            components["ce"] = (1.0 - self.alpha) * supervised_term(self.ce_loss, student_logits, target, owner, why)
        return sum_components(components), components
