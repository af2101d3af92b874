"""Distillation-token loss of DeiT (Touvron et al., 2021) as used by HDKD's DFLT student (HDKD eq. 6).

A two-head student has a class token, supervised by the labels, and a distillation token, supervised by the
teacher::

    L = (1 - alpha) * CE(z_cls, y) + alpha * L_dist(z_dist, z_teacher)

    soft: L_dist = T^2 * KL(softmax(z_teacher / T) || softmax(z_dist / T))
    hard: L_dist = CE(z_dist, argmax z_teacher)

At inference the student averages both heads (the network contract's ``forward``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .kd import (
    check_fraction,
    check_logit_pair,
    check_logits,
    check_positive,
    kl_divergence,
    sum_components,
    supervised_term,
    temperature_log_softmax,
)

__all__ = ["TokenDistillationLoss"]

_MODES = ("soft", "hard")


class TokenDistillationLoss(nn.Module):
    """DeiT/HDKD token distillation for two-head students.

    ``L = (1 - alpha) * CE(z_cls, y) + alpha * L_dist(z_dist, z_t)``; soft ``L_dist = T^2 * KL(p_t || p_dist)``
    (batch mean of the per-sample KL summed over classes, ``p = softmax(z / T)``), hard
    ``L_dist = CE(z_dist, argmax z_t)`` (plain, unweighted cross-entropy; the temperature is unused).
    HDKD uses the defaults: ``alpha=0.5``, ``T=1``, soft.

    Components: ``"ce"`` = ``(1 - alpha) * CE(z_cls, y)`` and ``"kd"`` = ``alpha * L_dist``; a term with zero
    weight is neither computed nor reported (so ``target`` may be ``None`` when ``alpha=1``). Unlabelled items
    (label ``-1``) feed the distillation token only: the CE term averages over the labelled items (``0`` if none).

    Args:
        alpha: weight of the distillation-token term in ``[0, 1]``.
        temperature: softmax temperature ``T > 0`` of the soft mode.
        distillation: ``"soft"`` (KL to the teacher's tempered softmax) or ``"hard"`` (CE to the teacher's argmax).
        ce_loss: criterion of the class-token term, ``ce_loss(z_cls, y) -> scalar``; defaults to
            ``nn.CrossEntropyLoss()`` (pass a class-weighted CE or :class:`~medkd3d.losses.FocalLoss` instead).

    Raises:
        ValueError: for ``alpha`` outside ``[0, 1]``, a non-positive temperature or an unknown mode.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 1.0,
        distillation: str = "soft",
        ce_loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if distillation not in _MODES:
            raise ValueError(f"{owner}: distillation={distillation!r} must be one of {_MODES}.")
        self.alpha = check_fraction(alpha, "alpha", owner)
        self.temperature = check_positive(temperature, "temperature", owner)
        self.distillation = distillation
        self.ce_loss = ce_loss if ce_loss is not None else nn.CrossEntropyLoss()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}, distillation={self.distillation!r}"

    def forward(
        self,
        student_logits: tuple[Tensor, Tensor],
        teacher_logits: Tensor | None,
        target: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            student_logits: the pair ``(cls_logits, dist_logits)``, each ``[B, C]``, as returned by a two-head
                student's ``forward_heads(x)``.
            teacher_logits: ``[B, C]`` teacher logits (detached here; ``None`` allowed when ``alpha == 0``).
            target: ``[B]`` int64 class indices, ``-1`` for unlabelled items (``None`` allowed when ``alpha == 1``).

        Returns:
            ``(total, components)``.

        Raises:
            TypeError: when ``student_logits`` is not a pair.
            ValueError: for malformed logits or target; messages name the shapes.
        """
        owner = type(self).__name__
        if not isinstance(student_logits, (tuple, list)) or len(student_logits) != 2:
            raise TypeError(
                f"{owner}: student_logits must be the pair (cls_logits, dist_logits) of a two-head student, got "
                f"{type(student_logits).__name__}; call the student's forward_heads(x), not forward(x) "
                "(or use KDLoss for a one-head student)."
            )
        cls_logits = check_logits(student_logits[0], "class-token logits", owner)
        dist_logits = check_logits(student_logits[1], "distillation-token logits", owner)
        if cls_logits.shape != dist_logits.shape:
            raise ValueError(
                f"{owner}: class-token logits have shape {tuple(cls_logits.shape)} but distillation-token logits "
                f"have shape {tuple(dist_logits.shape)}; both heads must output [batch, num_classes]."
            )
        components: dict[str, Tensor] = {}
        if self.alpha < 1:
            why = f"alpha={self.alpha} < 1 keeps the class-token CE term"
            components["ce"] = (1.0 - self.alpha) * supervised_term(self.ce_loss, cls_logits, target, owner, why)
        if self.alpha > 0:
            dist_logits, teacher_logits = check_logit_pair(dist_logits, teacher_logits, owner)
            if self.distillation == "soft":
                t = self.temperature
                student_log_probs = temperature_log_softmax(dist_logits, t)
                distill = t * t * kl_divergence(student_log_probs, temperature_log_softmax(teacher_logits, t))
            else:
                distill = F.cross_entropy(dist_logits, teacher_logits.argmax(dim=1))
            components["kd"] = self.alpha * distill
        return sum_components(components), components
