"""MONAI's 3D ResNet with the medkd3d feature interface: a student that learns from scratch on small volumes.

:class:`ResNet3D` subclasses ``monai.networks.nets.ResNet`` (same blocks, same parameter names) and adds
``forward_features``/``forward_head``/``feature_info`` and a configurable global pooling head.

Why it exists. On the synthetic default at 32^3 (``medkd3d pipeline --quick``), EfficientNet-B0 students, 3D and
2D, stayed at chance after 16 epochs (the 2D one did not even fit its training subjects), while the VGG-ViT teacher
reached a test AUC of 0.95: a stride-32 EfficientNet squeezes a 32^3 brain into one voxel and learns slowly from
scratch on a hundred subjects. This ResNet keeps a 2^3 map at 32^3 and learns in the same budget (test AUC 0.95 in
the same run), so the 3D student bundle's ``quick`` profile uses it; the full-size default (``train.json``) keeps
EfficientNet-B0.

Defaults: a 3x3x3 stem at stride 1 (MONAI's 7^3 stem costs 13x more at full resolution), max pooling, four stages
of basic blocks at strides 2, 4, 8, 16, widths ``(64, 128, 256, 512) * width_multiplier``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.nets.resnet import ResNet
from torch import nn

from medkd3d.networks.pooling import check_global_pooling, global_pool, pooled_width
from medkd3d.networks.registry import register_model

__all__ = ["ResNet3D"]

_STAGES = ("layer1", "layer2", "layer3", "layer4")


class ResNet3D(ResNet):
    """MONAI ResNet exposing its four stage features.

    Args:
        layers: basic blocks per stage (ResNet-10: ``(1, 1, 1, 1)``, ResNet-18: ``(2, 2, 2, 2)``).
        in_channels: input channels (4 MRI modalities).
        num_classes: number of classes.
        widths: stage widths before ``width_multiplier``.
        width_multiplier: factor on every stage width (MONAI's ``widen_factor``).
        stem_kernel_size: kernel of the stride-1 stem convolution.
        norm: normalisation layer, as in MONAI (``"batch"``, ``("group", {"num_groups": 8})``, ...).
        head_pooling: global pooling of the last stage, one of :data:`~medkd3d.networks.pooling.GLOBAL_POOLINGS`.
        spatial_dims: 3 for volumes.

    Raises:
        ValueError: for an unknown ``head_pooling`` (and MONAI's own checks).
    """

    def __init__(
        self,
        layers: Sequence[int] = (1, 1, 1, 1),
        in_channels: int = 4,
        num_classes: int = 2,
        widths: Sequence[int] = (64, 128, 256, 512),
        width_multiplier: float = 0.5,
        stem_kernel_size: int = 3,
        norm: str | tuple = "batch",
        head_pooling: str = "avgmax",
        spatial_dims: int = 3,
    ) -> None:
        check_global_pooling(head_pooling, "ResNet3D")
        super().__init__(
            block="basic",
            layers=list(layers),
            block_inplanes=list(widths),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=stem_kernel_size,
            conv1_t_stride=1,
            widen_factor=width_multiplier,
            num_classes=num_classes,
            norm=norm,
        )
        self.num_classes = num_classes
        self.head_pooling = head_pooling
        channels = [getattr(self, stage)[-1].conv2.out_channels for stage in _STAGES]
        # a small normal start, as timm and torchvision heads do: first logits near 0, a loss near log(num_classes)
        self.fc = nn.Linear(pooled_width(channels[-1], head_pooling), num_classes)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)
        self.feature_info = [
            {"num_chs": c, "reduction": 2**i, "module": stage} for i, (c, stage) in enumerate(zip(channels, _STAGES), 1)
        ]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs ``[B, C_i, *spatial / 2**(i+1)]``, one per ``feature_info`` entry."""
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        # unrolled: TorchScript cannot iterate over a tuple of different Sequential types
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3, self.layer4(f3)]

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, num_classes]`` from the globally pooled last stage."""
        return self.fc(global_pool(features[-1], self.head_pooling))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_TINY = {"width_multiplier": 0.125}
_TINY_INPUT = (4, 16, 16, 16)


@register_model("resnet10_3d", tiny_kwargs=_TINY, tiny_input_shape=_TINY_INPUT, default_input_shape=(4, 128, 128, 128))
def resnet10_3d(**kwargs: Any) -> ResNet3D:
    """3D ResNet-10 (one basic block per stage) at half width: about 3.6M parameters (see :class:`ResNet3D`)."""
    return ResNet3D(layers=(1, 1, 1, 1), **kwargs)


@register_model("resnet18_3d", tiny_kwargs=_TINY, tiny_input_shape=_TINY_INPUT, default_input_shape=(4, 128, 128, 128))
def resnet18_3d(**kwargs: Any) -> ResNet3D:
    """3D ResNet-18 (two basic blocks per stage) at half width (see :class:`ResNet3D`)."""
    return ResNet3D(layers=(2, 2, 2, 2), **kwargs)
