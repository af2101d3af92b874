"""benchmarks/bench_layout.py: the three layouts train the same network, and the report's ratios are to
channels-first."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def script(benchmark_script):
    return benchmark_script("bench_layout")


def test_time_layouts_times_every_layout(script) -> None:
    seconds = script.time_layouts("resnet10_3d", {"norm": "batch", "width_multiplier": 0.125}, (2, 4, 16, 16, 16), 1)
    assert set(seconds) == set(script.LAYOUTS) and all(value > 0 for value in seconds.values())


def test_training_step_updates_the_network(script) -> None:
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(16, 2))
    step = script.training_step(network, torch.randn(2, 1, 4, 4, 4))
    before = [p.detach().clone() for p in network.parameters()]
    step()
    assert all(not torch.equal(a, b) for a, b in zip(before, network.parameters()))


def test_report_gives_ratios_to_channels_first(script) -> None:
    results = {label: {"channels-first": 2.0, "channels-last": 1.0, "channels-last, MetaTensor": 3.0}
               for label, *_ in script.NETWORKS}  # fmt: skip
    text = script.report(results, threads=1, steps=5)
    rows = [line for line in text.splitlines() if line.startswith("| VGG-ViT")]
    assert rows == ["| VGG-ViT teacher (quick) | 8 x 4 x 32 x 32 x 32 | 2.000 | 1.000 | 3.000 | 0.50 | 1.50 |"]
    assert "--threads 1 --steps 5" in text
