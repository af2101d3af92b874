"""Out of memory in a bundle run ends in one clear error naming the run's settings and how to make it fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.transforms import RandAffined

from medkd3d.bundles import BundleOutOfMemoryError, is_out_of_memory, run_bundle_config
from medkd3d.cli import find_refusal, refusal_message

TEACHER = "brats_teacher_vggvit3d"
#: What PyTorch's CPU allocator raises on Linux when a 240x240x155 affine resampling does not fit.
CPU_ALLOCATOR = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "35712000000 bytes. Error code 12 (Cannot allocate memory)"
)


def _run_teacher(bundle_kit, dataset_dir: Path, tmp_path: Path) -> None:
    """Train the teacher at tiny size into ``tmp_path`` through :func:`run_bundle_config`."""
    overrides = bundle_kit.train_overrides(TEACHER, dataset_dir, tmp_path / TEACHER, tmp_path)
    run_bundle_config(overrides.pop("bundle_root"), "train.json", **overrides)


def _raise_cpu_oom(self, data, *args, **kwargs):
    raise RuntimeError(CPU_ALLOCATOR)


def test_transform_out_of_cpu_memory_names_the_fix(bundle_kit, synthetic_brats_root: Path, tmp_path, monkeypatch):
    """A real tiny training run whose RandAffined cannot allocate: MONAI wraps the error, the run explains it."""
    monkeypatch.setattr(RandAffined, "__call__", _raise_cpu_oom)
    with pytest.raises(BundleOutOfMemoryError) as raised:
        _run_teacher(bundle_kit, synthetic_brats_root, tmp_path)
    message = str(raised.value)
    assert message.startswith(f"Out of CPU memory running train.json of bundle {TEACHER} (batch_size=2, ")
    assert "spatial_size=[32, 32, 32]" in message and "DefaultCPUAllocator: can't allocate memory" in message
    for fix in ("--override batch_size=1", "spatial_size=[96,96,96]", "--profile cpu", "--profile quick"):
        assert fix in message
    assert "mixed precision" not in message  # a GPU-only hint
    assert str(raised.value.__cause__) != message  # the original error stays the cause (--debug shows it)
    assert not (tmp_path / TEACHER / "models" / "model.pt").exists()


def test_cuda_out_of_memory_in_training(bundle_kit, synthetic_brats_root, tmp_path, monkeypatch):
    """``torch.OutOfMemoryError`` (CUDA) raised while the workflow runs: a GPU message with the amp hint."""

    def run(self):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total)")

    monkeypatch.setattr(ConfigWorkflow, "run", run)
    with pytest.raises(BundleOutOfMemoryError, match=r"^Out of GPU memory running train.json") as raised:
        _run_teacher(bundle_kit, synthetic_brats_root, tmp_path)
    assert "Tried to allocate 2.00 GiB" in str(raised.value) and "--override amp=true" in str(raised.value)
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)
    # the command line shows it as one ``error:`` line, not a traceback
    assert refusal_message(find_refusal(raised.value)).startswith("Out of GPU memory")


def test_other_errors_pass_unchanged(bundle_kit, synthetic_brats_root, tmp_path, monkeypatch):
    def run(self):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x8 and 16x2)")

    monkeypatch.setattr(ConfigWorkflow, "run", run)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as raised:
        _run_teacher(bundle_kit, synthetic_brats_root, tmp_path)
    assert not isinstance(raised.value, BundleOutOfMemoryError)


@pytest.mark.parametrize(
    ("error", "is_oom"),
    [
        (RuntimeError(CPU_ALLOCATOR), True),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
        (MemoryError(), True),
        (RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. "), True),
        (RuntimeError("DataLoader worker (pid 4242) is killed by signal: Segmentation fault. "), False),
        (OSError(12, "Cannot allocate memory"), True),
        (OSError(2, "No such file or directory"), False),
        (RuntimeError("Expected all tensors to be on the same device"), False),
        (ValueError("out of memory"), False),  # only the allocators' error types count
    ],
)
def test_is_out_of_memory_through_wrappers(error: BaseException, is_oom: bool) -> None:
    try:
        try:
            raise error
        except BaseException as inner:
            raise RuntimeError("applying transform <monai.transforms.RandAffined>") from inner
    except RuntimeError as wrapped:
        assert (is_out_of_memory(wrapped) is error) is is_oom
