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


def test_time_layer_times_both_ways_and_compares_their_outputs(script) -> None:
    result = script.time_layer(
        batch=2, tokens=5, width=8, heads=2, dropout=0.1, steps=1, device=torch.device("cpu"), precision="fp32"
    )
    assert set(result) == {"fused", "explicit", "max_abs_diff"}
    assert result["fused"] > 0 and result["explicit"] > 0
    assert 0 <= result["max_abs_diff"] < 1e-5  # the same weights, eval mode: the same attention


def test_output_difference_sees_a_changed_layer_and_restores_training_mode(script) -> None:
    torch.manual_seed(0)
    fused = script.Attention(8, 2).train()
    explicit = script.ExplicitAttention(8, 2).train()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(2, 5, 8)
    assert script.output_difference(fused, explicit, x, "fp32") < 1e-5
    with torch.no_grad():
        explicit.proj.bias.add_(0.5)
    assert script.output_difference(fused, explicit, x, "fp32") == pytest.approx(0.5, abs=1e-5)
    assert fused.training and explicit.training


def test_report_gives_fused_over_explicit_per_precision(script) -> None:
    results = {(label, "fp32"): {"explicit": 0.4, "fused": 0.1, "max_abs_diff": 2e-7} for label, *_ in script.LAYERS}
    text = script.report(results, "python benchmarks/bench_attention.py --steps 5", torch.device("cpu"), steps=5)
    row = next(
        line for line in text.splitlines() if line.startswith("| VGG-ViT teacher (quick): MSGFF over VGG stages 2-4")
    )
    assert row.endswith("| 8 x 73 x 64, 4 | 0.0 | fp32 | 0.4000 | 0.1000 | 0.25 | 2.0e-07 |")
    assert "`python benchmarks/bench_attention.py --steps 5`" in text and "on the CPU" in text


def test_amp_needs_cuda(script) -> None:
    with pytest.raises(SystemExit):
        script.main(["--precision", "amp", "--output", ""])
