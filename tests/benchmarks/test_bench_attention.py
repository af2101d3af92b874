"""benchmarks/bench_attention.py: the reference computes the same attention, and the report's ratio is fused over
explicit."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def script(benchmark_script):
    return benchmark_script("bench_attention")


def test_explicit_reference_computes_the_same_attention(script) -> None:
    torch.manual_seed(0)
    fused = script.Attention(16, 4, dropout_rate=0.1).eval()
    explicit = script.ExplicitAttention(16, 4, dropout_rate=0.1).eval()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(explicit(x), fused(x))


def test_time_layer_times_both_ways(script) -> None:
    seconds = script.time_layer(batch=2, tokens=5, width=8, heads=2, dropout=0.1, steps=1)
    assert set(seconds) == {"fused", "explicit"} and all(value > 0 for value in seconds.values())


def test_report_gives_fused_over_explicit(script) -> None:
    results = {label: {"explicit": 0.4, "fused": 0.1} for label, *_ in script.LAYERS}
    text = script.report(results, threads=1, steps=5)
    row = next(
        line for line in text.splitlines() if line.startswith("| VGG-ViT teacher (quick): MSGFF over VGG stages 2-4")
    )
    assert row.endswith("| 8 x 73 x 64, 4 | 0.0 | 0.4000 | 0.1000 | 0.25 |")
    assert "--threads 1 --steps 5" in text
