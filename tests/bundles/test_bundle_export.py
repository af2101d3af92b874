"""``verify_net_in_out`` against every bundle's metadata, and the ``ckpt_export`` TorchScript round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out
from monai.data import load_net_with_metadata

from medkd3d.workflows.bundle import BUNDLE_NAMES

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


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_tensorrt_inference_config_resolves(bundle: str, bundle_kit, tmp_path: Path) -> None:
    """``inference_trt.json`` merges onto ``inference.json`` and wraps the network with MONAI's ``trt_compile``
    (a no-op that warns without CUDA/TensorRT; building engines is checked on GPU machines only)."""
    configs = bundle_kit.bundles_dir / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "inference.json"), str(configs / "inference_trt.json")])
    parser.update({"ckpt_path": str(tmp_path / "model.pt"), "spatial_size": bundle_kit.spatial})
    parser.update(bundle_kit.network_overrides(bundle))
    assert isinstance(parser.get_parsed_content("network"), torch.nn.Module)
    assert parser.get_parsed_content("amp") is False
    stacks = parser.get_parsed_content("num_eval_stacks") if "num_eval_stacks" in parser else 1
    assert parser.get_parsed_content("trt_args")["dynamic_batchsize"] == [1, stacks, stacks]
