"""INT8 calibration data (no TensorRT needed) and the engine-inspector precision summary."""

from __future__ import annotations

import numpy as np
import pytest

from medkd3d.export.backends import BackendUnavailableError
from medkd3d.export.deployment import DeploymentConfig
from medkd3d.export.inputs import CalibrationBatches, load_records, network_inputs
from medkd3d.export.tensorrt import make_entropy_calibrator, summarize_layer_precisions, tensorrt_status


@pytest.fixture(scope="module")
def slice_deployment(exported) -> DeploymentConfig:
    """The 2.5D student's exported configuration: one [8, 4K, H, W] input (8 slice stacks) per subject."""
    return DeploymentConfig.for_artefact(exported["brats_student_effnet25d"]["onnx"].path)


def test_calibration_batches_read_the_datalist(slice_deployment, synthetic_brats_root, tmp_path):
    from medkd3d.data import discover_brats, write_datalist

    datalist = write_datalist(discover_brats(synthetic_brats_root), tmp_path / "calibration.json")
    records = load_records(datalist)[:3]
    sub = tmp_path / "three.json"
    write_datalist({**discover_brats(synthetic_brats_root), "training": records}, sub)

    batches = list(CalibrationBatches.from_datalist(sub, slice_deployment, batch_size=2))

    # 3 subjects, one network input each (the MIL student takes a subject's 8 stacks whole) -> 1 full batch of 2,
    # the last input dropped
    assert len(batches) == 1
    assert slice_deployment.input_shape[0] == 8
    assert all(b.shape == (2, *slice_deployment.input_shape) and b.dtype == np.float32 for b in batches)
    preprocessing, inferer = slice_deployment.build_preprocessing(), slice_deployment.build_inferer()
    expected = np.concatenate([network_inputs(r, preprocessing, inferer, 2) for r in records])
    assert expected.shape == (3, *slice_deployment.input_shape)
    np.testing.assert_array_equal(np.concatenate(batches), expected[:2])

    limited = CalibrationBatches.from_datalist(sub, slice_deployment, batch_size=1, max_batches=2)
    assert len(list(limited)) == 2


def test_calibration_needs_enough_inputs(slice_deployment, synthetic_brats_root):
    records = load_records(synthetic_brats_root)[:1]
    d = slice_deployment
    too_big = CalibrationBatches(records, d.build_preprocessing(), d.build_inferer(), 2, batch_size=2)
    with pytest.raises(ValueError, match="fewer than one batch of 2"):
        list(too_big)
    with pytest.raises(ValueError, match="at least one subject"):
        CalibrationBatches([], d.build_preprocessing(), d.build_inferer(), 2)


@pytest.mark.skipif(tensorrt_status()[0], reason="checks the behaviour without TensorRT")
def test_calibrator_without_tensorrt_is_a_clear_error(tmp_path):
    with pytest.raises(BackendUnavailableError, match="TensorRT is not available"):
        make_entropy_calibrator([], 1, tmp_path / "calibration.cache")


def test_layer_precision_summary_of_an_int8_engine():
    def tensor(data_format: str) -> dict:
        return {"Name": "t", "Location": "Device", "Dimensions": [1, 32, 8, 8, 8], "Format/Datatype": data_format}

    information = {
        "Layers": [
            {"Name": "reformat in", "LayerType": "Reformat", "Inputs": [tensor("Row major linear FP32 format")],
             "Outputs": [tensor("Channel major FP16 format where channel % 8 == 0")]},
            {"Name": "stem conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution", "Groups": 1,
             "NbOutputMaps": 32, "Inputs": [tensor("Thirty-two wide channel vectorized row major Int8 format")],
             "Outputs": [tensor("Thirty-two wide channel vectorized row major Int8 format")]},
            {"Name": "depthwise conv", "LayerType": "CaskConvolution", "ParameterType": "Convolution", "Groups": 32,
             "NbOutputMaps": 32, "Inputs": [tensor("Channel major FP16 format where channel % 8 == 0")],
             "Outputs": [tensor("Channel major FP16 format where channel % 8 == 0")]},
            {"Name": "head", "LayerType": "CaskGemm", "Inputs": [tensor("Float")], "Outputs": [tensor("Float")]},
        ]
    }  # fmt: skip
    summary = summarize_layer_precisions(information, "int8")
    assert [layer["precision"] for layer in summary["layers"]] == ["fp32", "int8", "fp16", "fp32"]
    assert summary["compute_layer_counts"] == {"int8": 1, "fp16": 1, "fp32": 1}  # the reformat is not compute
    assert summary["depthwise_convolutions"] == {"fp16": 1}
    assert "1 of 1 depthwise convolutions run outside INT8" in summary["notes"][0]

    names_only = summarize_layer_precisions({"Layers": ["conv", "relu"]}, "fp16")
    assert names_only["compute_layer_counts"] == {"unknown": 2} and "DETAILED" in names_only["notes"][0]
