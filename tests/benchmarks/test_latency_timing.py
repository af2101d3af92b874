"""The one latency timer (``medkd3d.networks.profile.time_calls``) and its summary, on a fake clock: each call
costs a known time, so the stopping rules and the statistics are checked exactly, not timed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medkd3d.export import bench_worker
from medkd3d.networks import profile
from medkd3d.networks.profile import latency_stats, measure_latency, time_calls


class FakeClock:
    """A clock that only moves when a call "runs": each call costs the next of ``costs_s`` (seconds)."""

    def __init__(self, costs_s: list[float]) -> None:
        self.now = 100.0
        self.costs_s = list(costs_s)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def run(self) -> None:
        self.now += self.costs_s[self.calls % len(self.costs_s)]
        self.calls += 1


def test_warmup_is_untimed_and_the_times_are_sorted_milliseconds() -> None:
    clock = FakeClock([9.0, 0.004, 0.001, 0.003])  # the first call (warm-up) is the slow one
    times = time_calls(clock.run, warmup=1, min_repeats=3, max_repeats=3, clock=clock)
    assert clock.calls == 4 and times == pytest.approx([1.0, 3.0, 4.0])


def test_repeats_stop_on_the_time_budget_but_never_below_min_repeats() -> None:
    clock = FakeClock([0.25])
    # 0.25 s per call: the budget of 1 s is spent after 4 calls, before max_repeats
    assert len(time_calls(clock.run, min_repeats=2, max_repeats=100, max_seconds=1.0, clock=clock)) == 4
    # min_repeats wins over a spent budget, max_repeats over an unspent one
    assert len(time_calls(clock.run, min_repeats=6, max_repeats=100, max_seconds=1.0, clock=clock)) == 6
    assert len(time_calls(clock.run, min_repeats=1, max_repeats=3, max_seconds=100.0, clock=clock)) == 3
    # no max_repeats: the budget alone stops it
    assert len(time_calls(clock.run, max_seconds=2.0, clock=clock)) == 8


def test_time_calls_refuses_settings_that_cannot_work() -> None:
    with pytest.raises(ValueError, match="min_repeats <= max_repeats"):
        time_calls(lambda: None, min_repeats=5, max_repeats=3)
    with pytest.raises(ValueError, match="min_repeats"):
        time_calls(lambda: None, min_repeats=0, max_repeats=3)
    with pytest.raises(ValueError, match="never stops"):
        time_calls(lambda: None)


def test_cuda_work_is_synchronised_around_each_timed_call(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    time_calls(lambda: events.append("run"), warmup=1, min_repeats=2, max_repeats=2, device="cuda:0")
    assert events == ["run", "sync", "run", "sync", "sync", "run", "sync"]
    events.clear()
    time_calls(lambda: events.append("run"), min_repeats=1, max_repeats=1, device="cpu")
    assert events == ["run"]


def test_latency_stats_by_hand() -> None:
    assert latency_stats([4.0, 1.0, 3.0, 2.0]) == {"median_ms": 2.5, "p90_ms": 4.0, "mean_ms": 2.5}
    ten = [float(t) for t in range(1, 11)]  # nearest rank: the 9th of 10, the 18th of 20
    assert latency_stats(ten)["p90_ms"] == 9.0 and latency_stats(ten * 2)["p90_ms"] == 9.0
    assert latency_stats([7.0]) == {"median_ms": 7.0, "p90_ms": 7.0, "mean_ms": 7.0}
    with pytest.raises(ValueError, match="no times"):
        latency_stats([])


def test_measure_latency_times_through_the_one_timer_in_eval_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()

    def fake_time_calls(run, **kwargs):
        seen.update(kwargs, training=model.training, grad=torch.is_grad_enabled())
        run()
        return [3.0, 1.0, 2.0]

    monkeypatch.setattr(profile, "time_calls", fake_time_calls)
    stats = measure_latency(model, (4,), warmup=2, repeats=3)
    assert stats == {"median_ms": 2.0, "p90_ms": 3.0, "mean_ms": 2.0}
    assert seen["warmup"] == 2 and seen["min_repeats"] == seen["max_repeats"] == 3
    assert seen["training"] is False and seen["grad"] is False and model.training  # mode restored afterwards


def test_the_benchmarks_use_the_one_timer(benchmark_script) -> None:
    """No private timing loop is left in the deployment worker or the GPU benchmark."""
    bench_gpu = benchmark_script("bench_gpu")
    for module in (bench_gpu, bench_worker):
        source = Path(module.__file__).read_text()
        assert "time_calls(" in source and "latency_stats(" in source
        assert not hasattr(module, "_timed") and not hasattr(module, "_timed_ms")


def test_time_interleaved_calls_the_runs_in_turn_after_their_warmup() -> None:
    clock = FakeClock([0.001])
    order: list[str] = []

    def timed(name: str, cost_s: float):
        def run() -> None:
            order.append(name)
            clock.now += cost_s

        return run

    times = profile.time_interleaved({"a": timed("a", 0.002), "b": timed("b", 0.005)}, repeats=3, clock=clock)
    assert order == ["a", "b"] + ["a", "b"] * 3  # one warm-up each, then a and b in turn in every repeat
    assert times["a"] == pytest.approx([2.0] * 3) and times["b"] == pytest.approx([5.0] * 3)
    assert profile.time_interleaved({"a": timed("a", 0.0)}, repeats=2, warmup=0, clock=clock) == {"a": [0.0, 0.0]}
