"""Per-subject aggregation of slice-stack predictions: ``SliceStackInferer`` with mean logits (the bundles) and
with the log of the mean probabilities (the ablation), against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medkd3d.engines.inferers import SliceStackInferer

# The network flattens a [N, 2, 1, 1] stack into its logits [N, 2], so each stack's logits are chosen by hand.
# Subject 0: stacks with logits (0, 0), (ln 3, 0), (0, 0), i.e. probabilities (1/2, 1/2), (3/4, 1/4), (1/2, 1/2).
# Subject 1: one confident stack (ln 99, 0) -> (0.99, 0.01) against two (0, ln 3) -> (1/4, 3/4) each.
STACK_LOGITS = torch.tensor(
    [
        [[0.0, 0.0], [math.log(3), 0.0], [0.0, 0.0]],
        [[math.log(99), 0.0], [0.0, math.log(3)], [0.0, math.log(3)]],
    ]
)


def _stacks(logits: torch.Tensor) -> torch.Tensor:
    return logits[..., None, None]  # [B, S, 2] -> [B, S, C=2, H=1, W=1]


def test_logits_mode_averages_the_stack_logits() -> None:
    out = SliceStackInferer(aggregate="logits")(_stacks(STACK_LOGITS), nn.Flatten())
    expected = torch.tensor([[math.log(3) / 3, 0.0], [math.log(99) / 3, 2 * math.log(3) / 3]])
    torch.testing.assert_close(out, expected)
    assert out.argmax(-1).tolist() == [0, 0]  # the confident stack outvotes the two others of subject 1
    # the default is the bundles' mode
    torch.testing.assert_close(SliceStackInferer()(_stacks(STACK_LOGITS), nn.Flatten()), expected)


def test_probabilities_mode_returns_log_of_the_mean_stack_probabilities() -> None:
    out = SliceStackInferer(aggregate="probabilities")(_stacks(STACK_LOGITS), nn.Flatten())
    mean_probabilities = torch.tensor([[(0.5 + 0.75 + 0.5) / 3, (0.5 + 0.25 + 0.5) / 3], [1.49 / 3, 1.51 / 3]])
    torch.testing.assert_close(out, mean_probabilities.log())
    torch.testing.assert_close(out.softmax(-1), mean_probabilities)  # valid logits of the averaged probabilities
    assert out.argmax(-1).tolist() == [0, 1]  # here the two stacks for class 1 win


def test_probabilities_mode_stays_finite_when_a_probability_underflows() -> None:
    logits = torch.tensor([[[0.0, -1000.0], [0.0, -1000.0]]])  # class 1 has probability exp(-1000) = 0 in float32
    out = SliceStackInferer(aggregate="probabilities")(_stacks(logits), nn.Flatten())
    assert torch.isfinite(out).all()
    assert out[0, 0].item() == pytest.approx(0.0, abs=1e-6)  # log 1


@pytest.mark.parametrize("aggregate", ["logits", "probabilities"])
def test_single_stack_passes_through_and_bad_shapes_fail(aggregate: str) -> None:
    network = nn.Sequential(nn.Conv2d(12, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    inferer = SliceStackInferer(aggregate=aggregate)
    single = torch.randn(3, 12, 8, 8)
    torch.testing.assert_close(inferer(single, network), network(single))
    with pytest.raises(ValueError, match="num_stacks"):
        inferer(torch.randn(12, 8, 8), network)


def test_unknown_aggregate_is_refused() -> None:
    with pytest.raises(ValueError, match=r"'logits', 'probabilities'.*'median'"):
        SliceStackInferer(aggregate="median")
