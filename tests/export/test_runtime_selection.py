"""Runtime choice: automatic order and fallback, forced backends, and clear errors when they cannot run."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from medkd3d.export.backends import BackendUnavailableError
from medkd3d.export.runtime import backend_status, load_runtime
from medkd3d.export.tensorrt import tensorrt_status

TENSORRT_AVAILABLE = tensorrt_status()[0]
no_tensorrt = pytest.mark.skipif(TENSORRT_AVAILABLE, reason="checks the behaviour without TensorRT")


@pytest.fixture
def export_dir(exported, tmp_path) -> Path:
    """A copy of the 3D student's export directory (ONNX, TorchScript and configs)."""
    source = exported["brats_student_effnet3d"]["onnx"].path.parent
    return Path(shutil.copytree(source, tmp_path / "export"))


def test_auto_picks_onnxruntime_for_a_directory_without_engine(export_dir):
    assert load_runtime(export_dir).backend == "onnxruntime"
    (export_dir / "model.onnx").unlink()
    assert load_runtime(export_dir).backend == "torchscript"


@no_tensorrt
def test_auto_falls_back_from_an_engine_it_cannot_run(export_dir, caplog):
    engine = export_dir / "model.engine"
    engine.write_bytes(b"a serialized engine from another machine")
    with caplog.at_level(logging.WARNING, logger="medkd3d.export.runtime"):
        runtime = load_runtime(engine)
    assert runtime.backend == "onnxruntime" and runtime.path == export_dir / "model.onnx"
    assert "model.engine" in caplog.text and "skipped" in caplog.text
    assert load_runtime(export_dir).backend == "onnxruntime"


@no_tensorrt
def test_forced_tensorrt_without_it_says_why(export_dir):
    (export_dir / "model.engine").write_bytes(b"engine")
    with pytest.raises(
        BackendUnavailableError, match=r"'tensorrt' was requested .* cannot run here: (the tensorrt package|no CUDA)"
    ):
        load_runtime(export_dir, backend="tensorrt")
    assert not backend_status("tensorrt", "cpu")[0]


def test_forced_backend_uses_the_matching_sibling_and_needs_an_artefact(export_dir):
    runtime = load_runtime(export_dir / "model.onnx", backend="torchscript", device="cpu")
    assert runtime.backend == "torchscript" and runtime.path.name == "model.ts"
    (export_dir / "model.ts").unlink()
    with pytest.raises(BackendUnavailableError, match="No torchscript artefact"):
        load_runtime(export_dir / "model.onnx", backend="torchscript")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_cuda_device_without_gpu_is_an_error(export_dir):
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        load_runtime(export_dir / "model.onnx", backend="onnxruntime", device="cuda")
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        load_runtime(export_dir, backend="torchscript", device="cuda")


def test_unknown_or_missing_artefacts(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_runtime(tmp_path / "missing.onnx")
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="unknown model file type"):
        load_runtime(weights)
    with pytest.raises(BackendUnavailableError, match="none found"):
        load_runtime(tmp_path)


def test_auto_skips_an_artefact_that_fails_to_load(export_dir, caplog):
    (export_dir / "model.onnx").write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING, logger="medkd3d.export.runtime"):
        runtime = load_runtime(export_dir)
    assert runtime.backend == "torchscript" and "model.onnx" in caplog.text
    with pytest.raises(Exception, match=r"(?i)protobuf|parse|load"):
        load_runtime(export_dir, backend="onnxruntime")  # forced: the error surfaces
