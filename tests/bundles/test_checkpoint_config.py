"""A bundle's checkpoints record the configuration they were trained with, and loaders refuse another one.

One tiny teacher bundle is trained at 32^3 here (it needs no teacher of its own); its network's weights do not
depend on the input size, so without the recorded configuration an export at another size would load silently.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from medkd3d.bundles import load_teacher
from medkd3d.export.bundle import CONFIG_KEY, checkpoint_config, load_bundle
from medkd3d.networks import create_model

BUNDLE = "brats_hdkd_teacher3d"


@pytest.fixture(scope="module")
def trained(bundle_kit, synthetic_brats_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of one tiny training run of the bundle (``models/model.pt`` and ``models/last.pt``)."""
    out = tmp_path_factory.mktemp("checkpoint_config")
    bundle_kit.run(
        BUNDLE, ["train.json"], "train", **bundle_kit.train_overrides(BUNDLE, synthetic_brats_root, out, out)
    )
    return out


def _tiny_network_args(bundle_kit) -> dict:
    """The bundle's own fixed network arguments (e.g. ``head_pooling``) with the tiny overrides on top."""
    network_def = json.loads((bundle_kit.bundles_dir / BUNDLE / "configs" / "train.json").read_text())["network_def"]
    skip = ("_target_", "name", "in_channels", "num_classes")
    fixed = {k: v for k, v in network_def.items() if k not in skip and not str(v).startswith(("$", "@"))}
    return {**fixed, **{key.split("#", 1)[1]: value for key, value in bundle_kit.network_overrides(BUNDLE).items()}}


@pytest.mark.parametrize("name", ["model.pt", "last.pt"])
def test_checkpoints_record_the_training_config(name: str, trained: Path, bundle_kit) -> None:
    checkpoint = torch.load(trained / "models" / name, map_location="cpu", weights_only=True)
    config = checkpoint_config(checkpoint)
    assert config is not None, f"{name} records no config"
    assert json.loads(json.dumps(config)) == config  # plain data only
    assert config["bundle"] == BUNDLE
    assert config["spatial_size"] == bundle_kit.spatial
    assert config["class_names"] == ["LGG", "HGG"]
    assert config["network_def"]["name"] == bundle_kit.model_of[BUNDLE]
    assert config["network_def"]["num_classes"] == 2
    for arg, value in _tiny_network_args(bundle_kit).items():  # the overrides, resolved
        assert config["network_def"][arg] == value
    if name == "last.pt":
        assert checkpoint[CONFIG_KEY] == config


def test_model_checkpoint_stays_a_plain_state_dict(trained: Path, bundle_kit) -> None:
    """``model.pt`` still loads strictly into the network (MONAI's CheckpointLoader and ckpt_export rely on it)."""
    state = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(torch.is_tensor(value) for value in state.values())
    network = create_model(bundle_kit.model_of[BUNDLE], in_channels=4, num_classes=2, **_tiny_network_args(bundle_kit))
    network.load_state_dict(state, strict=True)


def test_load_bundle_with_the_training_overrides(trained: Path, bundle_kit, synthetic_brats_root: Path) -> None:
    overrides = bundle_kit.inference_overrides(BUNDLE, synthetic_brats_root, trained)
    model = load_bundle(bundle_kit.bundles_dir / BUNDLE, overrides=overrides)
    assert model.checkpoint == trained / "models" / "model.pt"


def test_export_at_another_spatial_size_is_refused(trained: Path, bundle_kit, synthetic_brats_root: Path) -> None:
    from medkd3d.export import export_bundle

    overrides = {**bundle_kit.inference_overrides(BUNDLE, synthetic_brats_root, trained), "spatial_size": [64] * 3}
    with pytest.raises(ValueError, match=r"model\.pt was trained with spatial_size=\[32, 32, 32\]") as error:
        export_bundle(
            bundle_kit.bundles_dir / BUNDLE, trained / "export", formats=("torchscript",), overrides=overrides
        )
    assert "this run uses spatial_size=[64, 64, 64]" in str(error.value)
    assert "--override spatial_size=[32,32,32]" in str(error.value)
    assert not (trained / "export" / "model.ts").exists()


def test_export_with_the_training_overrides(trained: Path, bundle_kit, synthetic_brats_root: Path) -> None:
    from medkd3d.export import export_bundle

    overrides = bundle_kit.inference_overrides(BUNDLE, synthetic_brats_root, trained)
    results = export_bundle(
        bundle_kit.bundles_dir / BUNDLE,
        trained / "export_ok",
        formats=("torchscript",),
        overrides=overrides,
        parity_data=str(synthetic_brats_root),
    )
    assert set(results) == {"torchscript"}


def test_export_reads_the_training_configuration_from_the_checkpoint(
    trained: Path, bundle_kit, synthetic_brats_root: Path
) -> None:
    """Only the checkpoint is given - no training overrides: the network is built as it was trained (tiny, 32^3),
    not as the bundle's defaults (full width, 128^3), and the weights load."""
    model = load_bundle(bundle_kit.bundles_dir / BUNDLE, checkpoint=trained / "models" / "model.pt")
    assert model.parser.get_parsed_content("spatial_size") == bundle_kit.spatial
    tiny = create_model(bundle_kit.model_of[BUNDLE], in_channels=4, num_classes=2, **_tiny_network_args(bundle_kit))
    assert sum(p.numel() for p in model.network.parameters()) == sum(p.numel() for p in tiny.parameters())
    state = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.network.state_dict(), dict(state))


def test_other_network_arguments_are_refused(trained: Path, bundle_kit, synthetic_brats_root: Path) -> None:
    overrides = bundle_kit.inference_overrides(BUNDLE, synthetic_brats_root, trained)
    overrides["network_def#num_classes"] = 3
    with pytest.raises(ValueError, match=r"differing: num_classes.*--override network_def#num_classes=2"):
        load_bundle(bundle_kit.bundles_dir / BUNDLE, overrides=overrides)


def test_other_class_names_are_refused(trained: Path, bundle_kit, synthetic_brats_root: Path) -> None:
    overrides = {**bundle_kit.inference_overrides(BUNDLE, synthetic_brats_root, trained), "class_names": ["A", "B"]}
    with pytest.raises(ValueError, match=r"class_names=\[\"LGG\", \"HGG\"\] but this run uses class_names"):
        load_bundle(bundle_kit.bundles_dir / BUNDLE, overrides=overrides)


def test_student_teacher_loading_checks_the_config(trained: Path, bundle_kit) -> None:
    checkpoint = trained / "models" / "model.pt"
    root = bundle_kit.bundles_dir / BUNDLE

    def teacher():
        return create_model(bundle_kit.model_of[BUNDLE], in_channels=4, num_classes=2, **_tiny_network_args(bundle_kit))

    # built from the teacher bundle plus the checkpoint's record: the tiny network, with nothing repeated
    loaded = load_teacher(root, checkpoint, spatial_size=bundle_kit.spatial, class_names=["LGG", "HGG"])
    assert not any(p.requires_grad for p in loaded.parameters())
    assert sum(p.numel() for p in loaded.parameters()) == sum(p.numel() for p in teacher().parameters())
    # the same weights, its 3D convolutions channels-last when asked (the bundles' choice on a CPU)
    fast = load_teacher(root, checkpoint, spatial_size=bundle_kit.spatial, channels_last=True)
    torch.testing.assert_close(fast.state_dict(), loaded.state_dict())
    weights = [p for p in fast.parameters() if p.dim() == 5]
    assert weights and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights)
    assert not all(p.is_contiguous() for p in weights)
    assert all(p.is_contiguous() for p in loaded.parameters())
    with pytest.raises(ValueError, match=r"trained with spatial_size=\[32, 32, 32\].*\[64, 64, 64\]"):
        load_teacher(root, checkpoint, spatial_size=[64, 64, 64], class_names=["LGG", "HGG"])
    # a teacher architecture built elsewhere is checked against the record too
    own = load_teacher(root, checkpoint, network=teacher(), spatial_size=bundle_kit.spatial)
    torch.testing.assert_close(own.state_dict(), loaded.state_dict())
    with pytest.raises(ValueError, match=r"trained with spatial_size=\[32, 32, 32\].*\[64, 64, 64\]"):
        load_teacher(root, checkpoint, network=teacher(), spatial_size=[64, 64, 64])


def test_checkpoint_without_config_loads_with_a_warning(
    trained: Path, bundle_kit, synthetic_brats_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    old = tmp_path / "old.pt"
    torch.save(dict(state), old)  # a plain dict, as medkd3d wrote before it recorded the config
    assert checkpoint_config(torch.load(old, weights_only=True)) is None
    overrides = bundle_kit.inference_overrides(BUNDLE, synthetic_brats_root, trained)
    with caplog.at_level(logging.WARNING, logger="medkd3d.bundles"):
        model = load_bundle(bundle_kit.bundles_dir / BUNDLE, checkpoint=old, overrides=overrides)
    assert model.checkpoint == old
    assert "records no training configuration" in caplog.text


@pytest.mark.parametrize("kind", ["state_dict", "plain_dict", "nested"])
def test_attach_config_keeps_the_checkpoint_loadable(kind: str, tmp_path: Path) -> None:
    from medkd3d.export.bundle import attach_config

    network = torch.nn.Linear(2, 2)
    checkpoint = {
        "state_dict": network.state_dict(),
        "plain_dict": dict(network.state_dict()),
        "nested": {"model": network.state_dict(), "epoch": 3},
    }[kind]
    torch.save(attach_config(checkpoint, {"spatial_size": (32, 32, 32)}), tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    assert checkpoint_config(loaded) == {"spatial_size": [32, 32, 32]}
    assert CONFIG_KEY not in checkpoint and "medkd3d:config" not in getattr(checkpoint, "_metadata", {})  # untouched
    network.load_state_dict(loaded["model"] if kind == "nested" else loaded, strict=True)
