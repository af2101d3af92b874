"""``onnx``, ``onnxruntime`` and ``tensorrt`` are optional: ``medkd3d.export`` imports without them (through
MONAI's ``optional_import``) and whatever needs a missing one says what to install."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from monai.utils import OptionalImportError, optional_import

from medkd3d.export import embedded, runtime
from medkd3d.export.backends import BackendUnavailableError
from medkd3d.export.deployment import DeploymentConfig
from medkd3d.export.onnx import export_onnx

HINT = r"pip install 'medkd3d\[export\]'"


@pytest.fixture
def without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime as ``optional_import`` hands it out when it is not installed."""
    monkeypatch.setattr(runtime, "ort", optional_import("medkd3d_no_such_module")[0])
    monkeypatch.setattr(runtime, "has_ort", False)


@pytest.fixture
def without_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    """``onnx`` as ``optional_import`` hands it out when it is not installed."""
    monkeypatch.setattr(embedded, "onnx", optional_import("medkd3d_no_such_module")[0])
    monkeypatch.setattr(embedded, "has_onnx", False)


def _artefacts(directory: Path) -> Path:
    directory.mkdir()
    (directory / "model.onnx").write_bytes(b"not read without onnxruntime")
    (directory / "model.ts").write_bytes(b"not a TorchScript archive")
    return directory


def test_a_missing_onnxruntime_is_named_with_what_to_install(without_onnxruntime, tmp_path: Path) -> None:
    export_dir = _artefacts(tmp_path / "export")
    available, reason = runtime.backend_status("onnxruntime", "cpu")
    assert not available and "onnxruntime is not installed" in reason
    with pytest.raises(BackendUnavailableError, match=f"'onnxruntime' was requested .* not installed .*{HINT}"):
        runtime.load_runtime(export_dir / "model.onnx", backend="onnxruntime", device="cpu")
    with pytest.raises(BackendUnavailableError, match=f"cannot be run with ONNX Runtime: .*{HINT}"):
        runtime.OnnxRuntime(export_dir / "model.onnx", device="cpu")
    # ``auto`` goes on to the next artefact and says why it skipped the ONNX one
    with pytest.raises(BackendUnavailableError, match=f"model.onnx \\(onnxruntime is not installed .*{HINT}"):
        runtime.load_runtime(export_dir, device="cpu")


def test_a_missing_onnx_is_named_before_any_work(without_onnx, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"never parsed")
    with pytest.raises(OptionalImportError, match=f"Reading the deployment configuration .* needs the onnx .*{HINT}"):
        embedded.read_onnx_metadata(model)
    with pytest.raises(OptionalImportError, match="needs the onnx package"):
        DeploymentConfig.for_artefact(model)  # no documents beside it: the embedded ones are needed
    target = tmp_path / "exported.onnx"
    with pytest.raises(OptionalImportError, match=f"ONNX export needs the onnx package.*{HINT}"):
        export_onnx(torch.nn.Linear(3, 2), torch.randn(2, 3), target, DeploymentConfig({}, {}))
    assert not target.exists()


def test_the_package_imports_without_the_optional_packages(tmp_path: Path) -> None:
    """In a fresh interpreter where importing them fails, as on a machine that never installed them."""
    script = textwrap.dedent(
        """
        import importlib.abc, json, sys

        class Missing(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("onnx", "onnxruntime", "tensorrt"):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, Missing())
        import medkd3d.export as export
        from medkd3d.export import bench, exporter, runtime, tensorrt

        for name in export.__all__:
            getattr(export, name)
        print(json.dumps({
            "onnxruntime": runtime.backend_status("onnxruntime", "cpu"),
            "tensorrt": runtime.backend_status("tensorrt", "cuda"),
            "loaded": sorted(m for m in ("onnx", "onnxruntime", "tensorrt") if m in sys.modules),
        }))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert status["loaded"] == []
    assert status["onnxruntime"] == [False, "onnxruntime is not installed (pip install 'medkd3d[export]')"]
    assert status["tensorrt"][0] is False and "tensorrt package is not installed" in status["tensorrt"][1]


def test_an_unavailable_backend_is_a_refusal_on_the_command_line() -> None:
    """``medkd3d infer`` answers it with one line, not a traceback (the CLI knows the class by its module path)."""
    from medkd3d.cli import find_refusal

    error = BackendUnavailableError("onnxruntime is not installed")
    assert find_refusal(RuntimeError("wrapped")) is None
    wrapped = RuntimeError("Failed to instantiate component")
    wrapped.__cause__ = error
    assert find_refusal(wrapped) is error
