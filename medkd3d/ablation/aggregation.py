"""Subject-level predictions of slice classifiers: average the slice-level probabilities of each subject."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

__all__ = ["SliceProbabilityInferer"]


class SliceProbabilityInferer(Inferer):
    """MONAI inferer giving one prediction per subject from a 2D/2.5D network and several slice stacks.

    The multi-stack slice pipeline (``slice_stack_transforms(num_stacks=S)``) yields ``[B, S, C, H, W]``. All
    ``B * S`` stacks go through the network as one batch, each stack's logits become probabilities by softmax,
    and the ``S`` probability vectors of a subject are averaged: ``p = mean_s softmax(z_s)``. The inferer
    returns ``log p``, which are valid logits of that average (``softmax(log p) = p`` because ``p`` sums to
    one), so the usual post-processing and metrics (softmax, argmax, AUC) see exactly the averaged
    probabilities. Unlike averaging logits (a normalised geometric mean), one confident slice cannot outvote
    the others, which is how slice-level studies aggregate per patient.

    A single-stack input ``[B, C, H, W]`` passes through unchanged.

    Args:
        spatial_dims: spatial dimensions of one stack (2).
    """

    def __init__(self, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Subject-level logits ``[B, num_classes]`` (log of the mean stack probabilities).

        Raises:
            ValueError: if ``inputs`` has neither ``2 + spatial_dims`` nor ``3 + spatial_dims`` dimensions.
        """
        if inputs.ndim == 2 + self.spatial_dims:
            return network(inputs, *args, **kwargs)
        if inputs.ndim != 3 + self.spatial_dims:
            raise ValueError(
                f"SliceProbabilityInferer expects [B, S, C, *spatial] or [B, C, *spatial] with {self.spatial_dims} "
                f"spatial dimensions, got shape {tuple(inputs.shape)}; check the slice pipeline's num_stacks."
            )
        batch, stacks = inputs.shape[:2]
        logits = network(inputs.reshape(batch * stacks, *inputs.shape[2:]), *args, **kwargs)
        probabilities = torch.softmax(logits.float(), dim=-1).reshape(batch, stacks, -1).mean(dim=1)
        return probabilities.clamp_min(torch.finfo(probabilities.dtype).tiny).log()
