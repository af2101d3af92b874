"""``benchmarks/bench_gpu.py`` and ``benchmarks/gpu_check.sh`` on the CPU: the same code paths the GPU run takes
(bundle configs merged with a profile, the bundle's own trainer on random batches, the latency runtimes), at the
quick profile's size."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"


@pytest.fixture(scope="module")
def bench(benchmark_script):
    return benchmark_script("bench_gpu")


@pytest.mark.parametrize("bundle", ["brats_student_effnet25d", "brats_student_effnet3d"])
def test_input_shapes_match_what_the_bundle_preprocessing_produces(bench, bundle, synthetic_brats_root) -> None:
    from medkd3d.export.inputs import load_records

    # not a cube, so a slice plane taken along the wrong axis shows
    parser = bench.train_parser(bundle, "quick", "cpu", amp=False, overrides={"spatial_size": [32, 40, 24]})
    expected = bench.input_shapes(parser)
    item = parser.get_parsed_content("train#preprocessing")(load_records(synthetic_brats_root)[0])
    assert {k: tuple(item[k].shape) for k in expected} == expected
    if bundle == "brats_student_effnet25d":
        # the 2.5D student's teacher sees the volume its slice stacks came from
        assert set(expected) == {"image", "volume"} and len(expected["image"]) == 4
    else:
        assert set(expected) == {"image"}


def test_profiles_change_the_measured_sizes(bench) -> None:
    full = bench.train_parser("brats_teacher_vggvit3d", "full", "cuda", amp=True)
    quick = bench.train_parser("brats_teacher_vggvit3d", "quick", "cuda", amp=True)
    assert bench.input_shapes(quick)["image"][1:] == tuple(quick.get_parsed_content("spatial_size"))
    assert bench.input_shapes(full)["image"] != bench.input_shapes(quick)["image"]
    # the cpu profile pins the CPU and turns AMP off; the benchmark measures its sizes on the requested device
    cpu = bench.train_parser("brats_teacher_vggvit3d", "cpu", "cuda", amp=True)
    assert str(cpu.get_parsed_content("device")) == "cuda:0" and cpu.get_parsed_content("amp") is True


@pytest.mark.parametrize(
    ("bundle", "trainer"),
    [
        ("brats_hdkd_teacher3d", "SupervisedTrainer"),
        ("brats_hdkd_student3d", "DistillationTrainer"),  # logit + feature KD through the feature taps
        ("brats_student_effnet25d", "DistillationTrainer"),  # the teacher reads the "volume" key
    ],
)
def test_measure_training_runs_the_bundle_trainer(bench, bundle, trainer) -> None:
    row = bench.measure_training(bundle, "quick", "cpu", warmup=1, steps=2)
    assert row["status"] == "ok", row.get("error")
    assert row["trainer"] == trainer and row["steps"] == 2 and row["step_ms"] > 0
    assert math.isfinite(row["loss"]) and row["amp"] is False and "peak_allocated_mb" not in row
    parser = bench.train_parser(bundle, "quick", "cpu", amp=False)
    assert row["batch_size"] == parser.get_parsed_content("batch_size")
    assert (row["teacher_params_m"] is not None) == (trainer == "DistillationTrainer")
    assert row["params_m"] > 0


def test_build_trainer_replaces_the_teacher_checkpoint_and_the_dataset(bench, tmp_path) -> None:
    parser = bench.train_parser(
        "brats_student_effnet3d",
        "quick",
        "cpu",
        amp=False,
        overrides={"dataset_dir": str(tmp_path / "missing"), "teacher_ckpt": str(tmp_path / "missing.pt")},
    )
    batches = bench.RandomBatches(bench.input_shapes(parser), 2, 1, num_classes=2)
    trainer = bench.build_trainer(parser, batches)
    assert trainer.data_loader is batches and trainer.teacher is not None
    assert not any(p.requires_grad for p in trainer.teacher.parameters())
    before = [p.detach().clone() for p in trainer.network.parameters()]
    trainer.run()
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters())), "no optimiser step"


def test_measure_training_reports_a_failure_as_a_row(bench) -> None:
    row = bench.measure_training("brats_hdkd_student3d", "no-such-profile", "cpu", warmup=0, steps=1)
    assert row["status"] == "error" and "no-such-profile" in row["error"]


def test_measure_latency_times_each_runtime_and_says_why_one_did_not_run(bench) -> None:
    rows = bench.measure_latency(
        "brats_hdkd_student3d", "cpu", warmup=1, repeats=2, max_seconds=1, overrides={"spatial_size": [32, 32, 32]}
    )
    by_runtime = {r["runtime"]: r for r in rows}
    assert list(by_runtime) == list(bench.LATENCY_RUNTIMES)
    assert by_runtime["eager-fp32"]["ratio_to_eager_fp32"] == 1.0
    assert by_runtime["eager-fp32"]["input_shape"] == "4x32x32x32"
    scripted = by_runtime["torchscript-fp32"]
    assert scripted["status"] == "ok" and scripted["latency_median_ms"] > 0 and scripted["repeats"] >= 2
    assert scripted["ratio_to_eager_fp32"] == pytest.approx(
        scripted["latency_median_ms"] / by_runtime["eager-fp32"]["latency_median_ms"]
    )
    for runtime in ("eager-amp-fp16", "torchscript-fp16", "onnxruntime-cuda"):
        assert by_runtime[runtime]["status"].startswith("not run: ")


def test_row_writer_keeps_every_row_and_the_union_of_columns(bench, tmp_path) -> None:
    writer = bench.RowWriter(tmp_path, "rows")
    writer.add({"bundle": "a", "status": "ok", "step_ms": 1.5})
    writer.add({"bundle": "b", "status": "error", "error": "boom"})
    rows = list(csv.DictReader((tmp_path / "rows.csv").open()))
    assert [r["bundle"] for r in rows] == ["a", "b"] and rows[1]["error"] == "boom" and rows[0]["error"] == ""
    lines = [json.loads(x) for x in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert lines[0]["step_ms"] == 1.5 and len(lines) == 2


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_script_runs_every_step_and_summarises(tmp_path) -> None:
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_TINY": "1",
        "GPU_CHECK_SKIP_TESTS": "1",
        "PYTHON": sys.executable,
    }
    done = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = (tmp_path / "log.txt").read_text()
    assert "amp exit code: 0" in log and "latency exit code: 0" in log
    assert "amp.csv: 1 rows, 1 ok" in log
    assert {"amp.csv", "latency.csv", "info.json", "log.txt"} <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "info.json").read_text())["device"] == "cpu"
