"""MONAI EfficientNet (B0-B7) with the medkd3d feature interface, for 3D students.

:class:`EfficientNet3D` subclasses MONAI's ``EfficientNet`` and builds it exactly as ``EfficientNetBN`` does
(same block table, same coefficients, same parameter names, so MONAI checkpoints load unchanged). It only adds
``forward_features``/``forward_head``/``feature_info``, splitting MONAI's own forward at the stage outputs, so
features and logits come from one pass.

Export note: MONAI pads "same" statically, with paddings computed at construction for ``image_size`` (224 for
B0 ... 600 for B7 unless overridden). The pads are constants, so tracing and ONNX export work for any input
size and a dynamic batch; for input sizes whose per-stage sizes differ in parity from ``image_size`` the padding
is off TensorFlow's "same" by one voxel on one side (shapes are unaffected). Pass ``image_size`` equal to the
training size to get exact "same" padding there. Stage 5's 5x5x5 kernel needs an input of at least 32 voxels
per side.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets.efficientnet import EfficientNet, efficientnet_params
from torch import nn

from medkd3d.networks.pooling import check_global_pooling, global_pool, pooled_width
from medkd3d.networks.registry import register_model

__all__ = ["EFFICIENTNET_BLOCKS_ARGS", "EfficientNet3D"]

#: Block table of EfficientNet-B0, as MONAI's ``EfficientNetBN`` defines it (B1-B7 scale it by coefficients).
EFFICIENTNET_BLOCKS_ARGS = (
    "r1_k3_s11_e1_i32_o16_se0.25",
    "r2_k3_s22_e6_i16_o24_se0.25",
    "r2_k5_s22_e6_i24_o40_se0.25",
    "r3_k3_s22_e6_i40_o80_se0.25",
    "r3_k5_s11_e6_i80_o112_se0.25",
    "r4_k5_s22_e6_i112_o192_se0.25",
    "r1_k3_s11_e6_i192_o320_se0.25",
)


class EfficientNet3D(EfficientNet):
    """MONAI EfficientNet-B0...B7 exposing multi-scale stage features.

    With default arguments the network is identical to
    ``monai.networks.nets.EfficientNetBN(model_name, pretrained=False, spatial_dims=spatial_dims, ...)``.
    ``forward_features`` returns the outputs of the stages that end at a new stride (strides 2, 4, 8, 16, 32: the
    same stages as MONAI's ``EfficientNetBNFeatures``); ``forward_head`` applies MONAI's head (1x1 conv, BN, swish,
    pooling, dropout, linear) to the last one; ``head_pooling`` can add global max pooling to it.

    Args:
        model_name: ``"efficientnet-b0"`` ... ``"efficientnet-b7"`` (any key of MONAI's ``efficientnet_params``).
        spatial_dims: 3 for volumes.
        in_channels: input channels (4 MRI modalities).
        num_classes: number of classes.
        width_multiplier: extra factor on the model's width coefficient (1.0 keeps the published width; small
            values give tiny test models).
        depth_multiplier: extra factor on the model's depth coefficient (1.0 keeps the published depth; the
            tiny test configurations use the B0 depth for every variant so the contract tests stay fast).
        image_size: size used to precompute MONAI's static "same" padding; defaults to the model's table value.
        dropout_rate: dropout before the classifier; defaults to the model's table value.
        drop_connect_rate: stochastic-depth rate; defaults to the model's table value.
        norm: normalisation layer, as in MONAI.
        head_pooling: global pooling before the classifier, one of
            :data:`~medkd3d.networks.pooling.GLOBAL_POOLINGS`; ``"avg"`` is MONAI's. ``"avgmax"`` also passes the
            strongest response of every channel (a small lesion) to the classifier, which doubles its input.

    Raises:
        ValueError: if ``model_name`` or ``head_pooling`` is unknown.
    """

    def __init__(
        self,
        model_name: str = "efficientnet-b0",
        spatial_dims: int = 3,
        in_channels: int = 4,
        num_classes: int = 2,
        width_multiplier: float = 1.0,
        depth_multiplier: float = 1.0,
        image_size: int | None = None,
        dropout_rate: float | None = None,
        drop_connect_rate: float | None = None,
        norm: str | tuple = ("batch", {"eps": 1e-3, "momentum": 0.01}),
        head_pooling: str = "avg",
    ) -> None:
        check_global_pooling(head_pooling, "EfficientNet3D")
        if model_name not in efficientnet_params:
            raise ValueError(
                f"EfficientNet3D: unknown model_name {model_name!r}; choose one of {', '.join(efficientnet_params)}."
            )
        width, depth, table_size, table_dropout, table_drop_connect = efficientnet_params[model_name]
        super().__init__(
            blocks_args_str=list(EFFICIENTNET_BLOCKS_ARGS),
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            width_coefficient=width * width_multiplier,
            depth_coefficient=depth * depth_multiplier,
            dropout_rate=table_dropout if dropout_rate is None else dropout_rate,
            image_size=table_size if image_size is None else image_size,
            norm=norm,
            drop_connect_rate=table_drop_connect if drop_connect_rate is None else drop_connect_rate,
        )
        self.model_name = model_name
        self.head_pooling = head_pooling
        if head_pooling != "avg":
            self._fc = nn.Linear(pooled_width(self._fc.in_features, head_pooling), num_classes)
        # MONAI draws the classifier from U(-a, a), a = 1/sqrt(num_classes): with 2 classes and 1280 features the
        # first logits have a standard deviation near 9 and a cross-entropy near 7, from which training diverged.
        # A small normal start (as timm and torchvision heads do) gives logits near 0, a loss near log(num_classes).
        nn.init.normal_(self._fc.weight, 0.0, 0.01)
        nn.init.zeros_(self._fc.bias)
        # MONAI's extract_stacks lists i where stack i downsamples, plus len(stacks): the stacks just before
        # them end a stride, and their outputs are the stage features.
        self.feature_stacks = [i - 1 for i in self.extract_stacks if i > 0]
        self.feature_info = []
        reduction = 2  # the stem
        for i, block_args in enumerate(self._blocks_args):
            reduction *= block_args.stride
            if i in self.feature_stacks:
                self.feature_info.append(
                    {"num_chs": block_args.output_filters, "reduction": reduction, "module": f"_blocks.{i}"}
                )

    def prepare_for_export(self) -> None:
        """Swap MONAI's memory-efficient swish (a custom autograd function) for the plain one before export."""
        self.set_swish(memory_efficient=False)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs, one per ``feature_info`` entry, ``[B, C_i, *spatial / reduction_i]``."""
        x = self._swish(self._bn0(self._conv_stem(self._conv_stem_padding(x))))
        features = []
        for i, stack in enumerate(self._blocks):
            x = stack(x)
            if i in self.feature_stacks:
                features.append(x)
        return features

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, num_classes]`` from the last stage feature through MONAI's head."""
        x = self._swish(self._bn1(self._conv_head(self._conv_head_padding(features[-1]))))
        x = (
            self._avg_pooling(x).flatten(start_dim=1)
            if self.head_pooling == "avg"
            else global_pool(x, self.head_pooling)
        )
        return self._fc(self._dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _make_factory(variant: str) -> Any:
    def factory(**kwargs: Any) -> nn.Module:
        return EfficientNet3D(f"efficientnet-{variant}", spatial_dims=3, **kwargs)

    factory.__name__ = f"efficientnet3d_{variant}"
    factory.__doc__ = f"MONAI EfficientNet-{variant.upper()} for volumes with stage features (see EfficientNet3D)."
    return factory


for _variant in ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7"):
    _depth = efficientnet_params[f"efficientnet-{_variant}"][1]
    register_model(
        f"efficientnet3d_{_variant}",
        tiny_kwargs={"width_multiplier": 0.25, "depth_multiplier": 1.0 / _depth},
        tiny_input_shape=(4, 32, 32, 32),
        default_input_shape=(4, 128, 128, 128),
    )(_make_factory(_variant))
