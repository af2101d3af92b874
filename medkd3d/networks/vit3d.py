"""3D Vision Transformer (Dosovitskiy et al., 2021) returning raw logits, with the timm feature interface.

The patch embedding (3D convolution plus learnable, sin-cos or Fourier position embedding) is MONAI's
``PatchEmbeddingBlock``. The transformer blocks are written here rather than taken from MONAI's
``TransformerBlock``, which always creates a cross-attention ``LayerNorm`` that is unused without
cross-attention (parameters that never receive a gradient). Attention is spelled out as matmul + softmax,
which traces and exports to ONNX opset 17 (and on to TensorRT) without special operators.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import PatchEmbeddingBlock
from monai.utils import ensure_tuple_rep
from torch import Tensor, nn
from torch.nn import functional as F

from medkd3d.networks.registry import register_model

__all__ = ["Attention", "TransformerBlock", "ViT3D", "vit3d"]


class Attention(nn.Module):
    """Multi-head self-attention over a token sequence ``[B, N, dim]``.

    Args:
        dim: token width; must be divisible by ``num_heads``.
        num_heads: number of attention heads.
        qkv_bias: learn a bias in the query/key/value projection.
        dropout_rate: dropout on the attention weights and on the output projection.

    Raises:
        ValueError: if ``dim`` is not divisible by ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, dropout_rate: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim={dim} must be divisible by num_heads={num_heads}.")
        self.num_heads = num_heads
        self.attn_dropout_rate = dropout_rate
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout_rate)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        # [B, N, 3, heads, head_dim] -> 3 x [B, heads, N, head_dim]
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # softmax(q k^T / sqrt(head_dim)) v in PyTorch's fused kernel, which never writes the [B, heads, N, N]
        # weights to memory: a CPU training step of the default teacher's MSGFF (1,600 tokens) takes 0.6-0.7x the
        # time of the explicit product, short sequences neither gain nor lose; on a GPU every layer of the package
        # takes 0.7-0.8x (benchmarks/bench_attention.py)
        dropout_p = self.attn_dropout_rate if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, dim)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` with a GELU MLP.

    Args:
        dim: token width.
        num_heads: number of attention heads.
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        qkv_bias: learn a bias in the query/key/value projection.
        dropout_rate: dropout in attention and MLP.
    """

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, dropout_rate: float = 0.0
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, dropout_rate=dropout_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout_rate),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout_rate),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT3D(nn.Module):
    """Vision Transformer over non-overlapping 3D patches, with a class token, returning raw logits.

    Args:
        in_channels: input channels.
        num_classes: number of logits; ``0`` drops the classifier so that ``forward`` returns the normalised
            class token (used by the hybrid teacher).
        img_size: input spatial size the position embedding is built for; every input must have this size.
        patch_size: edge of the cubic patches; must divide every entry of ``img_size``.
        hidden_size: token width.
        num_layers: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP width relative to ``hidden_size``.
        pos_embed_type: ``"learnable"``, ``"sincos"`` (fixed 3D sin-cos; ``hidden_size`` must be divisible by
            ``2 * spatial_dims``), ``"fourier"`` or ``"none"`` (MONAI's ``PatchEmbeddingBlock`` options).
        dropout_rate: dropout in the embedding, the blocks and before the classifier.
        qkv_bias: learn a bias in the query/key/value projections.
        out_indices: blocks whose patch-token maps ``forward_features`` returns; the last block by default.
        spatial_dims: 3 for volumes, 2 for images.

    Raises:
        ValueError: if ``patch_size`` does not divide ``img_size`` or an ``out_indices`` entry is out of range.

    ``forward_features`` returns, for each block in ``out_indices``, its patch tokens as a map
    ``[B, hidden_size, X / patch, Y / patch, Z / patch]`` (stride ``patch_size``), followed by the class token of
    the last block as ``[B, hidden_size, 1, 1, 1]``. The class token summarises the whole volume, so its
    ``feature_info`` stride is the largest image edge (one "voxel" covering the input). ``forward_head``
    normalises that class token and applies the classifier.
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 2,
        img_size: Sequence[int] | int = 128,
        patch_size: int = 16,
        hidden_size: int = 384,
        num_layers: int = 8,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        pos_embed_type: str = "learnable",
        dropout_rate: float = 0.0,
        qkv_bias: bool = True,
        out_indices: Sequence[int] | None = None,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        self.img_size = tuple(ensure_tuple_rep(img_size, spatial_dims))
        if any(size % patch_size for size in self.img_size):
            raise ValueError(
                f"ViT3D: patch_size={patch_size} must divide img_size={self.img_size}; "
                "crop or resize the input, or choose a patch size that divides it."
            )
        self.grid_size = tuple(size // patch_size for size in self.img_size)
        self.num_classes = num_classes
        self.num_features = hidden_size
        self.out_indices = tuple(out_indices) if out_indices is not None else (num_layers - 1,)
        if any(not 0 <= i < num_layers for i in self.out_indices):
            raise ValueError(f"ViT3D: out_indices={self.out_indices} must lie in [0, {num_layers - 1}].")

        self.patch_embedding = PatchEmbeddingBlock(
            in_channels=in_channels,
            img_size=self.img_size,
            patch_size=patch_size,
            hidden_size=hidden_size,
            num_heads=num_heads,
            proj_type="conv",
            pos_embed_type=pos_embed_type,
            dropout_rate=dropout_rate,
            spatial_dims=spatial_dims,
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(hidden_size, num_heads, mlp_ratio, qkv_bias=qkv_bias, dropout_rate=dropout_rate)
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.head_drop = nn.Dropout(dropout_rate)
        self.head = nn.Linear(hidden_size, num_classes) if num_classes > 0 else nn.Identity()

        self.feature_info = [
            {"num_chs": hidden_size, "reduction": patch_size, "module": f"blocks.{i}"} for i in self.out_indices
        ]
        self.feature_info.append(
            {"num_chs": hidden_size, "reduction": max(self.img_size), "module": f"blocks.{num_layers - 1}"}
        )

    def _token_map(self, tokens: Tensor) -> Tensor:
        # Drop the class token and fold the patch tokens back onto their grid; -1 keeps the batch axis dynamic, and
        # a list (not *unpacking) lets TorchScript script it.
        return tokens[:, 1:].transpose(1, 2).reshape([-1, self.num_features] + list(self.grid_size))  # noqa: RUF005

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Patch-token maps of the ``out_indices`` blocks, then the class token (see the class docstring).

        Raises:
            ValueError: if the spatial size of ``x`` is not ``img_size``.
        """
        # Shapes are fixed while tracing (and the check would only add tracer warnings there). Lists, not tuples,
        # so TorchScript can script the check.
        if not torch.jit.is_tracing() and list(x.shape[2:]) != list(self.img_size):
            raise ValueError(
                f"ViT3D: input of spatial size {list(x.shape[2:])} does not match img_size={self.img_size} "
                "the position embedding was built for; resize the input or build the model with that img_size."
            )
        tokens = self.patch_embedding(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        features = []
        for index, block in enumerate(self.blocks):
            tokens = block(tokens)
            if index in self.out_indices:
                features.append(self._token_map(tokens))
        features.append(tokens[:, 0].reshape([-1, self.num_features] + [1] * len(self.img_size)))
        return features

    def forward_head(self, features: list[Tensor], pre_logits: bool = False) -> Tensor:
        """Logits from the features; only the trailing class token is used.

        Args:
            features: the output of :meth:`forward_features` (or any list ending with the class token).
            pre_logits: return the normalised class token ``[B, hidden_size]`` instead of the logits.
        """
        cls_token = self.norm(features[-1].flatten(1))
        return cls_token if pre_logits else self.head(self.head_drop(cls_token))

    def forward(self, x: Tensor) -> Tensor:
        """Raw logits ``[B, num_classes]`` (no Tanh, unlike MONAI's ``ViT`` default)."""
        return self.forward_head(self.forward_features(x))


@register_model(
    "vit3d",
    tiny_kwargs={"img_size": 16, "patch_size": 8, "hidden_size": 24, "num_layers": 2, "num_heads": 2},
    tiny_input_shape=(4, 16, 16, 16),
    default_input_shape=(4, 128, 128, 128),
    role="teacher",
)
def vit3d(in_channels: int = 4, num_classes: int = 2, img_size: Sequence[int] | int = 128, **kwargs) -> ViT3D:
    """3D ViT with 16^3 patches, 384-wide tokens and 8 blocks (see :class:`ViT3D` for the arguments)."""
    return ViT3D(in_channels=in_channels, num_classes=num_classes, img_size=img_size, **kwargs)
