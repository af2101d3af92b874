"""DIST: knowledge distillation from a stronger teacher (Huang et al., NeurIPS 2022).

DIST replaces the exact match of KL by a match of *relations*, measured with the Pearson correlation
``rho(u, v) = cov(u, v) / (std(u) std(v))`` and the distance ``d(u, v) = 1 - rho(u, v)``. With the
prediction matrices ``Y = softmax(Z / T)`` of shape ``[B, C]``:

- inter-class relation (one row per sample, correlated across its classes):
  ``L_inter = 1/B * sum_i d(Y_s[i, :], Y_t[i, :])``;
- intra-class relation (one column per class, correlated across the batch):
  ``L_intra = 1/C * sum_c d(Y_s[:, c], Y_t[:, c])``;

    L = ce_weight * CE(Z_s, y) + T^2 * (beta * L_inter + gamma * L_intra)

Being invariant to shifts and scales of the predictions, DIST lets a small student follow a much stronger
teacher's ranking of classes without matching its confidence exactly.

Notes on degenerate cases (as in the authors' code, a small ``eps`` keeps zero-variance vectors finite: their
correlation is 0 and their distance 1):

- two classes: a row ``[p, 1 - p]`` centred is ``+-(p - 1/2) [1, -1]``, so the inter-class correlation is
  ``+-1`` (agreement of the predicted class) and ``L_inter`` carries almost no gradient; the intra-class term
  carries the signal;
- a batch of one sample: every column is constant, ``L_intra`` is the constant 1 (no gradient).
"""

from __future__ import annotations

from torch import Tensor, nn

from .kd import check_logit_pair, check_non_negative, check_positive, check_target, sum_components

__all__ = ["DISTLoss", "pearson_distance"]


def pearson_distance(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Row-wise ``1 - rho(a_i, b_i)`` of two ``[N, K]`` matrices (Pearson correlation over the last dimension).

    Args:
        a, b: ``[N, K]`` tensors.
        eps: added to the product of norms so that constant rows give correlation 0 instead of NaN.

    Returns:
        ``[N]`` distances in ``[0, 2]``.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    correlation = (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
    return 1.0 - correlation


class DISTLoss(nn.Module):
    """DIST relation distillation: ``ce_weight * CE + T^2 * (beta * L_inter + gamma * L_intra)``.

    See the module docstring for the formulas. Defaults follow the paper (``beta = gamma = 1``, ``T = 1``,
    CE weight 1).

    Components: ``"ce"`` (omitted when ``ce_weight == 0``; ``target`` may then be ``None``), ``"inter"`` =
    ``beta * T^2 * L_inter`` and ``"intra"`` = ``gamma * T^2 * L_intra``; they sum to the total.

    Args:
        beta: weight of the inter-class (per-sample) relation term (``>= 0``).
        gamma: weight of the intra-class (per-class, across the batch) relation term (``>= 0``).
        temperature: softmax temperature ``T > 0``.
        ce_weight: weight of the supervised term (``>= 0``).
        ce_loss: supervised criterion ``ce_loss(z_s, y) -> scalar``; defaults to ``nn.CrossEntropyLoss()``.

    Raises:
        ValueError: for negative weights or a non-positive temperature.
    """

    def __init__(
        self,
        beta: float = 1.0,
        gamma: float = 1.0,
        temperature: float = 1.0,
        ce_weight: float = 1.0,
        ce_loss: nn.Module | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.beta = check_non_negative(beta, "beta", owner)
        self.gamma = check_non_negative(gamma, "gamma", owner)
        self.temperature = check_positive(temperature, "temperature", owner)
        self.ce_weight = check_non_negative(ce_weight, "ce_weight", owner)
        self.ce_loss = ce_loss if ce_loss is not None else nn.CrossEntropyLoss()

    def extra_repr(self) -> str:
        return f"beta={self.beta}, gamma={self.gamma}, temperature={self.temperature}, ce_weight={self.ce_weight}"

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Compute the loss.

        Args:
            student_logits: ``[B, C]`` student logits.
            teacher_logits: ``[B, C]`` teacher logits (detached here).
            target: ``[B]`` int64 class indices (``None`` allowed when ``ce_weight == 0``).

        Returns:
            ``(total, components)``.
        """
        owner = type(self).__name__
        student_logits, teacher_logits = check_logit_pair(student_logits, teacher_logits, owner)
        components: dict[str, Tensor] = {}
        if self.ce_weight > 0:
            target = check_target(target, student_logits, owner, f"ce_weight={self.ce_weight} > 0 keeps the CE term")
            components["ce"] = self.ce_weight * self.ce_loss(student_logits, target)
        t = self.temperature
        student_probs = (student_logits.float() / t).softmax(dim=1)
        teacher_probs = (teacher_logits.float() / t).softmax(dim=1)
        components["inter"] = self.beta * t * t * pearson_distance(student_probs, teacher_probs).mean()
        components["intra"] = self.gamma * t * t * pearson_distance(student_probs.T, teacher_probs.T).mean()
        return sum_components(components), components
