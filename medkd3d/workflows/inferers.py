"""MONAI inferers for subject-level predictions of slice-based (2.5D) networks."""

from __future__ import annotations

from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

__all__ = ["SliceStackInferer"]


class SliceStackInferer(Inferer):
    """Subject-level logits of a 2.5D network from several slice stacks of each volume.

    A 2.5D network classifies one slice stack ``[B, 4*K, H, W]``. The multi-stack 2.5D pipeline
    (``slice_stack_transforms(num_stacks=S)``) gives ``[B, S, 4*K, H, W]``: every stack goes through the network
    as one batch and the ``S`` logit vectors of a subject are averaged. Averaging logits (a normalised geometric
    mean of the stack probabilities) keeps the output raw logits, like every other network's ``forward``, so
    the same post-processing and metrics apply. A single-stack input ``[B, 4*K, H, W]`` passes through unchanged.

    Args:
        spatial_dims: spatial dimensions of one stack (2 for a 2.5D network).
    """

    def __init__(self, spatial_dims: int = 2) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run ``network`` on every stack and average the logits per subject.

        Args:
            inputs: ``[B, S, C, *spatial]`` stacks, or ``[B, C, *spatial]`` for one stack per subject.
            network: the 2.5D classifier returning ``[N, num_classes]`` logits.
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
        return logits.reshape(batch, stacks, -1).mean(dim=1)
