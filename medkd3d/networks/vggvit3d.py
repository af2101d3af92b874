"""The seed's hybrid teacher: a 3D VGG (local, multi-resolution) and a 3D ViT (global context), fused.

Both branches read the input volume in parallel. With ``msgff=True`` the chosen VGG stages and the ViT's
patch-token map (one more scale, stride ``patch_size``, already globally contextualised) go through
:class:`~medkd3d.networks.msgff.MultiScaleGeometricFeatureFusion`; its fused vector is concatenated with the
ViT's normalised class token and classified. With ``msgff=False`` the model is the seed's baseline: the
globally averaged last VGG stage concatenated with the ViT class token.

Feature interface. ``forward_features`` returns the five VGG stage outputs (strides 2..32), the ViT's last
patch-token map (stride ``patch_size``) and the ViT class token ``[B, C, 1, 1, 1]`` (stride: the whole volume).
Everything after that - MSGFF, the concatenation and the classifier - is the head, so
``forward(x) == forward_head(forward_features(x))`` and feature distillation can tap any scale at its native
resolution.

Size. The defaults are the seed's teacher lifted to 3D: a full-width VGG19 and a ViT-B/16 (768-wide tokens,
12 blocks, 12 heads), about 160M parameters and 1.6 TFLOPs per 128^3 volume - the "large teacher" the students
are distilled from (the 3D EfficientNet-B0 student has 97% fewer parameters and needs ~240x fewer FLOPs).
One float32 training step at 128^3, batch 1, peaked at 5.8 GB on the CPU (about 4 GB of it activations, the
rest weights, gradients and the framework); AdamW adds 1.3 GB of state. Batch 2 therefore fits a 16 GB GPU, more
easily with AMP (on by default in the bundles on CUDA; GPU memory itself not measured here). Smaller teachers are one override away (``width_multiplier``, ``vit_hidden_size``, ``vit_layers``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medkd3d.networks.msgff import MultiScaleGeometricFeatureFusion
from medkd3d.networks.readout import readout_stages, stage_readout
from medkd3d.networks.registry import register_model
from medkd3d.networks.vgg3d import VGG3D
from medkd3d.networks.vit3d import ViT3D

__all__ = ["VGGViT3D", "vggvit3d"]


class VGGViT3D(nn.Module):
    """VGG + ViT hybrid teacher with optional Multi-Scale Geometric Feature Fusion.

    Args:
        in_channels: input channels.
        num_classes: number of logits.
        img_size: input spatial size (the ViT's position embedding is built for it).
        vgg_depth: VGG configuration (11, 13, 16, 19; the seed uses 19).
        width_multiplier: VGG width multiplier (see :mod:`medkd3d.networks.vgg3d`).
        vgg_norm: normalisation of the VGG convolutions (see :class:`~medkd3d.networks.vgg3d.VGG3D`).
        patch_size: ViT patch edge; must divide ``img_size``.
        vit_hidden_size: ViT token width.
        vit_layers: ViT blocks.
        vit_heads: ViT attention heads.
        pos_embed_type: ViT position embedding (``"learnable"`` or ``"sincos"``; see :class:`ViT3D`).
        msgff: fuse with MSGFF; ``False`` gives the seed's plain concatenation baseline.
        fusion: MSGFF fusion mode (``"concat"``, ``"sum"``, ``"attention"``, ``"gated"``).
        msgff_stages: indices (0..4) of the VGG stages MSGFF fuses, besides the ViT token map.
        msgff_dim: MSGFF token width.
        msgff_heads: MSGFF attention heads.
        msgff_layers: MSGFF cross-scale transformer blocks.
        max_tokens_per_axis: MSGFF pooling bound per axis and scale.
        dropout_rate: dropout in the ViT and before the classifier.
        spatial_dims: 3 for volumes.
        readout_stage: add a :class:`~medkd3d.networks.readout.CompartmentReadout` on this VGG stage, or a pair
            ``[fine, coarse]`` of VGG stages for a compartment decoder (``None``: none). Once fitted (after
            training, on the training subjects), its logits replace the classifier's; before, the network is the
            plain teacher.

    Raises:
        ValueError: if an entry of ``msgff_stages`` or ``readout_stage`` is not a VGG stage index (or the branches
            reject their arguments).
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 2,
        img_size: Sequence[int] | int = 128,
        vgg_depth: int = 19,
        width_multiplier: float = 1.0,
        vgg_norm: str | tuple | None = "batch",
        patch_size: int = 16,
        vit_hidden_size: int = 768,
        vit_layers: int = 12,
        vit_heads: int = 12,
        pos_embed_type: str = "learnable",
        msgff: bool = True,
        fusion: str = "gated",
        msgff_stages: Sequence[int] = (2, 3, 4),
        msgff_dim: int = 256,
        msgff_heads: int = 4,
        msgff_layers: int = 1,
        max_tokens_per_axis: int = 8,
        dropout_rate: float = 0.1,
        spatial_dims: int = 3,
        readout_stage: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.vgg = VGG3D(
            depth=vgg_depth,
            in_channels=in_channels,
            num_classes=0,
            width_multiplier=width_multiplier,
            norm=vgg_norm,
            spatial_dims=spatial_dims,
        )
        self.vit = ViT3D(
            in_channels=in_channels,
            num_classes=0,
            img_size=img_size,
            patch_size=patch_size,
            hidden_size=vit_hidden_size,
            num_layers=vit_layers,
            num_heads=vit_heads,
            pos_embed_type=pos_embed_type,
            dropout_rate=dropout_rate,
            spatial_dims=spatial_dims,
        )
        num_vgg_stages = len(self.vgg.feature_info)
        self.msgff_stages = tuple(msgff_stages)
        if msgff and (not self.msgff_stages or any(not 0 <= s < num_vgg_stages for s in self.msgff_stages)):
            raise ValueError(
                f"VGGViT3D: msgff_stages={self.msgff_stages} must be non-empty VGG stage indices in "
                f"[0, {num_vgg_stages - 1}]."
            )
        self.msgff: MultiScaleGeometricFeatureFusion | None = None
        if msgff:
            fused_info = [self.vgg.feature_info[s] for s in self.msgff_stages] + [self.vit.feature_info[0]]
            self.msgff = MultiScaleGeometricFeatureFusion(
                in_channels=[info["num_chs"] for info in fused_info],
                feature_sizes=[[math.ceil(n / info["reduction"]) for n in self.vit.img_size] for info in fused_info],
                dim=msgff_dim,
                fusion=fusion,
                num_heads=msgff_heads,
                num_layers=msgff_layers,
                max_tokens_per_axis=max_tokens_per_axis,
            )
            local_width = self.msgff.out_channels
        else:
            local_width = self.vgg.num_features
        self.num_features = local_width + vit_hidden_size
        self.head = nn.Sequential(
            nn.LayerNorm(self.num_features), nn.Dropout(dropout_rate), nn.Linear(self.num_features, num_classes)
        )

        self._num_vgg_features = num_vgg_stages
        self.feature_info = [{**info, "module": f"vgg.{info['module']}"} for info in self.vgg.feature_info]
        self.feature_info += [{**info, "module": f"vit.{info['module']}"} for info in self.vit.feature_info]
        if any(not 0 <= s < num_vgg_stages for s in readout_stages(readout_stage)):
            raise ValueError(
                f"VGGViT3D: readout_stage {readout_stage} must be a VGG stage in [0, {num_vgg_stages - 1}] "
                "(or a pair of them)."
            )
        self.readout_stage = readout_stage
        self.readout_indices = list(readout_stages(readout_stage))  # a typed list for TorchScript
        self.readout = stage_readout(self.feature_info, readout_stage, num_classes, spatial_dims)

    @property
    def last_gates(self) -> Tensor | None:
        """MSGFF's ``[B, S]`` scale weights of the last eager forward (scales: ``msgff_stages`` then the ViT)."""
        return None if self.msgff is None else self.msgff.last_gates

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """VGG stages (5), ViT patch-token map, ViT class token - see the module docstring and ``feature_info``."""
        return self.vgg.forward_features(x) + self.vit.forward_features(x)

    def forward_head(self, features: list[Tensor]) -> Tensor:
        """Logits from :meth:`forward_features`' output: MSGFF (or pooling), concatenation, classifier."""
        vgg_features = features[: self._num_vgg_features]
        # Indexed, not unpacked: TorchScript cannot unpack a list of unknown length.
        vit_token_map, vit_class_token = features[self._num_vgg_features], features[self._num_vgg_features + 1]
        context = self.vit.forward_head([vit_class_token], pre_logits=True)
        if self.msgff is None:
            local = self.vgg.forward_head(vgg_features, pre_logits=True)
        else:
            local = self.msgff([vgg_features[s] for s in self.msgff_stages] + [vit_token_map])
            assert isinstance(local, Tensor)  # without return_gates MSGFF returns a tensor; narrows it for TorchScript
        logits = self.head(torch.cat((local, context), dim=1))
        if self.readout is None:
            return logits
        return self.readout.replace(logits, [features[i] for i in self.readout_indices])

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``[B, num_classes]``."""
        return self.forward_head(self.forward_features(x))


@register_model(
    "vggvit3d",
    tiny_kwargs={
        "img_size": 32,
        "vgg_depth": 11,
        "width_multiplier": 1 / 16,
        "patch_size": 8,
        "vit_hidden_size": 24,
        "vit_layers": 1,
        "vit_heads": 2,
        "msgff_dim": 16,
        "msgff_heads": 2,
        "max_tokens_per_axis": 2,
    },
    tiny_input_shape=(4, 32, 32, 32),
    default_input_shape=(4, 128, 128, 128),
    role="teacher",
)
def vggvit3d(in_channels: int = 4, num_classes: int = 2, img_size: Sequence[int] | int = 128, **kwargs) -> VGGViT3D:
    """VGG19 (full width) + ViT-B (16^3 patches, 768 wide, 12 blocks) fused by gated MSGFF (see :class:`VGGViT3D`)."""
    return VGGViT3D(in_channels=in_channels, num_classes=num_classes, img_size=img_size, **kwargs)
