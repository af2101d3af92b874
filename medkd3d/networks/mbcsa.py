"""MBCSA block (Mobile Channel-Spatial Attention) and its CBAM attention, generic in ``spatial_dims``.

MBCSA is the convolutional block of HDKD (seed 001): an MBConv inverted bottleneck whose squeeze-and-excitation
module is replaced by CBAM (channel attention followed by spatial attention), with GELU inside the channel MLP.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Conv, Pool
from torch import nn

__all__ = ["CBAM", "ChannelAttention", "MBCSABlock", "SpatialAttention"]


class ChannelAttention(nn.Module):
    """CBAM channel attention ``M_C(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))``, GELU in the shared MLP.

    Args:
        channels: number of input channels ``C``.
        reduction: the MLP shrinks ``C`` to ``max(C // reduction, 1)`` hidden units.
        spatial_dims: number of spatial dimensions of the input.
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_dims: int = 3) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.spatial_dims = spatial_dims
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Channel attention weights.

        Args:
            x: feature map ``[B, C, *spatial]``.

        Returns:
            weights in (0, 1) of shape ``[B, C, 1, ..., 1]``, broadcastable over ``x``.
        """
        flat = x.flatten(2)
        weights = torch.sigmoid(self.mlp(flat.mean(dim=-1)) + self.mlp(flat.amax(dim=-1)))
        return weights.reshape(weights.shape + (1,) * self.spatial_dims)


class SpatialAttention(nn.Module):
    """CBAM spatial attention ``M_S(F) = sigmoid(Conv([AvgPool_c(F), MaxPool_c(F)]))`` (pooling over channels).

    Args:
        kernel_size: kernel of the convolution over the two pooled maps (7 in CBAM and HDKD); must be odd.
        spatial_dims: number of spatial dimensions of the input.

    Raises:
        ValueError: if ``kernel_size`` is even (the map would shift by half a voxel).
    """

    def __init__(self, kernel_size: int = 7, spatial_dims: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"SpatialAttention: kernel_size must be odd to keep the map aligned, got {kernel_size}.")
        self.conv = Conv[Conv.CONV, spatial_dims](2, 1, kernel_size=kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial attention weights.

        Args:
            x: feature map ``[B, C, *spatial]``.

        Returns:
            weights in (0, 1) of shape ``[B, 1, *spatial]``, broadcastable over ``x``.
        """
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional Block Attention Module: ``F' = M_S(M_C(F) * F) * (M_C(F) * F)``.

    Args:
        channels: number of input channels.
        reduction: channel-MLP reduction ratio.
        spatial_kernel_size: kernel size of the spatial-attention convolution.
        spatial_dims: number of spatial dimensions of the input.
    """

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel_size: int = 7, spatial_dims: int = 3) -> None:
        super().__init__()
        self.channel_attention = ChannelAttention(channels, reduction, spatial_dims)
        self.spatial_attention = SpatialAttention(spatial_kernel_size, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel_attention(x)
        return x * self.spatial_attention(x)


class MBCSABlock(nn.Module):
    """Mobile Channel-Spatial Attention block: MBConv with CBAM in place of squeeze-and-excitation.

    ``1x1 expand (BN, GELU) -> kxk depthwise (BN, GELU) -> CBAM -> 1x1 project (BN)`` plus a residual.
    A downsampling block strides its expansion conv, as HDKD's reference code (after CoAtNet) does: the
    expanded tensor then exists only at the output resolution, 8x fewer voxels in 3D, which is where MBConv
    blocks spend their time at volume resolutions. Its residual is average-pooled over ``stride``-sized windows
    (``ceil_mode`` gives the strided conv's output size for odd sizes too; the reference code's 3x3x3 max pool
    is 5x slower on CPU in 3D) and, like any residual that changes width, projected by a 1x1 conv with BN; every
    block therefore stays residual.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: downsampling factor (2 in the first block of a stage, else 1).
        expansion: width multiplier of the inverted bottleneck (4 in HDKD).
        kernel_size: depthwise kernel size.
        reduction: CBAM channel-MLP reduction ratio.
        spatial_kernel_size: CBAM spatial-attention kernel size.
        spatial_dims: number of spatial dimensions.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        expansion: int = 4,
        kernel_size: int = 3,
        reduction: int = 16,
        spatial_kernel_size: int = 7,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        hidden = in_channels * expansion
        norm_act = {"act": "gelu", "norm": "batch", "bias": False}
        self.expand = Convolution(spatial_dims, in_channels, hidden, strides=stride, kernel_size=1, **norm_act)
        self.depthwise = Convolution(spatial_dims, hidden, hidden, kernel_size=kernel_size, groups=hidden, **norm_act)
        self.attention = CBAM(hidden, reduction, spatial_kernel_size, spatial_dims)
        self.project = Convolution(
            spatial_dims, hidden, out_channels, kernel_size=1, act=None, norm="batch", bias=False
        )

        shortcut: list[nn.Module] = []
        if stride > 1:
            shortcut.append(Pool[Pool.AVG, spatial_dims](stride, stride, ceil_mode=True, count_include_pad=False))
        if in_channels != out_channels:
            shortcut.append(
                Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, act=None, norm="batch", bias=False)
            )
        self.shortcut = nn.Sequential(*shortcut) if shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.project(self.attention(self.depthwise(self.expand(x))))
