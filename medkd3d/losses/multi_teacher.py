"""Multi-teacher logit distillation: KD towards a weighted average of several teachers' soft targets.

The ensemble soft target of ``K`` teachers is ``p_bar = sum_k w_k * softmax(z_k / T)`` and the loss is the seed
formula with ``p_bar`` in place of a single teacher::

    L = alpha * T^2 * KL(p_bar || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

Weights ``w_k`` are the fixed ``teacher_weights`` normalised to sum to 1, or, with ``weighting="confidence"``,
per-sample weights that favour the teachers that are right on that sample::

    w_ik = teacher_weights_k * q_ik / sum_j teacher_weights_j * q_ij,    q_ik = softmax(z_ik)[y_i] = exp(-CE(z_ik, y_i))

i.e. a softmax over the teachers of their negative cross-entropy on the label (at temperature 1), tilted by the
fixed prior weights. (The explainable multi-teacher KD seed distils several teachers of different architectures
into one student; confidence weighting keeps a teacher that is wrong on a sample from dominating it.)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .kd import (
    check_fraction,
    check_logit_pair,
    check_logits,
    check_positive,
    check_target,
    check_teacher_sequence,
    kl_divergence,
    sum_components,
    temperature_log_softmax,
)

__all__ = ["MultiTeacherKDLoss"]

_WEIGHTINGS = ("fixed", "confidence")


class MultiTeacherKDLoss(nn.Module):
    """KD from an ensemble of teachers: ``alpha * T^2 * KL(p_bar || p_s) + (1 - alpha) * CE``.

    See the module docstring for ``p_bar`` and the weightings. With one teacher this is exactly
    :class:`~medkd3d.losses.KDLoss`. The KL is the batch mean of the per-sample KL summed over classes.

    Components: ``"kd"`` and ``"ce"`` as in :class:`~medkd3d.losses.KDLoss` (a zero-weight term is omitted).

    Args:
        teacher_weights: non-negative prior weight per teacher (normalised to sum to 1); ``None`` weighs the
            teachers equally (the number of teachers is then taken from each call).
        alpha: weight of the distillation term in ``[0, 1]``.
        temperature: softmax temperature ``T > 0``.
        weighting: ``"fixed"`` (the normalised ``teacher_weights`` for every sample) or ``"confidence"``
            (per-sample weights proportional to ``teacher_weights_k * p_k(y)``; needs ``target``).
        ce_loss: supervised criterion ``ce_loss(z_s, y) -> scalar``; defaults to ``nn.CrossEntropyLoss()``.

    Raises:
        ValueError: for negative or all-zero ``teacher_weights``, ``alpha`` outside ``[0, 1]``, a non-positive
            temperature or an unknown weighting.
    """

    def __init__(
        self,
        teacher_weights: Sequence[float] | None = None,
        alpha: float = 0.5,
        temperature: float = 4.0,
        weighting: str = "fixed",
        ce_loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.alpha = check_fraction(alpha, "alpha", owner)
        self.temperature = check_positive(temperature, "temperature", owner)
        if weighting not in _WEIGHTINGS:
            raise ValueError(f"{owner}: weighting={weighting!r} must be one of {_WEIGHTINGS}.")
        self.weighting = weighting
        weights = None
        if teacher_weights is not None:
            weights = torch.as_tensor(list(teacher_weights), dtype=torch.float32)
            if weights.ndim != 1 or weights.numel() == 0 or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(
                    f"{owner}: teacher_weights={list(teacher_weights)} must be one non-negative number per teacher "
                    "with a positive sum (they are normalised to sum to 1)."
                )
            weights = weights / weights.sum()
        # A buffer follows loss.to(device); it is a constructor argument, so it stays out of the state dict.
        self.register_buffer("teacher_weights", weights, persistent=False)
        self.ce_loss = ce_loss if ce_loss is not None else nn.CrossEntropyLoss()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, temperature={self.temperature}, weighting={self.weighting!r}"

    def _log_weights(self, teachers: Sequence[Tensor], target: Tensor | None, owner: str) -> Tensor:
        """``log w`` of shape ``[K, B, 1]`` (fixed weights broadcast over the batch)."""
        num_teachers, batch = len(teachers), teachers[0].shape[0]
        if self.teacher_weights is None:
            prior = torch.full((num_teachers,), 1.0 / num_teachers, device=teachers[0].device)
        elif self.teacher_weights.numel() != num_teachers:
            raise ValueError(
                f"{owner}: got logits of {num_teachers} teachers but {self.teacher_weights.numel()} teacher_weights; "
                "pass one weight per teacher, in the order of the teacher logits."
            )
        else:
            prior = self.teacher_weights.to(teachers[0].device)
        log_prior = prior.log().view(num_teachers, 1, 1).expand(num_teachers, batch, 1)
        if self.weighting == "fixed":
            return log_prior
        target = check_target(target, teachers[0], owner, 'weighting="confidence" weighs teachers by the label')
        # log q_ik = log softmax(z_ik)[y_i] = -CE(z_ik, y_i)
        log_conf = torch.stack([-F.cross_entropy(z.float(), target, reduction="none") for z in teachers])
        return torch.log_softmax(log_prior + log_conf.unsqueeze(2), dim=0)

    def forward(
        self,
        student_logits: Tensor,
        teacher_logits: Sequence[Tensor] | None,
        target: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            student_logits: ``[B, C]`` student logits.
            teacher_logits: a sequence with one ``[B, C]`` logits tensor per teacher (detached here; ``None``
                allowed when ``alpha == 0``).
            target: ``[B]`` int64 class indices (``None`` allowed when ``alpha == 1`` with fixed weights).

        Returns:
            ``(total, components)``.
        """
        owner = type(self).__name__
        components: dict[str, Tensor] = {}
        if self.alpha > 0:
            teacher_logits = check_teacher_sequence(teacher_logits, owner)
            teachers = [
                check_logit_pair(student_logits, z, owner, teacher_name=f"logits of teacher {k}")[1]
                for k, z in enumerate(teacher_logits)
            ]
            t = self.temperature
            # log p_bar = log sum_k w_k p_k, computed as a logsumexp so that tiny probabilities stay exact.
            log_teacher_probs = torch.stack([temperature_log_softmax(z, t) for z in teachers])
            log_mixture = torch.logsumexp(self._log_weights(teachers, target, owner) + log_teacher_probs, dim=0)
            kl = kl_divergence(temperature_log_softmax(student_logits, t), log_mixture)
            components["kd"] = self.alpha * t * t * kl
        if self.alpha < 1:
            student_logits = check_logits(student_logits, "student logits", owner)
            target = check_target(target, student_logits, owner, f"alpha={self.alpha} < 1 keeps the CE term")
            components["ce"] = (1.0 - self.alpha) * self.ce_loss(student_logits, target)
        return sum_components(components), components
