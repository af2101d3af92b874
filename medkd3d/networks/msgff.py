"""Multi-Scale Geometric Feature Fusion (MSGFF), the fusion block the seed paper plans for its hybrid teacher.

MSGFF turns feature maps of several scales into one vector:

1. **Tokens.** Each scale ``s`` (a map ``[B, C_s, *spatial_s]``) is average-pooled to at most
   ``max_tokens_per_axis`` tokens per axis and projected to a common width ``dim``.
2. **Geometry.** Every token gets an embedding of the normalised coordinates of its centre (Fourier features of
   ``(x, y, z)`` in ``[0, 1]`` through a small MLP, shared by all scales so that the same place in the volume
   gets the same code at every scale) plus a learned embedding of its scale.
3. **Cross-scale attention.** Multi-head self-attention over the tokens of *all* scales together relates
   fine and coarse structures (``num_layers`` transformer blocks; ``0`` switches this off for ablations).
4. **Fusion.** Each scale's tokens are averaged into a descriptor ``d_s`` and the descriptors are fused:

   - ``"concat"``: ``[d_1, ..., d_S]`` (width ``S * dim``);
   - ``"sum"``: ``sum_s d_s``;
   - ``"attention"``: ``sum_s a_s d_s`` with ``a = softmax_s(<W d_s, q> / sqrt(dim))`` for a learned query
     ``q`` - each scale is scored on its own descriptor;
   - ``"gated"``: ``sum_s g_s d_s`` with ``g = softmax(MLP([d_1, ..., d_S]))`` - an input-conditioned gate that
     sees all scales at once and prioritises the relevant ones (the seed's "adaptive scaling").

   The weights of ``"attention"`` and ``"gated"`` sum to one over the scales; they are returned with
   ``return_gates=True`` and kept (detached) in ``last_gates`` for analysis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medkd3d.networks.vit3d import TransformerBlock

__all__ = ["FUSION_MODES", "MSGFF", "FourierPositionEmbedding", "MultiScaleGeometricFeatureFusion", "token_centres"]

FUSION_MODES = ("concat", "sum", "attention", "gated")

_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


class FourierPositionEmbedding(nn.Module):
    """Embeds normalised coordinates in ``[0, 1]^d``: ``MLP([sin(pi 2^k c), cos(pi 2^k c)] for k < F)``.

    Args:
        spatial_dims: number of coordinates per point.
        dim: embedding width.
        num_frequencies: octaves ``F``; the lowest (``pi``) is unambiguous over ``[0, 1]``, higher ones resolve
            finer positions.
    """

    def __init__(self, spatial_dims: int, dim: int, num_frequencies: int = 4) -> None:
        super().__init__()
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(num_frequencies), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * num_frequencies * spatial_dims, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, coords: Tensor) -> Tensor:
        """``[N, spatial_dims]`` coordinates -> ``[N, dim]`` embeddings."""
        angles = coords[..., None] * self.frequencies
        return self.mlp(torch.cat((angles.sin(), angles.cos()), dim=-1).flatten(-2))


def token_centres(size: Sequence[int], kernel: Sequence[int]) -> Tensor:
    """Normalised centre coordinates ``[N, d]`` of the tokens of a map of ``size`` pooled by ``kernel``.

    Token ``i`` along an axis of ``n`` voxels pooled by ``k`` covers voxels ``[i k, (i + 1) k)``, so its centre is
    ``(i k + k / 2) / n`` - a position in ``[0, 1]`` of the whole map, comparable across scales. Tokens are
    ordered like ``map.flatten(2)`` (row-major).
    """
    axes = [(torch.arange(n // k, dtype=torch.float32) * k + k / 2) / n for n, k in zip(size, kernel)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(axes))


class MultiScaleGeometricFeatureFusion(nn.Module):
    """Fuses feature maps of several scales with geometry-aware cross-scale attention (see the module docstring).

    The block is built for fixed map sizes (like a ViT for its image size): the pooling factors and token
    coordinates are computed once, so the forward pass traces and exports to ONNX as plain tensor operations.

    Args:
        in_channels: channels of each input scale, in the order the maps are passed to ``forward``.
        feature_sizes: spatial size of each input scale, e.g. ``[(16, 16, 16), (8, 8, 8)]``; their length sets
            the number of spatial dimensions.
        dim: common token width.
        fusion: one of ``"concat"``, ``"sum"``, ``"attention"``, ``"gated"``.
        num_heads: attention heads of the cross-scale transformer blocks.
        num_layers: number of cross-scale transformer blocks (``0``: no cross-scale attention).
        mlp_ratio: MLP width of the transformer blocks relative to ``dim``.
        max_tokens_per_axis: larger maps are average-pooled by an integer factor ``ceil(n / max_tokens_per_axis)``
            per axis, which bounds the attention cost (floor-mode pooling drops at most ``factor - 1`` border
            voxels; the token coordinates account for it).
        num_frequencies: Fourier octaves of the coordinate embedding.
        dropout_rate: dropout in the transformer blocks.

    Raises:
        ValueError: for an unknown ``fusion``, no scales, ``feature_sizes`` not matching ``in_channels`` or of
            mixed dimensionality, or ``max_tokens_per_axis < 1``.

    Attributes:
        out_channels: width of the fused output (``len(in_channels) * dim`` for ``"concat"``, else ``dim``).
        last_gates: ``[B, S]`` scale weights of the last eager call (``None`` for ``"concat"``/``"sum"``).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        feature_sizes: Sequence[Sequence[int]],
        dim: int = 128,
        fusion: str = "gated",
        num_heads: int = 4,
        num_layers: int = 1,
        mlp_ratio: float = 2.0,
        max_tokens_per_axis: int = 8,
        num_frequencies: int = 4,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if fusion not in FUSION_MODES:
            raise ValueError(f"MSGFF: fusion={fusion!r} is not one of {FUSION_MODES}.")
        if not in_channels or len(feature_sizes) != len(in_channels):
            raise ValueError(
                f"MSGFF: got {len(in_channels)} in_channels and {len(feature_sizes)} feature_sizes; pass the "
                "channels and the spatial size of every scale to fuse (at least one)."
            )
        self.feature_sizes = [tuple(int(n) for n in size) for size in feature_sizes]
        self._size_lists = [list(size) for size in self.feature_sizes]  # as the shapes TorchScript compares them to
        spatial_dims = len(self.feature_sizes[0])
        if any(len(size) != spatial_dims for size in self.feature_sizes):
            raise ValueError(f"MSGFF: feature_sizes={self.feature_sizes} mix different numbers of dimensions.")
        if max_tokens_per_axis < 1:
            raise ValueError(f"MSGFF: max_tokens_per_axis must be >= 1, got {max_tokens_per_axis}.")
        num_scales = len(in_channels)
        self.fusion = fusion
        self.dim = dim
        self.out_channels = num_scales * dim if fusion == "concat" else dim
        self.last_gates: Tensor | None = None

        self.pool_kernels = [tuple(math.ceil(n / max_tokens_per_axis) for n in size) for size in self.feature_sizes]
        centres = [token_centres(size, kernel) for size, kernel in zip(self.feature_sizes, self.pool_kernels)]
        self.token_counts = [len(c) for c in centres]
        self.register_buffer("token_coords", torch.cat(centres), persistent=False)
        self.register_buffer(
            "token_scales",
            torch.arange(num_scales).repeat_interleave(torch.tensor(self.token_counts)),
            persistent=False,
        )
        # Parameter-free pooling modules rather than a stored function, so TorchScript can script encode().
        self.pools = nn.ModuleList(
            _AVG_POOL[spatial_dims](kernel, stride=kernel) if any(k > 1 for k in kernel) else nn.Identity()
            for kernel in self.pool_kernels
        )

        self.projections = nn.ModuleList(nn.Linear(channels, dim) for channels in in_channels)
        self.position_embedding = FourierPositionEmbedding(spatial_dims, dim, num_frequencies)
        self.scale_embedding = nn.Parameter(torch.zeros(num_scales, dim))
        nn.init.trunc_normal_(self.scale_embedding, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, num_heads, mlp_ratio, dropout_rate=dropout_rate) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        if fusion == "attention":
            self.scale_key = nn.Linear(dim, dim)
            self.scale_query = nn.Parameter(torch.zeros(dim))
            nn.init.trunc_normal_(self.scale_query, std=0.02)
        elif fusion == "gated":
            self.gate = nn.Sequential(nn.Linear(num_scales * dim, dim), nn.GELU(), nn.Linear(dim, num_scales))

    def _check_sizes(self, features: list[Tensor]) -> None:
        sizes = [list(f.shape[2:]) for f in features]
        matches = len(sizes) == len(self._size_lists)
        for size, expected in zip(sizes, self._size_lists):  # per scale: TorchScript compares List[int] only
            matches = matches and size == expected
        if not matches:
            raise ValueError(
                f"MSGFF: got maps of spatial sizes {sizes} but the block was built for {self.feature_sizes}; "
                "build it with the feature_sizes of the maps you pass."
            )

    def encode(self, features: list[Tensor]) -> Tensor:
        """Per-scale descriptors ``[B, S, dim]``: tokens with geometry, cross-scale attention, per-scale mean.

        Raises:
            ValueError: if the maps do not have the ``feature_sizes`` the block was built for.
        """
        if not torch.jit.is_tracing():
            self._check_sizes(features)
        tokens = []
        for index, (projection, pool) in enumerate(zip(self.projections, self.pools)):
            tokens.append(projection(pool(features[index]).flatten(2).transpose(1, 2)))
        x = torch.cat(tokens, dim=1)
        x = x + self.position_embedding(self.token_coords) + self.scale_embedding[self.token_scales]
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return torch.stack([part.mean(dim=1) for part in torch.split(x, self.token_counts, dim=1)], dim=1)

    def fuse(self, descriptors: Tensor) -> tuple[Tensor, Tensor | None]:
        """Fuses ``[B, S, dim]`` descriptors into ``[B, out_channels]``; also returns the scale weights or ``None``."""
        if self.fusion == "concat":
            return descriptors.flatten(1), None
        if self.fusion == "sum":
            return descriptors.sum(dim=1), None
        # hasattr, not the mode name, picks the scorer: TorchScript then compiles only the module that exists.
        if hasattr(self, "scale_key"):
            logits = self.scale_key(descriptors) @ self.scale_query / math.sqrt(self.dim)
        elif hasattr(self, "gate"):
            logits = self.gate(descriptors.flatten(1))
        else:  # unreachable: __init__ builds one of the two for "attention" and "gated"
            raise RuntimeError(f"MSGFF: fusion={self.fusion} has no scale scorer.")
        gates = logits.softmax(dim=-1)
        return (gates.unsqueeze(-1) * descriptors).sum(dim=1), gates

    def forward(self, features: list[Tensor], return_gates: bool = False) -> Tensor | tuple[Tensor, Tensor | None]:
        """Fuses the maps of all scales.

        Args:
            features: one map ``[B, C_s, *feature_sizes[s]]`` per scale, in ``in_channels`` order.
            return_gates: also return the ``[B, S]`` scale weights (``None`` for ``"concat"`` and ``"sum"``).

        Returns:
            The fused features ``[B, out_channels]``, or ``(fused, gates)`` with ``return_gates=True``.
        """
        fused, gates = self.fuse(self.encode(features))
        # Kept for analysis only; skipped while tracing/exporting, where module state must not change, and in
        # scripted modules (TorchScript types the attribute by its initial None).
        if not torch.jit.is_scripting() and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.last_gates = None if gates is None else gates.detach()
        if return_gates:  # statements, not a conditional expression, which TorchScript cannot type as a Union
            return fused, gates
        return fused


MSGFF = MultiScaleGeometricFeatureFusion
