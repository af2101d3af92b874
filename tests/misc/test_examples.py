"""Every script in ``examples/`` runs end to end at tiny sizes, as a researcher would run it (a subprocess), and
writes real outputs: metrics, checkpoints, study reports, exported models that match the bundle."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_example(name: str, args: list[str], cwd: Path, timeout: float = 300) -> str:
    """Run ``examples/<name>`` with ``args`` in ``cwd``; returns its stdout and stderr (the logs)."""
    # One CPU thread unless the caller says otherwise: tiny networks gain nothing from more, and on a machine
    # shared with other jobs several threads waiting for each other make these runs many times slower.
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{name} failed ({result.returncode}):\n{output[-4000:]}"
    return output


def check_quickstart(tmp_path: Path) -> None:
    out = tmp_path / "quickstart"
    args = ["--out", str(out), "--subjects-per-class", "4", "--size", "16", "--epochs", "1", "--batch-size", "2"]
    log = run_example("quickstart_synthetic.py", args, tmp_path)
    datalist = json.loads((out / "datalist.json").read_text())
    assert len(datalist["training"]) == 8 and datalist["class_names"] == ["LGG", "HGG"]
    for name in ("teacher", "student"):
        metrics = json.loads((out / "metrics" / f"{name}_test.json").read_text())
        assert 0.0 <= metrics["balanced_accuracy"] <= 1.0 and 0.0 <= metrics["auc"] <= 1.0
        assert metrics["num_samples"] == 2  # a quarter of the 8 subjects is held out for the test
        assert (out / "metrics" / f"{name}_test.csv").stat().st_size > 0
    assert "Grad-CAM agreement of the teacher and the student on" in log
    assert "pearson r" in log and "top-10% dice" in log  # the numbers with their meaning, not a raw dict
    assert "{'" not in log.split("Grad-CAM agreement")[-1]


def check_distill_densenet(tmp_path: Path) -> None:
    from medkd3d.networks import create_model

    out = tmp_path / "densenet"
    args = ["--out", str(out), "--size", "32", "--epochs", "1", "--growth-rate", "4", "--init-features", "8"]
    log = run_example("distill_densenet_teacher.py", args, tmp_path)
    assert "DenseNet121 teacher" in log and "EfficientNet-B0 3D student" in log and "test balanced accuracy" in log
    state = torch.load(out / "student.pt", map_location="cpu", weights_only=True)["model"]
    student = create_model("efficientnet3d_b0", width_multiplier=0.25, image_size=32)
    student.load_state_dict(state)  # strict: the saved student is exactly the example's architecture
    running_means = [v for k, v in state.items() if k.endswith("running_mean")]
    assert running_means and any(v.abs().sum() > 0 for v in running_means)  # trained: BatchNorm saw data
    assert not list(out.glob(".*partial*"))


def check_slice_vs_volume(tmp_path: Path) -> None:
    out, data = tmp_path / "study", tmp_path / "data"
    args = [
        "--dataset-dir", str(data), "--out", str(out), "--sizes", "2", "--spatial-size", "32", "--epochs", "1",
        "--teacher-epochs", "1",
    ]  # fmt: skip
    log = run_example("slice_vs_volume_ablation.py", args, tmp_path)
    assert "trained 8 runs (0 were already finished)" in log
    with (out / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    students = ("brats_student_effnet25d", "brats_student_effnet3d")
    cells = sorted((r["student"], r["kd"], r["size"], r["fold"]) for r in rows)
    assert cells == sorted((s, k, "2", str(f)) for s in students for k in ("none", "logit") for f in (0, 1))
    for row in rows:
        assert 0.0 <= float(row["balanced_accuracy"]) <= 1.0 and float(row["cpu_latency_ms"]) > 0
    for student in students:  # the script's own per-cell printout
        assert f"{student} KD none   size   2: test balanced accuracy" in log
    assert "KD gain" in (out / "summary.md").read_text()
    assert (out / "pareto_latency.png").read_bytes()[:8] == PNG_MAGIC


def check_export_for_jetson(tmp_path: Path) -> None:
    # the 2.5D student: its 8 slice stacks per subject are one network input ([8, 12, H, W]) in every runtime
    out, name = tmp_path / "jetson", "brats_student_effnet25d"
    args = [
        "--train", "--tiny", "--bundle", name, "--out", str(out), "--epochs", "1", "--subjects-per-class", "3",
        "--infer-subjects", "2",
    ]  # fmt: skip
    log = run_example("export_for_jetson.py", args, tmp_path)
    export = out / "export"
    for file in ("model.onnx", "model.ts", "metadata.json", "inference.json", "export.json"):
        assert (export / file).is_file(), file
    for artefact in ("model.onnx", "model.ts"):
        report = json.loads((export / f"{artefact}.parity.json").read_text())
        assert report["passed"] and {g["name"] for g in report["groups"]} == {"random", "real"}
        assert all(g["max_abs_diff"] <= 1e-3 * (1 + g["scale"]) for g in report["groups"])

    # the deployed predictions against the bundle's own inference.json predictions, read independently
    def probabilities(path: Path) -> dict[str, list[float]]:
        with path.open(newline="") as f:
            return {r["subject"]: [float(r["prob_LGG"]), float(r["prob_HGG"])] for r in csv.DictReader(f)}

    bundle = probabilities(out / "predictions" / "bundle" / "predictions.csv")
    assert len(bundle) == 2
    first, second = bundle.values()
    spread = max(abs(a - b) for a, b in zip(first, second, strict=True))
    assert spread > 2e-5, "the trained model's predictions do not depend on the subject: the check would be empty"
    for backend in ("onnxruntime", "torchscript"):
        deployed = probabilities(out / "predictions" / f"{backend}.csv")
        assert deployed.keys() == bundle.keys()
        diff = max(abs(a - b) for s in bundle for a, b in zip(deployed[s], bundle[s], strict=True))
        assert diff <= 2e-6, (backend, diff)  # float32 runtimes; the CSVs hold 6 decimals
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] and set(summary["deployed"]) >= {"onnxruntime", "torchscript"}
    from medkd3d.export import tensorrt_status

    if not tensorrt_status()[0]:
        assert summary["tensorrt"].startswith("skipped:") and not (out / "tensorrt").exists()
    commands = (out / "jetson_commands.sh").read_text()
    assert f"medkd3d export --onnx ~/{name}/model.onnx --precision fp16" in commands
    assert "--optShapes=image:1x8x12x32x32" in commands and "medkd3d infer --model" in commands  # 1 subject: 8 stacks
    assert "On the Jetson" in log


CHECKS: dict[str, Callable[[Path], None]] = {
    "quickstart_synthetic.py": check_quickstart,
    "distill_densenet_teacher.py": check_distill_densenet,
    "slice_vs_volume_ablation.py": check_slice_vs_volume,
    "export_for_jetson.py": check_export_for_jetson,
}


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(CHECKS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_example_runs_end_to_end(name: str, tmp_path: Path) -> None:
    CHECKS[name](tmp_path)
