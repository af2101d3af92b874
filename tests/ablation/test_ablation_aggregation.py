"""Per-subject aggregation of slice predictions: the mean of the slice-stack probabilities."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medkd3d.ablation.aggregation import SliceProbabilityInferer


class _TinySliceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(12, 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3)) * 5  # large logits: averaging probabilities != averaging logits


def test_subject_probability_is_the_mean_of_stack_probabilities() -> None:
    network = _TinySliceNet()
    stacks = torch.randn(2, 4, 12, 8, 8)  # 2 subjects, 4 stacks of 4 modalities x 3 slices
    logits = SliceProbabilityInferer()(stacks, network)
    expected = torch.stack(
        [torch.stack([network(s[None])[0].softmax(-1) for s in subject]).mean(0) for subject in stacks]
    )
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits.softmax(-1), expected)
    mean_logits = torch.stack([network(subject).mean(0) for subject in stacks])
    assert not torch.allclose(mean_logits.softmax(-1), expected, atol=1e-3)


def test_single_stack_passes_through_and_bad_shapes_fail() -> None:
    network = _TinySliceNet()
    single = torch.randn(3, 12, 8, 8)
    torch.testing.assert_close(SliceProbabilityInferer()(single, network), network(single))
    with pytest.raises(ValueError, match="num_stacks"):
        SliceProbabilityInferer()(torch.randn(12, 8, 8), network)
