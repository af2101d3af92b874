"""``verify_net_in_out`` against every bundle's metadata, the ``ckpt_export`` TorchScript round trip, and the
``trt_compile`` inference config run on CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out
from monai.data import load_net_with_metadata
from monai.networks.blocks import MemoryEfficientSwish

from medkd3d.bundles import BUNDLE_NAMES
from medkd3d.data import discover_brats, write_datalist

#: The VGG-ViT teacher's position embedding fixes its input size; the metadata says 128^3, the tests run 32^3.
FIXED_SIZE = {"brats_teacher_vggvit3d": {"_meta_#network_data_format#inputs#image#spatial_shape": [32, 32, 32]}}


def _io_overrides(bundle_kit, bundle: str) -> dict:
    return {"spatial_size": bundle_kit.spatial, **bundle_kit.network_overrides(bundle), **FIXED_SIZE.get(bundle, {})}


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_verify_net_in_out(bundle: str, bundle_kit) -> None:
    configs = bundle_kit.bundles_dir / bundle / "configs"
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        **_io_overrides(bundle_kit, bundle),
    )


def test_verify_net_in_out_catches_a_wrong_metadata(bundle_kit) -> None:
    bundle = "brats_hdkd_student3d"
    configs = bundle_kit.bundles_dir / bundle / "configs"
    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(configs / "metadata.json"),
            config_file=str(configs / "inference.json"),
            **{**_io_overrides(bundle_kit, bundle), "_meta_#network_data_format#outputs#pred#num_channels": 3},
        )


def _input_shape(bundle: str, bundle_kit) -> list[int]:
    meta = json.loads((bundle_kit.bundles_dir / bundle / "configs" / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    if bundle == "brats_student_effnet25d":  # [B, S, 4K, H, W]: num_channels counts the stacks of a subject
        return [1, image["num_channels"], image["spatial_shape"][0], *bundle_kit.spatial[:2]]
    return [1, image["num_channels"], *bundle_kit.spatial[: len(image["spatial_shape"])]]


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_ckpt_export_round_trip(bundle: str, bundle_kit, trained_bundles: Path, tmp_path: Path) -> None:
    configs = bundle_kit.bundles_dir / bundle / "configs"
    checkpoint = trained_bundles / bundle / "models" / "model.pt"
    overrides = {"spatial_size": bundle_kit.spatial, **bundle_kit.network_overrides(bundle)}
    shape = _input_shape(bundle, bundle_kit)
    ckpt_export(
        net_id="network_export",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(checkpoint),
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        use_trace=True,
        input_shape=shape,
        **overrides,
    )
    scripted, meta, extra = load_net_with_metadata(str(tmp_path / "model.ts"), more_extra_files=["inference.json"])
    assert meta["version"] == json.loads((configs / "metadata.json").read_text())["version"]
    assert json.loads(extra["inference.json"])["network_def"]["name"] == bundle_kit.model_of[bundle]

    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser.update(overrides)
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(checkpoint, weights_only=True))
    eager.eval()
    x = torch.randn(2, *shape[1:])  # batch 2: the traced model is not tied to the example batch size
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), rtol=1e-4, atol=1e-5)


def _predictions(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as stream:
        return {row["subject"]: row for row in csv.DictReader(stream)}


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_tensorrt_inference_config_runs_on_cpu(
    bundle: str, bundle_kit, trained_bundles: Path, synthetic_brats_root: Path, tmp_path: Path
) -> None:
    """``inference_trt.json`` on top of ``inference.json``, the model-zoo way: MONAI's ``trt_compile`` wraps the
    export-safe ``network_export`` (the network ``ckpt_export`` traces), profiled for the batch the inferer sends.
    Without CUDA/TensorRT ``trt_compile`` is a no-op, so on CPU the bundle predicts what ``inference.json`` does
    (building engines is checked on GPU machines only)."""
    data = discover_brats(synthetic_brats_root)
    data["training"] = data["training"][:2] + data["training"][-2:]  # both grades, four subjects keep it fast
    overrides = {
        **bundle_kit.inference_overrides(bundle, synthetic_brats_root, trained_bundles / bundle),
        "datalist": str(write_datalist(data, tmp_path / "datalist.json")),
    }
    plain = {**overrides, "output_dir": str(tmp_path / "plain")}
    bundle_kit.run(bundle, ["inference.json"], "infer", **plain)

    trt = {**overrides, "output_dir": str(tmp_path / "trt")}
    workflow = bundle_kit.workflow(bundle, ["inference.json", "inference_trt.json"], "infer", **trt)
    parser = workflow.parser
    network = parser.get_parsed_content("network")
    # resolving ``network`` ran prepare_for_export: no custom autograd function (EfficientNet's memory-efficient
    # swish) is left for the ONNX export of trt_compile
    assert not any(isinstance(m, MemoryEfficientSwish) for m in network.modules())
    assert network is parser.get_parsed_content("network_export") is parser.get_parsed_content("network_def")
    assert parser.get_parsed_content("evaluator").amp is False
    batch = parser.get_parsed_content("batch_size")  # subjects: the 2.5D network takes a subject's stacks whole
    assert parser.get_parsed_content("trt_args")["dynamic_batchsize"] == [1, batch, batch]
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()

    expected = _predictions(tmp_path / "plain" / "predictions.csv")
    actual = _predictions(tmp_path / "trt" / "predictions.csv")
    assert sorted(actual) == sorted(expected) == sorted(r["subject"] for r in data["training"])
    for subject, row in expected.items():
        assert actual[subject]["predicted"] == row["predicted"]
        for column in ("prob_LGG", "prob_HGG"):
            # the compiled path may reorder float reductions (group norm): agreement to 1e-5, not bit-exact
            assert float(actual[subject][column]) == pytest.approx(float(row[column]), abs=1e-5)
