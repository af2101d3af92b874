"""MONAI inferers for subject-level predictions of single-stack slice networks (2D / 2.5D).

Networks that pool a subject's stacks themselves (multiple-instance students) need none: ``SimpleInferer``.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

__all__ = ["AGGREGATIONS", "SliceStackInferer"]

#: How :class:`SliceStackInferer` combines the stack predictions of a subject.
AGGREGATIONS: tuple[str, ...] = ("logits", "probabilities")


class SliceStackInferer(Inferer):
    """Subject-level logits of a slice network (2D / 2.5D) from several slice stacks of each volume.

    A slice network classifies one stack ``[B, C, H, W]`` (``C = 4*K`` for ``K`` adjacent slices of the four
    modalities). The multi-stack slice pipeline (``slice_stack_transforms(num_stacks=S)``) gives
    ``[B, S, C, H, W]``: all ``B * S`` stacks go through the network as one batch and the ``S`` predictions of a
    subject are combined by ``aggregate``:

    - ``"logits"``: the mean of the stack logits, ``mean_s z_s`` (a normalised geometric mean of the stack
      probabilities); the bundles use it.
    - ``"probabilities"``: the log of the mean stack probabilities, ``log mean_s softmax(z_s)``. These are valid
      logits of that average (``softmax(log p) = p`` because ``p`` sums to one), so the usual post-processing and
      metrics (softmax, argmax, AUC) see exactly the averaged probabilities. One confident stack cannot outvote
      the others, which is how slice-level studies aggregate per patient (the ablation uses it).

    Both keep the output logits-like ``[B, num_classes]``, as every other network's ``forward``. A single-stack
    input ``[B, C, H, W]`` passes through unchanged.

    This inferer is for networks trained on single stacks. A multiple-instance network that pools the ``S``
    stacks of a subject itself (``efficientnet25d_multi``, the 2.5D bundle) takes ``[B, S, C, H, W]`` whole and
    returns subject logits: run it with MONAI's ``SimpleInferer``, so the subject prediction is the one it was
    trained to make.

    Args:
        spatial_dims: spatial dimensions of one stack (2 for a slice network).
        aggregate: ``"logits"`` (default) or ``"probabilities"``, see above.

    Raises:
        ValueError: if ``aggregate`` is not one of :data:`AGGREGATIONS`.
    """

    def __init__(self, spatial_dims: int = 2, aggregate: str = "logits") -> None:
        super().__init__()
        if aggregate not in AGGREGATIONS:
            raise ValueError(f"aggregate must be one of {', '.join(map(repr, AGGREGATIONS))}, got {aggregate!r}")
        self.spatial_dims = spatial_dims
        self.aggregate = aggregate

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """Combine the stack logits ``[B, S, num_classes]`` of each subject into ``[B, num_classes]``.

        Args:
            logits: per-stack logits, stacks on dimension 1.

        Returns:
            Subject-level logits (mean logits, or log of the mean probabilities).
        """
        if self.aggregate == "logits":
            return logits.mean(dim=1)
        probabilities = torch.softmax(logits.float(), dim=-1).mean(dim=1)
        # clamp: a probability that underflowed to 0 would give -inf, which breaks losses and AUC
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run ``network`` on every stack and combine the predictions per subject.

        Args:
            inputs: ``[B, S, C, *spatial]`` stacks, or ``[B, C, *spatial]`` for one stack per subject.
            network: the slice classifier returning ``[N, num_classes]`` logits.
            args: positional arguments for ``network``.
            kwargs: keyword arguments for ``network``.

        Returns:
            Logits ``[B, num_classes]``.

        Raises:
            ValueError: if ``inputs`` has neither ``2 + spatial_dims`` nor ``3 + spatial_dims`` dimensions.
        """
        if inputs.ndim == 2 + self.spatial_dims:
            return network(inputs, *args, **kwargs)
        if inputs.ndim != 3 + self.spatial_dims:
            raise ValueError(
                f"SliceStackInferer expects [B, S, C, *spatial] or [B, C, *spatial] with {self.spatial_dims} spatial "
                f"dimensions, got shape {tuple(inputs.shape)}; check the slice pipeline's num_stacks."
            )
        batch, stacks = inputs.shape[:2]
        logits = network(inputs.reshape(batch * stacks, *inputs.shape[2:]), *args, **kwargs)
        return self.combine(logits.reshape(batch, stacks, -1))
