"""``multi_gpu_train.json`` under ``torchrun`` with two CPU processes (gloo), from the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [False, True])  # True: the quick profiles' setting on a CPU
def test_torchrun_two_cpu_processes_distill_a_student(
    bundle_kit, trained_bundles: Path, synthetic_brats_root: Path, tmp_path: Path, channels_last: bool
) -> None:
    bundle = "brats_student_effnet3d"
    overrides = bundle_kit.train_overrides(bundle, synthetic_brats_root, tmp_path, trained_bundles)
    overrides["channels_last"] = channels_last
    overrides.pop("bundle_root")  # found from the config path, as a user would run it
    configs = bundle_kit.config_files(bundle, "train.json", "multi_gpu_train.json")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        json.dumps(configs),
    ]
    for key, value in overrides.items():
        command += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        command, cwd=bundle_kit.bundles_dir.parent, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "last.pt", weights_only=True)
    # each of the 2 processes trained on half of the 6 training subjects: batches of 2 and 1 would leave a batch of
    # one, which the per-process drop_last check skips, so 1 iteration (3 unsharded)
    assert state["trainer"]["iteration"] == 1
    assert (tmp_path / "models" / "model.pt").is_file()
    assert "loss_kd" in done.stdout + done.stderr  # rank 0 logged the distillation terms
