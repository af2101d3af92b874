"""Decoupled knowledge distillation (DKD; Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022).

DKD splits the classical KD term into a target-class part (TCKD) and a non-target-class part (NCKD) and
weighs them independently. With ``p = softmax(z / T)`` and target class ``y``:

- binary target distribution ``b = [p_y, 1 - p_y]``: ``TCKD = KL(b_teacher || b_student)``;
- non-target distribution ``p_hat_c = p_c / (1 - p_y)`` over the classes ``c != y``:
  ``NCKD = KL(p_hat_teacher || p_hat_student)``;

    L = ce_weight * CE(z_s, y) + w(epoch) * T^2 * (alpha * TCKD + beta * NCKD),    w = min(epoch / warmup, 1)

Both KLs are summed over their classes and averaged over the batch. Classical KD equals
``TCKD + (1 - p_y_teacher) * NCKD``; DKD frees NCKD from that teacher-confidence factor.

With two classes (HGG vs LGG) the non-target distribution lives on a single class and is the constant ``[1]``,
so NCKD is exactly 0 with zero gradient and DKD reduces to ``alpha``-weighted TCKD (which then equals classical
KD). The implementation gathers the ``C - 1`` non-target logits instead of masking with a large negative
constant, so this degenerate case yields exact zeros and no NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .kd import (
    check_logit_pair,
    check_non_negative,
    check_positive,
    check_target,
    kl_divergence,
    sum_components,
    temperature_log_softmax,
)

__all__ = ["DKDLoss", "decoupled_kl_terms"]


def _binary_and_non_target_log_probs(logits: Tensor, target: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Log-probabilities of ``[target, not target]`` (``[B, 2]``) and of the non-target classes (``[B, C-1]``)."""
    log_probs = temperature_log_softmax(logits, temperature)
    is_target = torch.zeros_like(log_probs, dtype=torch.bool).scatter_(1, target.unsqueeze(1), True)
    batch, num_classes = log_probs.shape
    # Boolean indexing keeps row-major order, so each row keeps its C - 1 non-target entries in class order.
    non_target = log_probs[~is_target].view(batch, num_classes - 1)
    log_not_target = torch.logsumexp(non_target, dim=1, keepdim=True)  # log(1 - p_y), without cancellation
    binary = torch.cat([log_probs.gather(1, target.unsqueeze(1)), log_not_target], dim=1)
    # log p_hat_c = log p_c - log(1 - p_y), i.e. the softmax over the non-target logits alone.
    return binary, non_target - log_not_target


def decoupled_kl_terms(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = 1.0
) -> tuple[Tensor, Tensor]:
    """The unweighted, unscaled ``(TCKD, NCKD)`` of DKD, each a batch-mean KL (no ``T^2``).

    Args:
        student_logits: ``[B, C]`` student logits.
        teacher_logits: ``[B, C]`` teacher logits (not detached here).
        target: ``[B]`` int64 class indices.
        temperature: softmax temperature.

    Returns:
        ``(tckd, nckd)`` scalars; ``nckd`` is exactly 0 when ``C == 2``.
    """
    student_binary, student_rest = _binary_and_non_target_log_probs(student_logits, target, temperature)
    teacher_binary, teacher_rest = _binary_and_non_target_log_probs(teacher_logits, target, temperature)
    return kl_divergence(student_binary, teacher_binary), kl_divergence(student_rest, teacher_rest)


class DKDLoss(nn.Module):
    """Decoupled KD: ``ce_weight * CE + w * T^2 * (alpha * TCKD + beta * NCKD)``, see the module docstring.

    Defaults are the paper's CIFAR-100 setting (``alpha=1, beta=8, T=4``, CE weight 1) except the warm-up, which
    is off by default because it needs the current epoch. With ``warmup_epochs > 0`` the KD terms ramp up
    linearly as ``min(epoch / warmup_epochs, 1)`` (the paper uses 20 epochs); call :meth:`set_epoch` with the
    1-based epoch (Ignite's ``engine.state.epoch``) at the start of each epoch.

    Components: ``"ce"`` (omitted when ``ce_weight == 0``, then ``target`` is still needed for the decoupling),
    ``"tckd"`` = ``w * alpha * T^2 * TCKD`` and ``"nckd"`` = ``w * beta * T^2 * NCKD``; they sum to the total.

    Args:
        alpha: weight of TCKD (``>= 0``).
        beta: weight of NCKD (``>= 0``); irrelevant for two classes, where NCKD is 0.
        temperature: softmax temperature ``T > 0``.
        ce_weight: weight of the supervised term (``>= 0``).
        warmup_epochs: epochs of linear warm-up of the KD terms; 0 disables it.
        ce_loss: supervised criterion ``ce_loss(z_s, y) -> scalar``; defaults to ``nn.CrossEntropyLoss()``.

    Raises:
        ValueError: for negative weights, a non-positive temperature or negative ``warmup_epochs``.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 8.0,
        temperature: float = 4.0,
        ce_weight: float = 1.0,
        warmup_epochs: int = 0,
        ce_loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.alpha = check_non_negative(alpha, "alpha", owner)
        self.beta = check_non_negative(beta, "beta", owner)
        self.temperature = check_positive(temperature, "temperature", owner)
        self.ce_weight = check_non_negative(ce_weight, "ce_weight", owner)
        if int(warmup_epochs) != warmup_epochs or warmup_epochs < 0:
            raise ValueError(f"{owner}: warmup_epochs={warmup_epochs} must be a whole number >= 0 (0 disables it).")
        self.warmup_epochs = int(warmup_epochs)
        self.ce_loss = ce_loss if ce_loss is not None else nn.CrossEntropyLoss()
        self.epoch: int | None = None

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, beta={self.beta}, temperature={self.temperature}, ce_weight={self.ce_weight}, "
            f"warmup_epochs={self.warmup_epochs}"
        )

    def set_epoch(self, epoch: int) -> None:
        """Set the current 1-based epoch used by the warm-up factor ``min(epoch / warmup_epochs, 1)``."""
        self.epoch = int(epoch)

    def warmup_factor(self) -> float:
        """The KD-term factor of the current epoch (1 without warm-up).

        Raises:
            RuntimeError: when warm-up is on but :meth:`set_epoch` was never called.
        """
        if self.warmup_epochs == 0:
            return 1.0
        if self.epoch is None:
            raise RuntimeError(
                f"{type(self).__name__}(warmup_epochs={self.warmup_epochs}) does not know the epoch: call "
                "loss.set_epoch(engine.state.epoch) at every epoch start, or pass warmup_epochs=0."
            )
        return min(self.epoch / self.warmup_epochs, 1.0)

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            student_logits: ``[B, C]`` student logits.
            teacher_logits: ``[B, C]`` teacher logits (detached here).
            target: ``[B]`` int64 class indices (always needed: it defines the target/non-target split).

        Returns:
            ``(total, components)``.
        """
        owner = type(self).__name__
        student_logits, teacher_logits = check_logit_pair(student_logits, teacher_logits, owner)
        target = check_target(target, student_logits, owner, "DKD splits the classes into target and non-target")
        components: dict[str, Tensor] = {}
        if self.ce_weight > 0:
            components["ce"] = self.ce_weight * self.ce_loss(student_logits, target)
        tckd, nckd = decoupled_kl_terms(student_logits, teacher_logits, target, self.temperature)
        scale = self.warmup_factor() * self.temperature**2
        components["tckd"] = scale * self.alpha * tckd
        components["nckd"] = scale * self.beta * nckd
        return sum_components(components), components
