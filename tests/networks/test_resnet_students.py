"""The ResNet students of the ``quick`` profiles: MONAI's 3D ResNet with features, and timm ResNets in 2.5D."""

from __future__ import annotations

import torch

from medkd3d.networks import create_model


def test_timm_resnet_encoder_scripts_and_matches_timm_intermediates():
    """The 2.5D encoder's timm ResNet (the quick profile's ``resnet10t``) gives timm's own stage features, scripted."""
    import timm

    model = create_model("efficientnet25d", backbone="resnet10t", num_slices=1, num_classes=2).eval()
    x = torch.randn(2, 4, 32, 32)
    final, stages = model.backbone.forward_intermediates(x)
    timm_final, timm_stages = timm.models.resnet.ResNet.forward_intermediates(model.backbone, x)
    assert torch.equal(final, timm_final) and len(stages) == len(timm_stages) == 5
    assert all(torch.equal(a, b) for a, b in zip(stages, timm_stages))
    assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-5)


def test_resnet3d_stage_features_and_avgmax_head():
    model = create_model("resnet10_3d", in_channels=4, num_classes=2).eval()
    features = model.forward_features(torch.randn(2, 4, 32, 32, 32))
    assert [f.shape[2] for f in features] == [16, 8, 4, 2]  # strides 2..16: a 2^3 map at 32^3, not one voxel
    assert [f.shape[1] for f in features] == [info["num_chs"] for info in model.feature_info] == [32, 64, 128, 256]
    assert model.fc.in_features == 2 * 256  # average and maximum of the last stage
    assert sum(p.numel() for p in model.parameters()) < 4e6
