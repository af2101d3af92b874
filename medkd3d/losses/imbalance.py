"""Class-imbalance terms: class weights from label counts and a multi-class focal loss.

Glioma grades are imbalanced (BraTS 2019: 259 HGG / 76 LGG). Every distillation loss of this package takes its
supervised term as a replaceable ``ce_loss=`` module, so either of these drops in::

    weights = class_weights_from_labels([d["label"] for d in datalist["training"]], num_classes=2)
    KDLoss(alpha=0.5, temperature=4.0, ce_loss=nn.CrossEntropyLoss(weight=weights))
    KDLoss(alpha=0.5, temperature=4.0, ce_loss=FocalLoss(gamma=2.0, weight=weights))

In a bundle config: ``"ce_loss": {"_target_": "torch.nn.CrossEntropyLoss", "weight": "$torch.tensor([1.55, 0.45])"}``.
Only the supervised term is re-weighted; the distillation terms follow the teacher's distribution.

Unlabelled subjects (label ``-1``) count for no class: the weights come from the labelled ones, the distillation
losses leave them out of their supervised term, and :class:`LabelledCrossEntropyLoss` (the criterion of
CE-only training) refuses them with a message instead of torch's index error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kd import UNLABELLED, check_logits, check_non_negative, check_target

__all__ = ["FocalLoss", "LabelledCrossEntropyLoss", "class_weights_from_counts", "class_weights_from_labels"]

_METHODS = ("inverse", "effective")
_REDUCTIONS = ("mean", "sum", "none")


def class_weights_from_counts(counts: Sequence[int], method: str = "inverse", beta: float = 0.999) -> Tensor:
    """Per-class weights from the number of samples per class, normalised to sum to the number of classes.

    - ``"inverse"``: ``w_c ∝ 1 / n_c``.
    - ``"effective"`` (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019):
      ``w_c ∝ 1 / E_c`` with the effective number ``E_c = (1 - beta^n_c) / (1 - beta)``; ``beta -> 0`` gives equal
      weights, ``beta -> 1`` the inverse frequency.

    Normalising to ``sum_c w_c = C`` (as Cui et al.) keeps a balanced data set at weights 1 and the loss scale
    comparable to the unweighted one.

    Args:
        counts: number of samples of each class, index = class index.
        method: ``"inverse"`` or ``"effective"``.
        beta: hyperparameter of the effective number, in ``[0, 1)``.

    Returns:
        float32 ``[C]`` weights, for ``nn.CrossEntropyLoss(weight=...)`` or :class:`FocalLoss`.

    Raises:
        ValueError: for an unknown method, ``beta`` outside ``[0, 1)``, or a class without samples.
    """
    if method not in _METHODS:
        raise ValueError(f"class weights: method={method!r} must be one of {_METHODS}.")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"class weights: beta={beta} must lie in [0, 1) (the paper uses 0.9 ... 0.9999).")
    counts_np = np.asarray(counts, dtype=np.float64)
    if counts_np.ndim != 1 or counts_np.size == 0 or (counts_np < 0).any():
        raise ValueError(f"class weights: counts={list(counts)} must be one non-negative count per class.")
    empty = np.flatnonzero(counts_np == 0).tolist()
    if empty:
        raise ValueError(
            f"class weights: class(es) {empty} have no samples in counts={counts_np.astype(int).tolist()}, so their "
            "weight is undefined; check num_classes and the labels of the training split."
        )
    if method == "inverse":
        inverse = 1.0 / counts_np
    else:
        inverse = (1.0 - beta) / (1.0 - np.power(beta, counts_np))
    weights = inverse * counts_np.size / inverse.sum()
    return torch.as_tensor(weights, dtype=torch.float32)


def class_weights_from_labels(
    labels: Sequence[int | None] | np.ndarray | Tensor,
    num_classes: int,
    method: str = "inverse",
    beta: float = 0.999,
) -> Tensor:
    """Per-class weights from the training labels; see :func:`class_weights_from_counts` for the formulas.

    Unlabelled subjects (``None`` in a datalist, ``-1`` once batched) are skipped: they belong to no class, and the
    supervised terms that use these weights never see them.

    Args:
        labels: integer class index per training sample (e.g. the datalist's ``"label"`` values).
        num_classes: number of classes ``C`` (every class must occur among the labelled samples).
        method: ``"inverse"`` or ``"effective"``.
        beta: hyperparameter of the effective number, in ``[0, 1)``.

    Returns:
        float32 ``[C]`` weights summing to ``C``.

    Raises:
        ValueError: for labels that are not integers in ``[0, num_classes)``, no labelled sample at all, or a class
            without samples.
    """
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().reshape(-1).tolist()
    values = [v for v in np.asarray(labels, dtype=object).reshape(-1).tolist() if v is not None and v != UNLABELLED]
    try:
        floats = np.asarray(values, dtype=np.float64)
        as_int = floats.astype(np.int64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"class weights: labels must be integer class indices or None (unlabelled) ({err}).") from err
    if floats.size == 0 or (as_int != floats).any() or as_int.min() < 0 or as_int.max() >= num_classes:
        raise ValueError(
            f"class weights: labels must hold integers in [0, {num_classes}) (None or {UNLABELLED} for unlabelled "
            f"subjects), got values {np.unique(floats)[:10].tolist()} besides the unlabelled ones; check num_classes "
            "and the datalist's label column."
        )
    return class_weights_from_counts(np.bincount(as_int, minlength=num_classes), method=method, beta=beta)


class LabelledCrossEntropyLoss(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` that refuses unlabelled (``-1``) and out-of-range labels with a clear message.

    The criterion of CE-only training (the teacher bundles' MONAI ``SupervisedTrainer``): a subject without a
    grade cannot be learnt from by cross-entropy, and torch would fail on it with a bare index error (or a CUDA
    device-side assert). Distil on such subjects with :class:`~medkd3d.engines.DistillationTrainer` instead.
    Every argument of ``nn.CrossEntropyLoss`` is accepted; logits are ``[B, C]`` (classification) and
    class-probability targets (floating ``[B, C]``) pass unchecked.

    Raises:
        ValueError: in ``forward``, naming how many items are unlabelled or which labels are out of range.
    """

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """Compute the loss after checking the class-index targets; see ``nn.CrossEntropyLoss``."""
        if isinstance(target, Tensor) and not target.is_floating_point():
            owner = type(self).__name__
            check_target(target, check_logits(input, "logits", owner), owner, "cross-entropy training is supervised")
        return super().forward(input, target)


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al., 2017), a drop-in replacement of ``nn.CrossEntropyLoss``.

    ``FL_i = -w_{y_i} * (1 - p_{i, y_i})^gamma * log p_{i, y_i}`` with ``p = softmax(z)``; ``gamma`` down-weights
    easy, well-classified samples and ``w`` (the "alpha" of the paper, one weight per class) re-weights classes.
    ``reduction="mean"`` divides by ``sum_i w_{y_i}`` exactly like ``nn.CrossEntropyLoss(weight=w)``, so
    ``gamma=0`` reproduces the (weighted) cross-entropy.

    Unlike the distillation losses this is a plain criterion returning one tensor: it is meant as the
    ``ce_loss=`` of :class:`~medkd3d.losses.KDLoss` and friends, or as a MONAI trainer's ``loss_function``.

    Args:
        gamma: focusing parameter ``>= 0``.
        weight: optional float ``[C]`` class weights (see :func:`class_weights_from_labels`).
        reduction: ``"mean"`` (weighted mean), ``"sum"`` or ``"none"`` (``[B]``).

    Raises:
        ValueError: for a negative ``gamma``, an unknown reduction or a weight that is not ``[C]``.
    """

    def __init__(self, gamma: float = 2.0, weight: Tensor | Sequence[float] | None = None, reduction: str = "mean"):
        super().__init__()
        owner = type(self).__name__
        self.gamma = check_non_negative(gamma, "gamma", owner)
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{owner}: reduction={reduction!r} must be one of {_REDUCTIONS}.")
        self.reduction = reduction
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float32)
            if weight.ndim != 1 or (weight < 0).any():
                raise ValueError(f"{owner}: weight must be a non-negative [num_classes] vector, got {weight.tolist()}.")
        self.register_buffer("weight", weight)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, reduction={self.reduction!r}"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            logits: ``[B, C]`` logits.
            target: ``[B]`` int64 class indices.

        Returns:
            A scalar, or ``[B]`` for ``reduction="none"``.
        """
        owner = type(self).__name__
        logits = check_logits(logits, "logits", owner)
        target = check_target(target, logits, owner, "the focal loss is supervised")
        if self.weight is not None and self.weight.numel() != logits.shape[1]:
            raise ValueError(
                f"{owner}: weight has {self.weight.numel()} entries but the logits have {logits.shape[1]} classes."
            )
        log_pt = F.log_softmax(logits.float(), dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
        # (1 - p)^0 is 1 even at p == 1, so gamma=0 is exactly the cross-entropy.
        loss = -((1.0 - log_pt.exp()) ** self.gamma) * log_pt
        sample_weight = self.weight[target] if self.weight is not None else torch.ones_like(loss)
        loss = loss * sample_weight
        if self.reduction == "none":
            return loss
        if self.reduction == "sum":
            return loss.sum()
        return loss.sum() / sample_weight.sum()
