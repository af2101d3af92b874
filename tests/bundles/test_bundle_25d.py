"""The 2.5D bundle is trained as it is used: S stacks over the brain in training (random) and evaluation/inference
(fixed), the same S, no segmentation anywhere, and a network that pools the stacks itself (``SimpleInferer``)."""

from __future__ import annotations

from pathlib import Path

import torch
from monai.inferers import SimpleInferer
from monai.transforms import LoadImaged

from medkd3d.data.transforms import RandSliceStackd, SliceStackd
from medkd3d.export.bundle import bundle_parser
from medkd3d.networks.efficientnet25d import MultiSliceEfficientNet25D

BUNDLE = "brats_student_effnet25d"


def _slicer(pipeline, kind: type) -> object:
    (slicer,) = [t for t in pipeline.transforms if isinstance(t, kind)]
    return slicer


def _loaded_keys(pipeline) -> set[str]:
    return {key for t in pipeline.transforms if isinstance(t, LoadImaged) for key in t.keys}


def test_training_and_evaluation_stacks_match_and_need_no_segmentation(bundle_kit) -> None:
    root = bundle_kit.bundles_dir / BUNDLE
    overrides = {"spatial_size": bundle_kit.spatial, "num_stacks": 5, **bundle_kit.network_overrides(BUNDLE)}
    train = bundle_parser(root, overrides, config="train.json")
    inference = bundle_parser(root, overrides, config="inference.json")

    train_pipeline = train.get_parsed_content("train#preprocessing")
    sampler = _slicer(train_pipeline, RandSliceStackd)
    assert sampler.sampling == "random_foreground" and sampler.num_stacks == 5  # jittered bins of the brain
    assert sampler.volume_key == "volume"  # the 3D teacher still sees the whole volume
    for pipeline in (train.get_parsed_content("validate#preprocessing"), inference.get_parsed_content("preprocessing")):
        fixed = _slicer(pipeline, SliceStackd)
        assert fixed.sampling == "foreground" and fixed.num_stacks == 5  # the bins' midpoints
        assert (fixed.num_slices, fixed.axis) == (sampler.num_slices, sampler.axis)
        assert _loaded_keys(pipeline) == {"image"}
    assert _loaded_keys(train_pipeline) == {"image"}  # the segmentation is never read
    assert train.get("validate#preprocessing") == inference.get("preprocessing")

    for parser, inferer_id in ((train, "validate#inferer"), (inference, "inferer")):
        assert type(parser.get_parsed_content(inferer_id)) is SimpleInferer  # the network pools its stacks
    network = inference.get_parsed_content("network_def")
    assert isinstance(network, MultiSliceEfficientNet25D) and network.pooling_mode == "attention"


def test_a_subject_becomes_one_network_input_and_one_prediction(bundle_kit, synthetic_brats_root: Path) -> None:
    from medkd3d.data import discover_brats

    root = bundle_kit.bundles_dir / BUNDLE
    parser = bundle_parser(root, {"spatial_size": bundle_kit.spatial, **bundle_kit.network_overrides(BUNDLE)})
    record = {**discover_brats(synthetic_brats_root)["training"][0], "seg": None}
    image = parser.get_parsed_content("preprocessing")(record)["image"]
    assert tuple(image.shape) == (8, 12, 32, 32)  # num_stacks x 4K x H x W
    network = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():
        logits = parser.get_parsed_content("inferer")(image.unsqueeze(0), network)
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
