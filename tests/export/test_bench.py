"""The deployment benchmark: ratios, targets and reports by hand, the options that reach the measurement, and one
tiny real run through its worker processes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from medkd3d.export import bench
from medkd3d.export.bench import run_benchmark
from medkd3d.export.bench_report import Target, check_targets, compute_ratios, write_results
from medkd3d.export.bench_worker import BenchSettings, WorkerSpec

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_deploy(benchmark_script):
    """``benchmarks/bench_deploy.py``, the script that states the project's targets."""
    return benchmark_script("bench_deploy")


def _row(bundle, runtime, latency, subject=None, teacher=""):
    return {"bundle": bundle, "runtime": runtime, "teacher": teacher, "latency_median_ms": latency,
            "subject_latency_ms": subject or latency, "params_m": 1.0}  # fmt: skip


ROWS = [
    _row("teacher3d", "eager", 1000.0),
    _row("teacher3d", "onnxruntime", 800.0),
    _row("student3d", "eager", 80.0, teacher="teacher3d"),
    _row("student3d", "onnxruntime", 40.0, teacher="teacher3d"),
    _row("student25d", "eager", 10.0, subject=80.0, teacher="teacher3d"),
    {"bundle": "broken", "runtime": "eager", "teacher": "", "error": "worker failed"},
]
SETTINGS = BenchSettings(device="cpu", batch=4, warmup=1, min_repeats=2, max_repeats=3, max_seconds=1)


def test_ratios_by_hand():
    ratios = {(r["bundle"], r["runtime"], r["ratio"].split(" ")[0]): r for r in compute_ratios(ROWS)}
    assert ratios[("student3d", "eager", "speedup")]["per_input"] == pytest.approx(12.5)
    assert ratios[("student3d", "onnxruntime", "speedup")]["per_subject"] == pytest.approx(20.0)
    assert ratios[("student3d", "onnxruntime", "latency")]["per_input"] == pytest.approx(0.5)
    assert ratios[("student25d", "eager", "speedup")]["per_input"] == pytest.approx(100.0)
    assert ratios[("student25d", "eager", "speedup")]["per_subject"] == pytest.approx(12.5)
    assert ratios[("teacher3d", "onnxruntime", "latency")]["per_input"] == pytest.approx(0.8)
    assert not any(r["bundle"] == "broken" for r in ratios.values())


def test_the_benchmark_script_states_the_targets_and_the_report_checks_them(bench_deploy, tmp_path):
    rows = [{**r, "bundle": r["bundle"].replace("student3d", "brats_student_effnet3d")} for r in ROWS]
    lines = check_targets(rows, bench_deploy.TARGETS)
    # only the targets this run measured, in the script's order
    assert lines == [
        "- ONNX Runtime <= 0.6x eager latency, 3D student: measured 0.50 (<= 0.60) - MET",
        "- 3D student >= 10x faster than the teacher: measured 12.50 (>= 10.00) - MET",
    ]
    machine = {"cpu": "test cpu", "threads": 2}
    md, csv_path = write_results(
        rows, machine=machine, out_dir=tmp_path, stem="bench", settings=SETTINGS, targets=bench_deploy.TARGETS
    )
    text = md.read_text()
    assert "- cpu: test cpu" in text and "| broken | eager | failed: worker failed |" in text
    assert "## Targets" in text and lines[0] in text
    assert "over 2-3 calls after 1 warm-up calls" in text and "throughput at batch 4" in text
    with open(csv_path, newline="") as stream:
        table = list(csv.DictReader(stream))
    assert len(table) == len(rows) and table[0]["machine_cpu"] == "test cpu"
    # without targets (``medkd3d bench``) the report states none
    md, _ = write_results(rows, machine=machine, out_dir=tmp_path, stem="plain", settings=SETTINGS)
    assert "Targets" not in md.read_text()


def test_a_target_compares_in_its_direction_and_refuses_what_it_cannot_compare():
    ratios = compute_ratios(ROWS)
    slow = Target("student25d", "eager", "speedup vs teacher", "subject", ">=", 30.0, "2.5D >= 30x per subject")
    fast = Target("student25d", "eager", "speedup vs teacher", "input", ">=", 30.0, "2.5D >= 30x per input")
    assert slow.check(ratios) == "- 2.5D >= 30x per subject: measured 12.50 (>= 30.00) - MISSED"
    assert fast.check(ratios) == "- 2.5D >= 30x per input: measured 100.00 (>= 30.00) - MET"
    assert Target("absent", "eager", "speedup vs teacher", "input", ">=", 1.0, "absent").check(ratios) is None
    with pytest.raises(ValueError, match="comparison '<=' or '>='"):
        Target("student3d", "eager", "latency vs eager", "input", "<", 1.0, "bad")
    with pytest.raises(ValueError, match="per must be 'input' or 'subject'"):
        Target("student3d", "eager", "latency vs eager", "batch", "<=", 1.0, "bad")


def test_worker_spec_travels_as_json():
    spec = WorkerSpec("onnxruntime", "/b", (4, 8, 8, 8), subject_batch=3, settings=SETTINGS, overrides={"a": [1]},
                      checkpoint="/c.pt", artefact="/m.onnx")  # fmt: skip
    assert WorkerSpec.from_json(spec.to_json()) == spec


def _fake_run(calls: list, tmp_path: Path):
    def run_benchmark(bundles, **kwargs):
        calls.append({"bundles": list(bundles), **kwargs})
        md = tmp_path / "report.md"
        md.write_text("report\n")
        return [], md, tmp_path / "report.csv"

    return run_benchmark


def test_options_reach_the_benchmark_and_only_the_script_adds_targets(bench_deploy, run_cli, monkeypatch, tmp_path):
    calls: list[dict] = []
    monkeypatch.setattr(bench, "run_benchmark", _fake_run(calls, tmp_path))
    argv = ["--bundles", "b1", "b2", "--size", "tiny", "--runtimes", "eager", "onnxruntime", "--batch", "2",
            "--min-repeats", "5", "--max-repeats", "3", "--threads", "1", "--stem", "smoke"]  # fmt: skip
    assert bench_deploy.main(argv) == 0
    assert run_cli(["bench", *argv]) == 0
    script, command = calls
    assert script["targets"] == bench_deploy.TARGETS and command["targets"] == ()
    for call in calls:
        assert call["bundles"] == ["b1", "b2"] and call["runtimes"] == ["eager", "onnxruntime"]
        assert call["size"] == "tiny" and call["stem"] == "smoke" and call["weights"] == "random"
        assert call["settings"] == BenchSettings(device="cpu", threads=1, batch=2, min_repeats=5, max_repeats=3)


def test_run_benchmark_takes_keywords_only():
    with pytest.raises(TypeError):
        run_benchmark(["bundles/x"], ["eager"])  # the runtimes must be named


@pytest.mark.slow
def test_tiny_benchmark_run(synthetic_brats_root, tmp_path):
    bundle = REPO / "bundles" / "brats_student_effnet3d"
    # max_repeats below min_repeats caps the repeats, as in the documented smoke run
    settings = BenchSettings(batch=2, warmup=1, min_repeats=5, max_repeats=2, threads=1)
    rows, md, csv_path = run_benchmark(
        [bundle], runtimes=["eager", "onnxruntime", "tensorrt-fp16"], out_dir=tmp_path, settings=settings,
        size="tiny", data=str(synthetic_brats_root), stem="tiny",
    )  # fmt: skip
    measured = [r for r in rows if r["runtime"] in ("eager", "onnxruntime")]
    assert len(measured) == 2 and all("error" not in r for r in measured), rows
    for row in measured:
        assert row["latency_median_ms"] > 0 and row["latency_p90_ms"] >= row["latency_median_ms"]
        assert row["throughput_per_s"] > 0 and row["peak_rss_mb"] > 0 and row["repeats"] == 2
        assert row["params_m"] > 0 and row["gflops"] > 0 and row["input_shape"] == "4x32x32x32"
    text = md.read_text()
    assert "latency vs eager" in text and "## Machine" in text and csv_path.is_file()
