"""Building blocks of cross-architecture distillation in 3D (Liu et al., "Cross-Architecture Knowledge
Distillation", ACCV 2022, arXiv:2207.05273): the partially-cross-attention (PCA) projector, the group-wise
linear (GL) projector, a gradient-reversal layer, random feature-space views and the feature discriminator of
multi-view robust training, plus helpers that bring ViT tokens and CNN maps onto one 3D grid.

Feature tensors are either 3D maps ``[B, C, X, Y, Z]`` (CNN stages) or transformer tokens ``[B, N, C]`` whose
``N`` tokens (after any prefix tokens such as a class token) are the row-major flattening of an ``(X, Y, Z)``
patch grid, as MONAI's ``PatchEmbeddingBlock`` produces them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FeatureDiscriminator",
    "GradientReversal",
    "GroupWiseLinearProjector",
    "PartiallyCrossAttentionProjector",
    "as_feature_volume",
    "attention_kl",
    "gradient_reversal",
    "random_feature_views",
    "resize_spatial",
]


def _triple(value: int | Sequence[int], name: str) -> tuple[int, int, int]:
    grid = (int(value),) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(grid) != 3 or min(grid) < 1:
        raise ValueError(f"{name} must be a positive int or three positive ints (X, Y, Z), got {value!r}.")
    return grid  # type: ignore[return-value]


def as_feature_volume(
    features: Tensor, grid: Sequence[int] | None = None, num_prefix_tokens: int = 0, name: str = "features"
) -> Tensor:
    """Return ``features`` as a 3D map ``[B, C, X, Y, Z]``, reshaping transformer tokens when needed.

    Args:
        features: a map ``[B, C, X, Y, Z]`` (returned unchanged) or tokens ``[B, N, C]``.
        grid: the ``(X, Y, Z)`` patch grid of the tokens; when ``None``, ``N`` must be a perfect cube.
        num_prefix_tokens: leading non-spatial tokens to drop (1 for a ViT class token).
        name: what the tensor is, for error messages.

    Returns:
        the map ``[B, C, X, Y, Z]``.

    Raises:
        ValueError: when the tensor is neither 5-D nor 3-D, or the tokens do not fill the grid.
    """
    if features.ndim == 5:
        return features
    if features.ndim != 3:
        raise ValueError(
            f"{name}: expected a 3D feature map [B, C, X, Y, Z] or tokens [B, N, C], got shape {tuple(features.shape)}."
        )
    tokens = features[:, num_prefix_tokens:]
    n = tokens.shape[1]
    if grid is None:
        side = round(n ** (1.0 / 3.0))
        if side**3 != n:
            raise ValueError(
                f"{name}: {n} tokens (after dropping {num_prefix_tokens} prefix tokens) are not a cube; "
                "pass the token grid (X, Y, Z) explicitly (teacher_grids=...) or set num_prefix_tokens."
            )
        grid = (side, side, side)
    grid = _triple(grid, f"{name} grid")
    if math.prod(grid) != n:
        raise ValueError(
            f"{name}: {n} tokens (after dropping {num_prefix_tokens} prefix tokens) do not fill the grid {grid}; "
            "check the token grid and the number of prefix (class/distillation) tokens."
        )
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def resize_spatial(x: Tensor, size: Sequence[int]) -> Tensor:
    """Resize the spatial axes of a ``[B, C, *spatial]`` map (2D or 3D) to ``size``.

    Pure down-sampling averages (adaptive average pooling, i.e. area interpolation, so no voxel is skipped);
    anything else interpolates (bi/trilinear, ``align_corners=False``).
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    if all(s <= c for s, c in zip(size, x.shape[2:])):
        return F.adaptive_avg_pool3d(x, size) if x.ndim == 5 else F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="trilinear" if x.ndim == 5 else "bilinear", align_corners=False)


def attention_kl(student_attention_logits: Tensor, teacher_attention: Tensor) -> Tensor:
    """Row-wise ``KL(A_t || A_s)`` averaged over every attention row (batch, head and query).

    ``KL = (1 / R) * sum_rows sum_j A_t[j] * (log A_t[j] - log A_s[j])`` with ``A_s = softmax(student logits)``;
    ``0 * log 0`` counts as 0, so teacher maps with exact zeros are fine.

    Args:
        student_attention_logits: pre-softmax student scores ``[..., N_query, N_key]``.
        teacher_attention: teacher attention probabilities of the same shape (rows sum to 1).

    Returns:
        the scalar mean KL divergence (float32).
    """
    n_key = student_attention_logits.shape[-1]
    log_student = F.log_softmax(student_attention_logits.float(), dim=-1).reshape(-1, n_key)
    return F.kl_div(log_student, teacher_attention.float().reshape(-1, n_key), reduction="batchmean")


class _GradientReversalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad_output, None


def gradient_reversal(x: Tensor, scale: float = 1.0) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``-scale`` in the backward pass (Ganin & Lempitsky)."""
    return _GradientReversalFunction.apply(x, scale)


class GradientReversal(nn.Module):
    """Module form of :func:`gradient_reversal`.

    Args:
        scale: magnitude ``lambda`` of the reversed gradient.
    """

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return gradient_reversal(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def random_feature_views(
    features: Sequence[Tensor], num_views: int, min_crop_fraction: float = 0.75
) -> list[list[Tensor]]:
    """Cheap random views of 3D feature maps: a random box crop plus random flips per view.

    Every tensor in ``features`` (e.g. the teacher map and the projected student map, on the same grid) gets
    the *same* crop and flips within a view, so a discriminator cannot tell them apart by the view alone. The
    randomness comes from torch's global generator (seed it for reproducibility).

    Args:
        features: maps ``[B, C, X, Y, Z]`` sharing their spatial shape.
        num_views: number of views to draw.
        min_crop_fraction: smallest crop side as a fraction of the feature map side (1.0 disables cropping).

    Returns:
        ``views[v][i]``: view ``v`` of ``features[i]``.
    """
    spatial = features[0].shape[2:]
    views = []
    for _ in range(num_views):
        boxes = []
        for length in spatial:
            low = min(length, max(1, math.ceil(min_crop_fraction * length)))
            size = int(torch.randint(low, length + 1, ()).item())
            start = int(torch.randint(0, length - size + 1, ()).item())
            boxes.append((start, size))
        flip_dims = [2 + d for d in range(len(spatial)) if torch.rand(()).item() < 0.5]
        view = []
        for x in features:
            for d, (start, size) in enumerate(boxes):
                x = x.narrow(2 + d, start, size)
            view.append(torch.flip(x, flip_dims) if flip_dims else x)
        views.append(view)
    return views


class GroupWiseLinearProjector(nn.Module):
    """Group-wise linear (GL) projector: a grouped 1x1x1 convolution from student to teacher channels.

    The ``C_s`` student channels are split into ``g`` groups of ``C_s / g``; group ``i`` has its own linear
    map ``W_i`` (``C_t / g x C_s / g``) producing output channels ``i * C_t / g ... (i + 1) * C_t / g`` at every
    voxel: ``GL(F_s) = concat_i(W_i F_s^i + b_i)``. With ``g`` groups it has ``g`` times fewer weights than a
    full linear map. (This is the channel-group reading of the GL projector used by the Jetson paper,
    arXiv:2506.18220; Liu et al. share one linear map among groups of neighbouring positions instead.)

    Args:
        in_channels: student channels ``C_s`` (divisible by ``groups``).
        out_channels: teacher channels ``C_t`` (divisible by ``groups``).
        groups: number of channel groups ``g``.

    Raises:
        ValueError: when a channel count is not divisible by ``groups``.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 4) -> None:
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(
                f"GroupWiseLinearProjector: groups={groups} must divide both the student channels ({in_channels}) "
                f"and the teacher channels ({out_channels}); choose a common divisor such as "
                f"{math.gcd(in_channels, out_channels)}."
            )
        self.groups = groups
        self.proj = nn.Conv3d(in_channels, out_channels, kernel_size=1, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        """Map ``[B, C_s, X, Y, Z]`` to ``[B, C_t, X, Y, Z]``."""
        return self.proj(x)


class PartiallyCrossAttentionProjector(nn.Module):
    """Partially-cross-attention (PCA) projector in 3D: the student learns the teacher's attention maps.

    What is implemented, for one stage with ``n = prod(grid)`` tokens and ``h`` heads of size ``d = D / h``:

    1. Student: ``[Q_s, K_s, V_s] = pool(Conv3d_k(F_s))`` - one 3D convolution (kernel 1 or 3) from ``C_s`` to
       ``3 D`` channels at the student's resolution, adaptively average-pooled to the common token ``grid``.
    2. Teacher: its tokens ``T = LN(pool(F_t))`` (teacher map pooled to the same grid, then layer-normalised
       per token without affine parameters), and ``Q_t = K_t = V_t = T`` - the parameter-free self-attention of
       the teacher's features; ``D`` equals the teacher's channel count so the two spaces can be swapped.
       ``A_t = softmax(Q_t K_t^T / sqrt(d))``, or a provided teacher attention map (e.g. a ViT block's
       ``[B, h, N, N]`` attention, pooled to the grid) replaces it.
    3. Partial cross (training mode only): each of ``Q_s``, ``K_s``, ``V_s`` is independently replaced by the
       detached teacher's ``Q_t``, ``K_t``, ``V_t`` with probability ``p`` (one draw per matrix per call, shared
       by the batch), as in Liu et al.: attending with teacher queries (keys) forces the student's keys
       (queries) into the teacher's space. In eval mode nothing is replaced.
    4. ``A_s = softmax(g(Q_s) g(K_s)^T / sqrt(d))`` and the loss
       ``L_pca = mean_rows KL(A_t || A_s) + value_weight * MSE(A_s g(V_s), A_t V_t)``.

    Args:
        in_channels: student channels ``C_s``.
        embed_dim: attention width ``D`` - the teacher's channel count.
        num_heads: attention heads ``h`` (divides ``embed_dim``).
        grid: common token grid ``(X, Y, Z)`` both feature maps are pooled to; small keeps maps cheap.
        kernel_size: 1 or 3, kernel of the Q/K/V convolution.
        cross_prob: replacement probability ``p``.
        value_weight: weight of the attention-output term (0 keeps the attention KL only).

    Raises:
        ValueError: on an invalid configuration.
    """

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        num_heads: int = 1,
        grid: int | Sequence[int] = 4,
        kernel_size: int = 1,
        cross_prob: float = 0.5,
        value_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(
                f"PartiallyCrossAttentionProjector: num_heads={num_heads} must divide the teacher channels "
                f"(embed_dim={embed_dim})."
            )
        if kernel_size not in (1, 3):
            raise ValueError(f"PartiallyCrossAttentionProjector: kernel_size must be 1 or 3, got {kernel_size}.")
        if not 0.0 <= cross_prob <= 1.0:
            raise ValueError(f"PartiallyCrossAttentionProjector: cross_prob must lie in [0, 1], got {cross_prob}.")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.grid = _triple(grid, "PartiallyCrossAttentionProjector grid")
        self.cross_prob = cross_prob
        self.value_weight = value_weight
        self.qkv = nn.Conv3d(in_channels, 3 * embed_dim, kernel_size, padding=kernel_size // 2)

    def _heads(self, tokens: Tensor) -> Tensor:
        """``[B, n, D]`` -> ``[B, h, n, d]``."""
        b, n, _ = tokens.shape
        return tokens.reshape(b, n, self.num_heads, -1).transpose(1, 2)

    @staticmethod
    def _merge_heads(x: Tensor) -> Tensor:
        """``[B, h, n, d]`` -> ``[B, 1, n, h * d]``."""
        return x.transpose(1, 2).flatten(2).unsqueeze(1)

    def student_qkv(self, student: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Student queries, keys and values ``[B, h, n, d]`` from a map ``[B, C_s, X, Y, Z]``."""
        qkv = resize_spatial(self.qkv(student), self.grid).flatten(2).transpose(1, 2)
        return tuple(self._heads(m) for m in qkv.chunk(3, dim=-1))  # type: ignore[return-value]

    def teacher_tokens(self, teacher: Tensor) -> Tensor:
        """Teacher ``Q_t = K_t = V_t`` ``[B, h, n, d]``: the map pooled to the grid, layer-normalised per token."""
        tokens = resize_spatial(teacher, self.grid).flatten(2).transpose(1, 2)
        return self._heads(F.layer_norm(tokens, (tokens.shape[-1],)))

    def pool_attention(self, attention: Tensor, token_grid: Sequence[int], num_prefix_tokens: int = 0) -> Tensor:
        """Pool a teacher attention map over ``N`` grid tokens to the projector's grid.

        Args:
            attention: probabilities ``[B, N', N']`` or ``[B, H, N', N']`` (``N' = prefix + prod(token_grid)``).
            token_grid: the teacher's patch grid ``(X, Y, Z)``.
            num_prefix_tokens: leading class/distillation tokens, dropped from queries and keys.

        Returns:
            ``[B, H, n, n]`` rows renormalised to sum to 1 (key mass summed per pooled cell, queries averaged).
        """
        if attention.ndim == 3:
            attention = attention.unsqueeze(1)
        if attention.ndim != 4 or attention.shape[-1] != attention.shape[-2]:
            raise ValueError(
                "PartiallyCrossAttentionProjector: teacher attention must be [B, N, N] or [B, H, N, N], "
                f"got shape {tuple(attention.shape)}."
            )
        attention = attention[..., num_prefix_tokens:, num_prefix_tokens:].float()
        token_grid = _triple(token_grid, "teacher attention grid")
        b, h, n, _ = attention.shape
        if math.prod(token_grid) != n:
            raise ValueError(
                f"PartiallyCrossAttentionProjector: teacher attention covers {n} grid tokens but the grid "
                f"{token_grid} has {math.prod(token_grid)}; check num_prefix_tokens and the teacher grid."
            )
        keys = resize_spatial(attention.reshape(b * h * n, 1, *token_grid), self.grid).reshape(b * h, n, -1)
        queries = resize_spatial(keys.transpose(1, 2).reshape(-1, 1, *token_grid), self.grid)
        pooled = queries.reshape(b, h, -1, math.prod(self.grid)).transpose(-1, -2)
        return pooled / pooled.sum(-1, keepdim=True).clamp_min(1e-12)

    def forward(self, student: Tensor, teacher: Tensor, teacher_attention: Tensor | None = None) -> Tensor:
        """Compute ``L_pca`` for one stage.

        Args:
            student: student map ``[B, C_s, X, Y, Z]``.
            teacher: teacher map ``[B, D, X', Y', Z']`` (detached by the caller or here).
            teacher_attention: optional teacher attention ``[B, H, n, n]`` already on the projector's grid
                (see :meth:`pool_attention`); replaces the feature self-attention ``A_t``.

        Returns:
            the scalar loss.
        """
        q_s, k_s, v_s = self.student_qkv(student)
        t = self.teacher_tokens(teacher.detach())
        scale = q_s.shape[-1] ** -0.5
        if self.training and self.cross_prob > 0:
            # one draw per matrix, as Liu et al.: with probability p the student attends with the teacher's Q/K/V
            cross = torch.rand(3) < self.cross_prob
            q_s, k_s, v_s = (t if swap else m for swap, m in zip(cross.tolist(), (q_s, k_s, v_s)))
        logits_s = (q_s @ k_s.transpose(-1, -2)).float() * scale
        v_t = t
        if teacher_attention is None:
            a_t = torch.softmax((t @ t.transpose(-1, -2)).float() * scale, dim=-1)
        else:
            a_t = teacher_attention.detach().float()
            if a_t.shape[1] != self.num_heads:
                # different head counts cannot be paired: compare head-averaged maps (still distributions)
                # and let them mix the full-width values
                a_t = a_t.mean(1, keepdim=True)
                logits_s = torch.log(torch.softmax(logits_s, dim=-1).mean(1, keepdim=True).clamp_min(1e-12))
                v_s, v_t = self._merge_heads(v_s), self._merge_heads(v_t)
        loss = attention_kl(logits_s, a_t)
        if self.value_weight:
            out_s = torch.softmax(logits_s, dim=-1) @ v_s.float()
            loss = loss + self.value_weight * F.mse_loss(out_s, a_t @ v_t.float())
        return loss

    def extra_repr(self) -> str:
        return f"grid={self.grid}, num_heads={self.num_heads}, cross_prob={self.cross_prob}"


class FeatureDiscriminator(nn.Module):
    """Small MLP telling teacher feature maps (label 1) from projected student maps (label 0).

    The map is adaptively average-pooled to a small ``grid`` (so crops and flips of a view change its input -
    a global average would be flip-invariant), flattened and fed to ``Linear -> LeakyReLU -> Linear``.

    Args:
        channels: channels of the maps (the teacher's ``C_t``).
        grid: pooled grid before the MLP.
        hidden: hidden width.
    """

    def __init__(self, channels: int, grid: int | Sequence[int] = 2, hidden: int = 64) -> None:
        super().__init__()
        self.grid = _triple(grid, "FeatureDiscriminator grid")
        self.mlp = nn.Sequential(
            nn.Linear(channels * math.prod(self.grid), hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map ``[B, C, X, Y, Z]`` to logits ``[B]`` (positive = looks like the teacher)."""
        return self.mlp(F.adaptive_avg_pool3d(x, self.grid).flatten(1)).squeeze(-1)
