"""The deployment benchmark: ratios and reports by hand, and one tiny real run through its worker processes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from medkd3d.export.bench import check_targets, compute_ratios, run_benchmark, write_results


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


def test_ratios_by_hand():
    ratios = {(r["bundle"], r["runtime"], r["ratio"].split(" ")[0]): r for r in compute_ratios(ROWS)}
    assert ratios[("student3d", "eager", "speedup")]["per_input"] == pytest.approx(12.5)
    assert ratios[("student3d", "onnxruntime", "speedup")]["per_subject"] == pytest.approx(20.0)
    assert ratios[("student3d", "onnxruntime", "latency")]["per_input"] == pytest.approx(0.5)
    assert ratios[("student25d", "eager", "speedup")]["per_input"] == pytest.approx(100.0)
    assert ratios[("student25d", "eager", "speedup")]["per_subject"] == pytest.approx(12.5)
    assert ratios[("teacher3d", "onnxruntime", "latency")]["per_input"] == pytest.approx(0.8)
    assert not any(r["bundle"] == "broken" for r in ratios.values())


def test_targets_and_report(tmp_path):
    rows = [{**r, "bundle": r["bundle"].replace("student3d", "brats_student_effnet3d")} for r in ROWS]
    lines = check_targets(rows)
    assert lines == [
        "- ONNX Runtime <= 0.6x eager latency, 3D student: measured 0.50 (<= 0.60) - MET",
        "- 3D student >= 10x faster than the teacher: measured 12.50 (>= 10.00) - MET",
    ]
    settings = {"device": "cpu", "batch": 4, "warmup": 1, "min_repeats": 2, "max_repeats": 3, "max_seconds": 1}
    md, csv_path = write_results(rows, {"cpu": "test cpu", "threads": 2}, tmp_path, "bench", settings, lines)
    text = md.read_text()
    assert "- cpu: test cpu" in text and "| broken | eager | failed: worker failed |" in text and "MET" in text
    with open(csv_path, newline="") as stream:
        table = list(csv.DictReader(stream))
    assert len(table) == len(rows) and table[0]["machine_cpu"] == "test cpu"


@pytest.mark.slow
def test_tiny_benchmark_run(synthetic_brats_root, tmp_path):
    bundle = Path(__file__).resolve().parents[2] / "bundles" / "brats_student_effnet3d"
    rows, md, csv_path = run_benchmark(
        [bundle], ["eager", "onnxruntime", "tensorrt-fp16"], tmp_path, size="tiny", batch=2, warmup=1,
        min_repeats=2, max_repeats=2, threads=1, data=str(synthetic_brats_root), stem="tiny",
    )  # fmt: skip
    measured = [r for r in rows if r["runtime"] in ("eager", "onnxruntime")]
    assert len(measured) == 2 and all("error" not in r for r in measured), rows
    for row in measured:
        assert row["latency_median_ms"] > 0 and row["latency_p90_ms"] >= row["latency_median_ms"]
        assert row["throughput_per_s"] > 0 and row["peak_rss_mb"] > 0 and row["repeats"] == 2
        assert row["params_m"] > 0 and row["gflops"] > 0 and row["input_shape"] == "4x32x32x32"
    text = md.read_text()
    assert "latency vs eager" in text and "## Machine" in text and csv_path.is_file()
