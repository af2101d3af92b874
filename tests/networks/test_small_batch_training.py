"""What lets the 3D networks train at the small batches of volumetric data: group normalisation (no running
statistics) and a classifier that starts near zero logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medkd3d.networks import create_model

GROUP_NORM = ("group", {"num_groups": 8})


def test_group_norm_vgg_gives_the_same_features_in_training_and_evaluation() -> None:
    """Batch norm evaluates with running statistics that a short training run has barely moved (the cause of
    students answering one constant probability); group norm normalises each sample by itself."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16, 16)
    for norm, same in ((GROUP_NORM, True), ("batch", False)):
        vgg = create_model("vgg11_3d", in_channels=4, num_classes=0, width_multiplier=0.125, norm=norm)
        assert any(isinstance(m, torch.nn.GroupNorm) for m in vgg.modules()) == same
        train_features = vgg.train()(x)
        eval_features = vgg.eval()(x)
        assert torch.allclose(train_features, eval_features, atol=1e-5) == same
        if same:  # one sample at a time gives the same features as in the batch
            assert torch.allclose(vgg.train()(x[:1]), train_features[:1], atol=1e-5)
        else:  # batch norm cannot even train on one volume once the maps are 1 voxel
            with pytest.raises(ValueError, match="more than 1 value per channel"):
                vgg.train()(x[:1])


def test_teacher_builds_its_vgg_with_the_requested_norm() -> None:
    teacher = create_model(
        "vggvit3d", in_channels=4, num_classes=2, img_size=16, patch_size=8, width_multiplier=0.125,
        vit_hidden_size=32, vit_layers=1, vit_heads=2, msgff_dim=16, vgg_norm=GROUP_NORM,
    )  # fmt: skip
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in teacher.vgg.modules())
    assert teacher(torch.randn(1, 4, 16, 16, 16)).shape == (1, 2)  # batch 1 trains: no batch statistics


def test_efficientnet3d_starts_near_chance_instead_of_exploding() -> None:
    """MONAI's classifier init gives logits with a std near 9 for two classes (cross-entropy ~7); ours starts
    close to the cross-entropy of a uniform guess."""
    torch.manual_seed(0)
    for norm in (GROUP_NORM, ("batch", {"eps": 1e-3, "momentum": 0.01})):
        model = create_model("efficientnet3d_b0", in_channels=4, num_classes=2, norm=norm).train()
        logits = model(torch.randn(4, 4, 32, 32, 32))
        assert logits.abs().max() < 1.0
        loss = F.cross_entropy(logits, torch.tensor([0, 1, 0, 1]))
        assert loss.item() < 1.5 * math.log(2)  # MONAI's own head starts near 7
