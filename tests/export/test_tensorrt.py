"""TensorRT engines from the exported ONNX (FP16, INT8 with calibration); skipped without CUDA and tensorrt."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from medkd3d.export.tensorrt import tensorrt_status

pytestmark = [
    pytest.mark.tensorrt,
    pytest.mark.skipif(not tensorrt_status()[0], reason=f"TensorRT unavailable: {tensorrt_status()[1]}"),
]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engine_export_parity_layer_report_and_auto_runtime(precision, tiny_bundles, synthetic_brats_root, tmp_path):
    from medkd3d.export.exporter import export_model
    from medkd3d.export.runtime import load_runtime

    tiny = tiny_bundles["brats_student_effnet3d"]
    out = tmp_path / precision
    results = export_model(
        tiny.load(), out, ["tensorrt"], precision=precision, calib_data=synthetic_brats_root,
        parity_data=synthetic_brats_root,
    )  # fmt: skip
    assert set(results) == {"onnx", "tensorrt"}
    engine = results["tensorrt"]
    assert engine.path.is_file() and engine.parity.passed
    layers = json.loads((out / "model.engine.layers.json").read_text())
    assert layers["precision"] == precision and sum(layers["compute_layer_counts"].values()) > 0
    if precision == "int8":
        assert (out / "calibration.cache").stat().st_size > 0
        assert "int8" in layers["compute_layer_counts"]
        assert layers["depthwise_convolutions"], "EfficientNet has depthwise convolutions"
    else:
        assert "fp16" in layers["compute_layer_counts"]

    runtime = load_runtime(out)
    assert runtime.backend == "tensorrt"
    x = np.random.default_rng(2).standard_normal((5, *tuple(json.loads((out / "export.json").read_text())["input_shape"])),
                                                dtype=np.float32)  # fmt: skip
    with torch.no_grad():
        expected = tiny.load().network(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runtime(x), expected, atol=0.1 if precision == "fp16" else 1.0)

    # an engine alone next to its configs is a deployable unit
    deployed = tmp_path / f"deployed-{precision}"
    deployed.mkdir()
    for name in ("model.engine", "metadata.json", "inference.json", "export.json"):
        shutil.copy(out / name, deployed / name)
    assert load_runtime(deployed).backend == "tensorrt"
