"""HDKD (seed 001): a pure-CNN MBCSA teacher and a hybrid student that shares its convolutional stages.

The teacher is ``stem -> 3 stages of MBCSA blocks -> pooled linear head``. The student repeats the same stem
and stages with fewer blocks but the same channels and strides, so its features (the stem's and each stage's, as
timm lists a stride-2 stem level first) have exactly the teacher's shapes and feature distillation needs no
adapter. On top of the last stage the student runs DFLT, a DeiT-style transformer over patches of that feature map
with a class token and a distillation token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv
from torch import nn

from medkd3d.networks.mbcsa import MBCSABlock
from medkd3d.networks.pooling import check_global_pooling, global_pool, pooled_width
from medkd3d.networks.readout import readout_stages, stage_readout
from medkd3d.networks.registry import register_model
from medkd3d.networks.vit3d import TransformerBlock

__all__ = ["DFLT", "HDKDStudent", "HDKDTeacher", "hdkd_student3d", "hdkd_teacher3d"]


def scale_channels(channels: Sequence[int], width_multiplier: float, divisor: int = 8) -> tuple[int, ...]:
    """Scale stage widths by ``width_multiplier``, rounding to a multiple of ``divisor`` (at least ``divisor``)."""
    return tuple(max(divisor, round(c * width_multiplier / divisor) * divisor) for c in channels)


class _MBCSABackbone(nn.Module):
    """Stem plus stages of MBCSA blocks: the convolutional structure HDKD teacher and student share.

    The stem halves the resolution (3x3 conv, BN, GELU) and the first block of every stage halves it again, so
    MBCSA stage ``i`` has stride ``2 ** (i + 2)`` relative to the input. ``feature_info`` lists the stem's output
    first (stride 2, as timm's CNNs list their stem level), then the stages: a readout can decode the compartments
    at the stem's resolution, and a student that reuses it learns the teacher's stem by feature distillation.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        depths: Sequence[int],
        width_multiplier: float,
        stem_channels: int | None,
        expansion: int,
        kernel_size: int,
        reduction: int,
        spatial_kernel_size: int,
        spatial_dims: int,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if len(channels) != len(depths):
            raise ValueError(
                f"{name}: channels {tuple(channels)} and depths {tuple(depths)} must list one value per stage."
            )
        if any(d < 1 for d in depths):
            raise ValueError(f"{name}: every stage needs at least one block, got depths {tuple(depths)}.")
        widths = scale_channels(channels, width_multiplier)
        stem_channels = stem_channels or max(8, widths[0] // 2)
        # Everything the student needs to rebuild exactly this convolutional structure (see HDKDStudent.from_teacher).
        self.backbone_config: dict[str, Any] = {
            "in_channels": in_channels,
            "channels": widths,
            "width_multiplier": 1.0,
            "stem_channels": stem_channels,
            "expansion": expansion,
            "kernel_size": kernel_size,
            "reduction": reduction,
            "spatial_kernel_size": spatial_kernel_size,
            "spatial_dims": spatial_dims,
        }
        self.in_channels = in_channels
        self.spatial_dims = spatial_dims
        self.stem = Convolution(
            spatial_dims, in_channels, stem_channels, strides=2, kernel_size=3, act="gelu", norm="batch", bias=False
        )
        stages = []
        prev = stem_channels
        for width, depth in zip(widths, depths):
            blocks = [
                MBCSABlock(
                    prev if i == 0 else width,
                    width,
                    stride=2 if i == 0 else 1,
                    expansion=expansion,
                    kernel_size=kernel_size,
                    reduction=reduction,
                    spatial_kernel_size=spatial_kernel_size,
                    spatial_dims=spatial_dims,
                )
                for i in range(depth)
            ]
            stages.append(nn.Sequential(*blocks))
            prev = width
        self.stages = nn.ModuleList(stages)
        self.feature_info = [{"num_chs": stem_channels, "reduction": 2, "module": "stem"}] + [
            {"num_chs": width, "reduction": 2 ** (i + 2), "module": f"stages.{i}"} for i, width in enumerate(widths)
        ]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stem's output ``[B, C_stem, *spatial / 2]``, then each stage's ``[B, C_i, *spatial / 2**(i+2)]``: one per
        entry of ``feature_info``."""
        x = self.stem(x)
        features = [x]
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class HDKDTeacher(_MBCSABackbone):
    """HDKD convolutional teacher: MBCSA stages, global pooling and a linear classifier.

    Args:
        in_channels: input channels (4 MRI modalities).
        num_classes: number of classes.
        channels: stage widths before ``width_multiplier`` (HDKD: 64, 128, 192).
        depths: MBCSA blocks per stage (HDKD teacher: 6, 6, 9).
        width_multiplier: scales ``channels`` (rounded to multiples of 8).
        stem_channels: stem width; defaults to half the first stage width.
        expansion: inverted-bottleneck expansion of every MBCSA block.
        kernel_size: depthwise kernel size.
        reduction: CBAM channel-MLP reduction ratio.
        spatial_kernel_size: CBAM spatial-attention kernel size.
        dropout_rate: dropout before the classifier.
        spatial_dims: 3 for volumes, 2 for slices.
        head_pooling: global pooling of the last stage, one of :data:`~medkd3d.networks.pooling.GLOBAL_POOLINGS`
            (HDKD: ``"avg"``; ``"avgmax"`` also passes each channel's strongest response, e.g. a small lesion).
        readout_stage: add a :class:`~medkd3d.networks.readout.CompartmentReadout` on this stage, or a pair
            ``[fine, coarse]`` of stages for a compartment decoder (``None``: none). Once fitted (after training, on
            the training subjects), its logits replace the pooled classifier's; before, the network is the plain
            teacher.

    Raises:
        ValueError: if ``channels`` and ``depths`` differ in length, a stage has no block, ``head_pooling``
            is unknown, or ``readout_stage`` is not a stage.
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 2,
        channels: Sequence[int] = (64, 128, 192),
        depths: Sequence[int] = (6, 6, 9),
        width_multiplier: float = 1.0,
        stem_channels: int | None = None,
        expansion: int = 4,
        kernel_size: int = 3,
        reduction: int = 16,
        spatial_kernel_size: int = 7,
        dropout_rate: float = 0.0,
        spatial_dims: int = 3,
        head_pooling: str = "avg",
        readout_stage: int | Sequence[int] | None = None,
    ) -> None:
        check_global_pooling(head_pooling, "HDKDTeacher")
        super().__init__(
            in_channels=in_channels,
            channels=channels,
            depths=depths,
            width_multiplier=width_multiplier,
            stem_channels=stem_channels,
            expansion=expansion,
            kernel_size=kernel_size,
            reduction=reduction,
            spatial_kernel_size=spatial_kernel_size,
            spatial_dims=spatial_dims,
        )
        self.num_classes = num_classes
        self.dropout = nn.Dropout(dropout_rate)
        self.head_pooling = head_pooling
        self.classifier = nn.Linear(pooled_width(self.feature_info[-1]["num_chs"], head_pooling), num_classes)
        self.readout_stage = readout_stage
        self.readout_indices = list(readout_stages(readout_stage))  # a typed list for TorchScript
        self.readout = stage_readout(self.feature_info, readout_stage, num_classes, spatial_dims)

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits ``[B, num_classes]``: the fitted readout's if there is one, else the pooled last stage's."""
        logits = self.classifier(self.dropout(global_pool(features[-1], self.head_pooling)))
        if self.readout is None:
            return logits
        return self.readout.replace(logits, [features[i] for i in self.readout_indices])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class DFLT(nn.Module):
    """Distilled Feature-Level Transformer: DeiT over patches of a CNN feature map with two tokens.

    Patches are embedded by a strided convolution. Their position is encoded by a depthwise convolution over the
    patch grid (conditional position encoding, as in CPVT) rather than a learned table, so the module works at any
    input size and needs no ``img_size`` argument. A class token and a distillation token join the patch tokens;
    after the transformer each token feeds its own linear head.

    Args:
        in_channels: channels of the incoming feature map.
        num_classes: number of classes of both heads.
        patch_size: patch edge in feature-map voxels (HDKD: 2).
        embed_dim: token width (HDKD: 256).
        depth: number of transformer blocks (HDKD: 3).
        num_heads: attention heads; must divide ``embed_dim`` (HDKD: 8).
        mlp_ratio: hidden width of the transformer MLP relative to ``embed_dim``.
        dropout_rate: dropout inside the transformer blocks.
        spatial_dims: number of spatial dimensions of the feature map.

    Raises:
        ValueError: if ``embed_dim`` is not divisible by ``num_heads``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        patch_size: int = 2,
        embed_dim: int = 256,
        depth: int = 3,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout_rate: float = 0.0,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"DFLT: embed_dim={embed_dim} must be divisible by num_heads={num_heads}.")
        conv = Conv[Conv.CONV, spatial_dims]
        self.patch_embed = conv(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.position = conv(embed_dim, embed_dim, kernel_size=3, padding=1, groups=embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.dist_token, std=0.02)
        self.blocks = nn.Sequential(
            *(TransformerBlock(embed_dim, num_heads, mlp_ratio, dropout_rate=dropout_rate) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self.head_dist = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer on a feature map.

        Args:
            x: feature map ``[B, C, *spatial]``.

        Returns:
            ``(cls_logits, dist_logits)``, each ``[B, num_classes]``.
        """
        patches = self.patch_embed(x)
        patches = patches + self.position(patches)
        tokens = patches.flatten(2).transpose(1, 2)
        batch = tokens.shape[0]
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), self.dist_token.expand(batch, -1, -1), tokens], 1)
        tokens = self.norm(self.blocks(tokens))
        return self.head(tokens[:, 0]), self.head_dist(tokens[:, 1])


class HDKDStudent(_MBCSABackbone):
    """HDKD hybrid student: the teacher's stem and stages with fewer blocks, then DFLT.

    ``forward_features`` returns the convolutional stage outputs, which have the teacher's shapes whenever both
    are built with the same channels, width multiplier, stem and input (see :meth:`from_teacher`). Training uses
    :meth:`forward_heads` (class-token and distillation-token logits); ``forward`` returns their mean, the
    inference output of DeiT and HDKD.

    Args:
        in_channels: input channels.
        num_classes: number of classes.
        channels: stage widths before ``width_multiplier``; keep them equal to the teacher's.
        depths: MBCSA blocks per stage (HDKD student: 2, 2, 3).
        width_multiplier: scales ``channels`` exactly as in :class:`HDKDTeacher`.
        stem_channels: stem width; defaults to half the first stage width.
        expansion: inverted-bottleneck expansion.
        kernel_size: depthwise kernel size.
        reduction: CBAM channel-MLP reduction ratio.
        spatial_kernel_size: CBAM spatial-attention kernel size.
        patch_size: DFLT patch edge, in voxels of the last stage.
        embed_dim: DFLT token width.
        transformer_depth: DFLT transformer blocks.
        num_heads: DFLT attention heads.
        mlp_ratio: DFLT MLP ratio.
        dropout_rate: DFLT dropout.
        spatial_dims: 3 for volumes, 2 for slices.
        readout_stage: add a :class:`~medkd3d.networks.readout.CompartmentReadout` on this stage, or a pair
            ``[fine, coarse]`` for a compartment decoder, as its teacher's (``None``: none), whose head is the
            teacher's, copied and frozen (:class:`~medkd3d.engines.FitCompartmentReadout` with
            ``head_from``). Once fitted (after training, on the training subjects), its logits replace DFLT's.

    Raises:
        ValueError: if ``channels`` and ``depths`` differ in length, a stage has no block, ``embed_dim`` is not
            divisible by ``num_heads``, or ``readout_stage`` is not a stage.
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 2,
        channels: Sequence[int] = (64, 128, 192),
        depths: Sequence[int] = (2, 2, 3),
        width_multiplier: float = 1.0,
        stem_channels: int | None = None,
        expansion: int = 4,
        kernel_size: int = 3,
        reduction: int = 16,
        spatial_kernel_size: int = 7,
        patch_size: int = 2,
        embed_dim: int = 256,
        transformer_depth: int = 3,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout_rate: float = 0.0,
        spatial_dims: int = 3,
        readout_stage: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            channels=channels,
            depths=depths,
            width_multiplier=width_multiplier,
            stem_channels=stem_channels,
            expansion=expansion,
            kernel_size=kernel_size,
            reduction=reduction,
            spatial_kernel_size=spatial_kernel_size,
            spatial_dims=spatial_dims,
        )
        self.num_classes = num_classes
        self.dflt = DFLT(
            in_channels=self.feature_info[-1]["num_chs"],
            num_classes=num_classes,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=transformer_depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            dropout_rate=dropout_rate,
            spatial_dims=spatial_dims,
        )
        self.readout_stage = readout_stage
        self.readout_indices = list(readout_stages(readout_stage))  # a typed list for TorchScript
        self.readout = stage_readout(self.feature_info, readout_stage, num_classes, spatial_dims)
        if self.readout is not None:
            # the head is the teacher's, adopted when training starts, and no loss reaches it: frozen from the start,
            # so that DistributedDataParallel does not wait for its gradients
            self.readout.predictor.requires_grad_(False)

    @classmethod
    def from_teacher(cls, teacher: HDKDTeacher, depths: Sequence[int] = (2, 2, 3), **kwargs: Any) -> HDKDStudent:
        """Build a student whose stage features match ``teacher``'s shapes exactly.

        Args:
            teacher: the HDKD teacher to mirror (stem, widths, block hyper-parameters, input channels, classes).
            depths: student blocks per stage; must list one value per teacher stage.
            kwargs: further student arguments (DFLT settings); structural arguments are taken from the teacher.

        Returns:
            The student, freshly initialised.

        Raises:
            ValueError: if ``kwargs`` overrides a structural argument the teacher fixes.
        """
        clashes = sorted(set(kwargs) & {*teacher.backbone_config, "num_classes"})
        if clashes:
            raise ValueError(
                f"HDKDStudent.from_teacher: {clashes} are taken from the teacher so the stage features match; "
                "remove them or build HDKDStudent(...) directly."
            )
        return cls(**teacher.backbone_config, depths=depths, num_classes=teacher.num_classes, **kwargs)

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cls_logits, dist_logits)``, each ``[B, num_classes]``, for distillation training."""
        return self.dflt(self.forward_features(x)[-1])

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The fitted readout's logits if there is one, else the mean of DFLT's class- and distillation-token
        logits on the last stage feature."""
        cls_logits, dist_logits = self.dflt(features[-1])
        logits = (cls_logits + dist_logits) / 2
        if self.readout is None:
            return logits
        return self.readout.replace(logits, [features[i] for i in self.readout_indices])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_TINY_STAGES = {"channels": (8, 16, 16), "depths": (1, 1, 2)}


@register_model(
    "hdkd_teacher3d",
    tiny_kwargs=_TINY_STAGES,
    tiny_input_shape=(4, 16, 16, 16),
    default_input_shape=(4, 128, 128, 128),
    role="teacher",
)
def hdkd_teacher3d(**kwargs: Any) -> HDKDTeacher:
    """HDKD MBCSA teacher for volumes (defaults: widths 64/128/192, 6/6/9 blocks)."""
    return HDKDTeacher(spatial_dims=3, **kwargs)


@register_model(
    "hdkd_student3d",
    tiny_kwargs={
        **_TINY_STAGES,
        "depths": (1, 1, 1),
        "patch_size": 1,
        "embed_dim": 16,
        "transformer_depth": 1,
        "num_heads": 2,
    },
    tiny_input_shape=(4, 16, 16, 16),
    default_input_shape=(4, 128, 128, 128),
)
def hdkd_student3d(**kwargs: Any) -> HDKDStudent:
    """HDKD hybrid student for volumes (defaults: the teacher's widths, 2/2/3 blocks, 3-layer DFLT)."""
    return HDKDStudent(spatial_dims=3, **kwargs)
