"""ONNX and TorchScript export of every bundle's network: parity with eager, dynamic batch, embedded metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medkd3d.export.deployment import CONFIG_FILES, DeploymentConfig
from medkd3d.export.runtime import load_runtime


def test_export_passes_parity_and_matches_eager_on_new_batches(bundle_name, exported, tiny_bundles):
    name = bundle_name
    results = exported[name]
    network = tiny_bundles[name].load().network
    input_shape = DeploymentConfig.read_directory(results["onnx"].path.parent).input_shape
    # a batch size the export never saw, through each artefact's runtime
    x = np.random.default_rng(1).standard_normal((3, *input_shape), dtype=np.float32)
    with torch.no_grad():
        expected = network(torch.from_numpy(x)).numpy()
    for fmt, backend in (("onnx", "onnxruntime"), ("torchscript", "torchscript")):
        result = results[fmt]
        report = json.loads(result.path.with_name(f"{result.path.name}.parity.json").read_text())
        assert report["passed"] and report["failures"] == []
        groups = {g["name"]: g for g in report["groups"]}
        assert groups["random"]["num_inputs"] == 3 and groups["real"]["num_inputs"] >= 2
        assert groups["real"]["num_decisive"] > 0, "logit margins too small for the agreement check to mean anything"
        for group in groups.values():  # the fp32 tolerance: 1e-3 + 1e-3 * the group's largest |logit|
            assert group["max_abs_diff"] <= 1e-3 * (1 + group["scale"])
        runtime = load_runtime(result.path, backend=backend, device="cpu")
        assert np.abs(runtime(x) - expected).max() <= 1e-3 * (1 + np.abs(expected).max())
    assert not list(results["onnx"].path.parent.glob(".*partial*")), "temporary files left behind"


@pytest.mark.parametrize("name", ["brats_student_effnet3d", "brats_student_effnet25d"])
def test_onnx_graph_has_named_io_dynamic_batch_and_opset(name, exported):
    import onnx

    model = onnx.load(str(exported[name]["onnx"].path))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["pred"]
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value, "batch axis must be symbolic"
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17


@pytest.mark.parametrize("name", ["brats_student_effnet25d", "brats_teacher_vggvit3d"])
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_metadata_round_trip(name, exported, tiny_bundles, tmp_path):
    from monai.bundle import ConfigParser
    from monai.data import load_net_with_metadata

    from medkd3d.export.embedded import read_onnx_metadata

    root = tiny_bundles[name].root
    metadata = json.loads((root / "configs" / "metadata.json").read_text())
    source = ConfigParser.load_config_file(str(root / "configs" / "inference.json"))
    results = exported[name]

    onnx_props = read_onnx_metadata(results["onnx"].path)
    assert set(CONFIG_FILES) <= set(onnx_props)
    assert json.loads(onnx_props["metadata.json"]) == metadata
    inference = json.loads(onnx_props["inference.json"])
    assert inference["network_def"]["name"] == source["network_def"]["name"]
    # the preprocessing travels as data: the bundle's factory with its resolved arguments, overrides applied
    (step,) = inference["preprocessing"]
    assert step["transform"] == source["preprocessing"]["_target_"]
    assert step["args"]["spatial_size"] == tiny_bundles[name].overrides["spatial_size"]
    assert "$" not in onnx_props["inference.json"] and "@" not in onnx_props["inference.json"]

    # TorchScript: the layout of MONAI's ckpt_export, read back with MONAI's loader
    _, ts_metadata, extra = load_net_with_metadata(
        str(results["torchscript"].path), more_extra_files=["inference.json"]
    )
    assert ts_metadata == metadata
    assert json.loads(extra["inference.json"]) == inference

    # copied alone, the ONNX file still carries everything inference needs
    alone = tmp_path / "model.onnx"
    shutil.copy(results["onnx"].path, alone)
    deployment = DeploymentConfig.for_artefact(alone)
    assert deployment.class_names == ["LGG", "HGG"]
    assert deployment.input_shape == DeploymentConfig.read_directory(results["onnx"].path.parent).input_shape
    assert callable(deployment.build_preprocessing())


def test_engine_without_configs_gives_a_clear_error(tmp_path: Path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    with pytest.raises(ValueError, match="copy them"):
        DeploymentConfig.for_artefact(engine)


def test_bundle_tensorrt_config_matches_the_export(bundle_name, exported, tiny_bundles):
    """The bundles' ``inference_trt.json`` (MONAI ``trt_compile``) profiles the batch the export reports per subject."""
    from monai.bundle import ConfigParser

    configs = tiny_bundles[bundle_name].root / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "inference.json"), str(configs / "inference_trt.json")])
    assert parser["network"].startswith("$trt_compile(@network_export")  # the export-safe network, as ckpt_export
    trt_args = parser.get_parsed_content("trt_args")
    assert trt_args["method"] == "onnx"
    low, opt, high = trt_args["dynamic_batchsize"]
    per_subject = DeploymentConfig.read_directory(exported[bundle_name]["onnx"].path.parent).export_info[
        "inputs_per_subject"
    ]
    assert low == 1 and opt == high == parser.get_parsed_content("batch_size") * per_subject
