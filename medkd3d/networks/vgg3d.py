"""3D VGG (Simonyan & Zisserman, 2015) with batch norm, a width multiplier and an input-size agnostic head.

No library ships a volumetric VGG, so this is the classic design with every layer in ``spatial_dims``
dimensions (MONAI ``Convolution`` blocks): five stages of 3x3x3 convolutions, each closed by a 2x2x2 max
pooling. The stage outputs *after* pooling are the model's features, so their strides are 2, 4, 8, 16 and 32 -
the same strides as the stages of EfficientNet and most 3D students, which lets feature distillation pair
teacher and student stages one to one.

Size. A full-width 3D VGG19 at 128^3 costs about 1.5 TFLOPs per volume and ~4 GB of float32 activations per
sample in training; it is the VGG branch of the hybrid teacher (:mod:`medkd3d.networks.vggvit3d`). The
standalone ``vgg*_3d`` models default to ``width_multiplier=0.25`` (stage widths 16, 32, 64, 128, 128, about
100 GFLOPs): a plain CNN teacher for quick studies, still an order of magnitude heavier than the students.
"""

from __future__ import annotations

from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from torch import Tensor, nn

from medkd3d.networks.pooling import check_global_pooling, global_pool, pooled_width
from medkd3d.networks.registry import register_model

__all__ = ["VGG3D", "VGG_CONFIGS", "vgg11_3d", "vgg13_3d", "vgg16_3d", "vgg19_3d"]

#: Output channels of every 3x3x3 convolution, per stage, at width multiplier 1 (the paper's A, B, D, E).
VGG_CONFIGS: dict[int, tuple[tuple[int, ...], ...]] = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _scale_width(channels: int, width_multiplier: float) -> int:
    return max(1, round(channels * width_multiplier))


class VGG3D(nn.Module):
    """Volumetric VGG classifier with the timm feature interface.

    Args:
        depth: VGG configuration, one of 11, 13, 16, 19.
        in_channels: input channels (4 MRI modalities by default).
        num_classes: number of output logits; ``0`` drops the classifier so that ``forward`` returns the pooled
            features (timm convention, used by the hybrid teacher).
        width_multiplier: factor applied to every stage width (see the module docstring for the default).
        norm: normalisation after every convolution, a MONAI norm name or ``(name, kwargs)`` (``"batch"``,
            ``("group", {"num_groups": 8})``, ``"instance"``); ``None`` for none. Convolutions followed by a
            normalisation have no bias. Group normalisation has no running statistics, so it behaves the same in
            training and evaluation at any batch size (batch norm at batch 2 does not).
        head_hidden_dim: width of the hidden layer of the classifier MLP; ``None`` for a single linear layer.
        dropout: dropout of the classifier MLP.
        spatial_dims: 3 for volumes; 2 gives the ordinary 2D VGG.
        head_pooling: global pooling of the last stage, one of :data:`~medkd3d.networks.pooling.GLOBAL_POOLINGS`
            (``"avg"``: the classic head; ``"avgmax"`` also passes each channel's strongest response).

    Raises:
        ValueError: for an unknown ``depth`` or ``head_pooling``, or a non-positive ``width_multiplier``.

    ``forward_features`` returns the five stage outputs after their max pooling (strides 2..32). Pooling uses
    ``ceil_mode`` so any input size works (e.g. the 155 slices of a raw BraTS volume): a stage of an ``n``-voxel
    input has ``ceil(n / stride)`` voxels. The head pools the last stage over space (``head_pooling``), so the
    classifier does not depend on the input size.
    """

    def __init__(
        self,
        depth: int = 19,
        in_channels: int = 4,
        num_classes: int = 2,
        width_multiplier: float = 0.25,
        norm: str | tuple | None = "batch",
        head_hidden_dim: int | None = 512,
        dropout: float = 0.5,
        spatial_dims: int = 3,
        head_pooling: str = "avg",
    ) -> None:
        super().__init__()
        check_global_pooling(head_pooling, "VGG3D")
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG3D: depth={depth} is not a VGG configuration; use one of {sorted(VGG_CONFIGS)}.")
        if width_multiplier <= 0:
            raise ValueError(f"VGG3D: width_multiplier must be positive, got {width_multiplier}.")
        self.num_classes = num_classes
        self.feature_info: list[dict] = []

        stages: list[nn.Module] = []
        channels = in_channels
        for index, stage_widths in enumerate(VGG_CONFIGS[depth]):
            layers: list[nn.Module] = []
            for width in stage_widths:
                out_channels = _scale_width(width, width_multiplier)
                layers.append(
                    Convolution(
                        spatial_dims,
                        channels,
                        out_channels,
                        kernel_size=3,
                        act=("relu", {"inplace": True}),
                        norm=norm,
                        bias=norm is None,
                    )
                )
                channels = out_channels
            layers.append(Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2, ceil_mode=True))
            stages.append(nn.Sequential(*layers))
            self.feature_info.append({"num_chs": channels, "reduction": 2 ** (index + 1), "module": f"stages.{index}"})
        self.stages = nn.ModuleList(stages)
        self.head_pooling = head_pooling
        self.num_features = pooled_width(channels, head_pooling)

        self.classifier: nn.Module
        if num_classes == 0:
            self.classifier = nn.Identity()
        elif head_hidden_dim is None:
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))
        else:
            self.classifier = nn.Sequential(
                nn.Linear(self.num_features, head_hidden_dim),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(head_hidden_dim, num_classes),
            )
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's VGG initialisation: He for convolutions, small normal for the classifier.
        for module in self.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The five stage outputs, ``[B, num_chs, ceil(X / reduction), ...]`` each (see ``feature_info``)."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_head(self, features: list[Tensor], pre_logits: bool = False) -> Tensor:
        """Logits from the stage features (only the last stage is used).

        Args:
            features: the output of :meth:`forward_features`.
            pre_logits: return the globally pooled last stage ``[B, num_features]`` instead of the logits.
        """
        pooled = global_pool(features[-1], self.head_pooling)
        return pooled if pre_logits else self.classifier(pooled)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` (pooled features ``[B, num_features]`` when ``num_classes=0``)."""
        return self.forward_head(self.forward_features(x))


# Tiny configuration: widths 4, 8, 16, 32, 32 on 16^3 inputs (the last two stages are 1^3 thanks to ceil_mode).
_TINY_KWARGS = {"width_multiplier": 1 / 16, "head_hidden_dim": 16}
_TINY_INPUT = (4, 16, 16, 16)
_DEFAULT_INPUT = (4, 128, 128, 128)


@register_model(
    "vgg11_3d",
    tiny_kwargs=_TINY_KWARGS,
    tiny_input_shape=_TINY_INPUT,
    default_input_shape=_DEFAULT_INPUT,
    role="teacher",
)
def vgg11_3d(**kwargs) -> VGG3D:
    """3D VGG11 with batch norm (see :class:`VGG3D` for the arguments)."""
    return VGG3D(depth=11, **kwargs)


@register_model(
    "vgg13_3d",
    tiny_kwargs=_TINY_KWARGS,
    tiny_input_shape=_TINY_INPUT,
    default_input_shape=_DEFAULT_INPUT,
    role="teacher",
)
def vgg13_3d(**kwargs) -> VGG3D:
    """3D VGG13 with batch norm (see :class:`VGG3D` for the arguments)."""
    return VGG3D(depth=13, **kwargs)


@register_model(
    "vgg16_3d",
    tiny_kwargs=_TINY_KWARGS,
    tiny_input_shape=_TINY_INPUT,
    default_input_shape=_DEFAULT_INPUT,
    role="teacher",
)
def vgg16_3d(**kwargs) -> VGG3D:
    """3D VGG16 with batch norm (see :class:`VGG3D` for the arguments)."""
    return VGG3D(depth=16, **kwargs)


@register_model(
    "vgg19_3d",
    tiny_kwargs=_TINY_KWARGS,
    tiny_input_shape=_TINY_INPUT,
    default_input_shape=_DEFAULT_INPUT,
    role="teacher",
)
def vgg19_3d(**kwargs) -> VGG3D:
    """3D VGG19 with batch norm, the seed's teacher backbone (see :class:`VGG3D` for the arguments)."""
    return VGG3D(depth=19, **kwargs)
