"""2.5D and 2D students: a timm 2D backbone over slice stacks, and a multi-slice (MIL) model that pools its stacks.

The 2.5D input is the slice pipeline's ``[B, 4*K, H, W]`` stack (modality-major: channel ``m*K + k``), the 2D
input ``[B, 4, H, W]``. The multi-slice model takes ``[B, S, 4*K, H, W]``: S stacks from one volume (a bag of
instances in multiple-instance learning), encoded by one shared backbone and pooled - by gated attention or by
the mean - into a single subject-level prediction. It is trained on the same kind of input it is used on.

Any timm model with ``forward_intermediates`` and a convolutional (NCHW) feature map works as ``backbone``;
no pretrained weights are loaded (the package runs offline, and ImageNet weights expect 3 channels anyway).
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from medkd3d.networks.registry import register_model

__all__ = [
    "MIL_POOLINGS",
    "EfficientNet25D",
    "GatedAttentionPooling",
    "MeanPooling",
    "MultiSliceEfficientNet25D",
]

#: Stack pooling modes of :class:`MultiSliceEfficientNet25D`.
MIL_POOLINGS: tuple[str, ...] = ("attention", "mean")


def _describe_backbone(backbone: nn.Module, name: str, in_channels: int) -> tuple[list[dict[str, Any]], bool, int]:
    """Find a timm backbone's feature stages, whether its head input differs from the last stage, and its embedding.

    timm's ``feature_info`` lists the stage outputs, but some families (EfficientNet, ...) transform the last
    stage further (1x1 conv head, final norm) before pooling. A probe forward on zeros, in eval mode, finds that
    head input and the module producing it, so ``forward_features`` can return it and ``forward_head`` can
    continue from it exactly as timm's own ``forward`` does. The probe draws no random numbers and does not touch
    batch-norm statistics.

    Returns:
        ``(feature_info, has_head_feature, embed_dim)``: the entries (module paths relative to ``backbone``),
        whether the head input is an extra entry, and the width of the pooled pre-logits embedding.

    Raises:
        ValueError: if the backbone has no ``forward_intermediates``, fails on the probe input, or its head input
            is not an NCHW map.
    """
    if not hasattr(backbone, "forward_intermediates"):
        raise ValueError(
            f"2.5D backbone {name!r} has no forward_intermediates, so its stage features cannot be read in one pass; "
            "choose a timm CNN such as 'efficientnet_b0', 'resnet18' or 'mobilenetv3_large_100'."
        )
    feature_info = [
        {"num_chs": int(info["num_chs"]), "reduction": int(info["reduction"]), "module": info["module"]}
        for info in backbone.feature_info
    ]
    outputs: list[tuple[str, torch.Tensor]] = []
    hooks = [
        module.register_forward_hook(lambda _m, _a, out, path=path: outputs.append((path, out)))
        for path, module in backbone.named_modules()
        if path
    ]
    was_training = backbone.training
    backbone.eval()
    size = 2 * max(info["reduction"] for info in feature_info)
    try:
        with torch.no_grad():
            final, intermediates = backbone.forward_intermediates(torch.zeros(1, in_channels, size, size))
            for hook in hooks:  # record the feature pass only, not the head
                hook.remove()
            embed_dim = backbone.forward_head(final, pre_logits=True).shape[-1]
    except Exception as error:  # e.g. transformers with a fixed image size
        raise ValueError(
            f"2.5D backbone {name!r} failed on a {size}x{size} probe input ({error}); "
            "choose a convolutional timm backbone such as 'efficientnet_b0' or 'resnet18'."
        ) from error
    finally:
        for hook in hooks:
            hook.remove()  # idempotent
        backbone.train(was_training)
    if final.ndim != 4:
        raise ValueError(
            f"2.5D backbone {name!r} produces {final.ndim}-d head features {tuple(final.shape)}, not an NCHW map; "
            "choose a convolutional timm backbone such as 'efficientnet_b0' or 'resnet18'."
        )
    has_head_feature = final is not intermediates[-1]
    if has_head_feature:
        # Modules finish inside-out, so the last one returning the head input is the outermost producing it.
        module = next(path for path, out in reversed(outputs) if out is final)
        feature_info.append({"num_chs": final.shape[1], "reduction": feature_info[-1]["reduction"], "module": module})
    return feature_info, has_head_feature, embed_dim


class _ScriptableTimmResNet(timm.models.resnet.ResNet):
    """timm's ResNet with ``forward_intermediates`` unrolled so TorchScript compiles it.

    timm slices a tuple of stage names by a variable there, which TorchScript rejects; this returns the same
    ``(final, [act1, layer1, ..., layer4])`` for the default arguments (every stage, no early stop, no norm).
    :class:`EfficientNet25D` swaps the class of a plain timm ResNet it builds to this one: same modules, same weights.
    """

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:  # type: ignore[override]
        stem = self.act1(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return f4, [stem, f1, f2, f3, f4]


class EfficientNet25D(nn.Module):
    """A timm 2D backbone (EfficientNet-B0 by default) over a ``[B, 4*K, H, W]`` stack of K adjacent slices.

    ``forward_features`` returns timm's stage outputs (``backbone.feature_info``) from one
    ``forward_intermediates`` pass, plus the backbone's head input when it differs from the last stage (for
    EfficientNet: the 1280-channel ``conv_head``/``bn2`` map at stride 32). ``forward_head`` pools and classifies
    that last feature exactly as timm's ``forward`` does.

    Args:
        backbone: timm model name, e.g. ``"efficientnet_b0"``, ``"mobilenetv3_small_050"``, ``"resnet10t"``.
        num_slices: K, adjacent slices per stack; sets ``in_channels = 4 * K`` unless given.
        in_channels: input channels; defaults to ``4 * num_slices``.
        num_classes: number of classes (0 returns the pooled embedding, as in timm).
        backbone_kwargs: further ``timm.create_model`` arguments, e.g. ``drop_rate``, ``drop_path_rate``.

    Raises:
        ValueError: if ``num_slices`` < 1 or the backbone is unsuitable (see :func:`_describe_backbone`).
        RuntimeError: if timm does not know ``backbone`` (timm's own error, naming the model).
    """

    def __init__(
        self,
        backbone: str = "efficientnet_b0",
        num_slices: int = 3,
        in_channels: int | None = None,
        num_classes: int = 2,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if num_slices < 1:
            raise ValueError(f"EfficientNet25D: num_slices must be >= 1, got {num_slices}.")
        self.in_channels = 4 * num_slices if in_channels is None else in_channels
        self.num_classes = num_classes
        self.backbone = timm.create_model(
            backbone, pretrained=False, in_chans=self.in_channels, num_classes=num_classes, **backbone_kwargs
        )
        if type(self.backbone) is timm.models.resnet.ResNet:  # e.g. "resnet10t", "resnet18": make it scriptable
            self.backbone.__class__ = _ScriptableTimmResNet
        info, self.has_head_feature, self.embed_dim = _describe_backbone(self.backbone, backbone, self.in_channels)
        self.feature_info = [{**entry, "module": f"backbone.{entry['module']}"} for entry in info]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage features ``[B, C_i, H / r_i, W / r_i]``, one per ``feature_info`` entry."""
        out = self.backbone.forward_intermediates(x)
        # timm annotates a Union (a list with intermediates_only=True); narrowing it lets TorchScript script this.
        assert isinstance(out, tuple)
        final, intermediates = out
        return intermediates + [final] if self.has_head_feature else intermediates  # noqa: RUF005 (TorchScript: no *)

    def forward_head(self, features: list[torch.Tensor], pre_logits: bool = False) -> torch.Tensor:
        """Logits ``[B, num_classes]`` (or the pooled embedding with ``pre_logits``) from the last feature."""
        return self.backbone.forward_head(features[-1], pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class GatedAttentionPooling(nn.Module):
    """Gated attention MIL pooling (Ilse et al., 2018) over the instance axis.

    ``a_s = softmax_s(w^T (tanh(V h_s) * sigmoid(U h_s)))`` and ``z = sum_s a_s h_s``. The result does not depend on
    the order of the instances.

    Args:
        embed_dim: width of the instance embeddings ``h_s``.
        attention_dim: hidden width of the attention network.
    """

    def __init__(self, embed_dim: int, attention_dim: int = 128) -> None:
        super().__init__()
        self.value = nn.Linear(embed_dim, attention_dim)
        self.gate = nn.Linear(embed_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``[B, S, D]`` instance embeddings.

        Returns:
            ``(pooled [B, D], weights [B, S])``; the weights are positive and sum to one over ``S``.
        """
        logits = self.score(torch.tanh(self.value(embeddings)) * torch.sigmoid(self.gate(embeddings))).squeeze(-1)
        weights = torch.softmax(logits, dim=1)
        return (weights.unsqueeze(1) @ embeddings).squeeze(1), weights


class MeanPooling(nn.Module):
    """Mean MIL pooling over the instance axis: ``z = mean_s h_s``, i.e. every weight is ``1 / S``.

    It has no parameters and shares :class:`GatedAttentionPooling`'s interface, so the two are interchangeable.
    """

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``[B, S, D]`` instance embeddings.

        Returns:
            ``(pooled [B, D], weights [B, S])`` with uniform weights ``1 / S``.
        """
        # softmax of zeros: uniform weights whose S stays symbolic in traced and exported graphs
        weights = torch.softmax(torch.zeros_like(embeddings[..., 0]), dim=1)
        return embeddings.mean(dim=1), weights


class MultiSliceEfficientNet25D(nn.Module):
    """One shared 2.5D encoder over S slice stacks ``[B, S, 4*K, H, W]``, pooled into one subject prediction.

    Multiple-instance learning: a subject is a bag of S stacks and its grade a bag label. Each stack is encoded
    and pooled to an embedding by the same :class:`EfficientNet25D` backbone; ``pooling`` weighs the S embeddings
    into one subject embedding (gated attention, :class:`GatedAttentionPooling`, or their mean,
    :class:`MeanPooling`), which a linear layer classifies. ``forward`` returns the subject logits
    ``[B, num_classes]``, so training losses (CE, logit KD from a 3D teacher's volume logits) supervise exactly
    what the model outputs at inference. The prediction is invariant to the order of the stacks and works for
    any S, but train and deploy it with the same S (the bundle's ``num_stacks``).

    Feature convention: ``forward_features`` returns the per-stack encoder features with the stack axis kept,
    ``[B, S, C_i, H / r_i, W / r_i]``; ``feature_info`` describes the 2D encoder (``num_chs`` is ``C_i``, at
    dim 2; ``reduction`` is relative to ``H`` and ``W``). ``features[i].flatten(0, 1)`` gives timm's 2D layout;
    :class:`~medkd3d.losses.VolumeToSliceFeatureLoss` matches such maps stack by stack with the batch's
    ``slice_index`` ``[B, S]``. :meth:`forward_attention` also returns the pooling weights ``[B, S]``.

    Args:
        backbone: timm model name of the shared encoder.
        num_slices: K, adjacent slices per stack (``in_channels = 4 * K`` unless given).
        in_channels: channels of one stack; defaults to ``4 * num_slices``.
        num_classes: number of classes.
        pooling: ``"attention"`` (gated attention, default) or ``"mean"``, see :data:`MIL_POOLINGS`.
        attention_dim: hidden width of the gated attention (unused with ``"mean"``).
        dropout_rate: dropout on the pooled subject embedding.
        backbone_kwargs: further ``timm.create_model`` arguments.

    Raises:
        ValueError: for an unknown ``pooling``, and as :class:`EfficientNet25D`.
    """

    def __init__(
        self,
        backbone: str = "efficientnet_b0",
        num_slices: int = 3,
        in_channels: int | None = None,
        num_classes: int = 2,
        pooling: str = "attention",
        attention_dim: int = 128,
        dropout_rate: float = 0.0,
        **backbone_kwargs: Any,
    ) -> None:
        super().__init__()
        if pooling not in MIL_POOLINGS:
            raise ValueError(
                f"MultiSliceEfficientNet25D: pooling must be one of {', '.join(map(repr, MIL_POOLINGS))}, "
                f"got {pooling!r}."
            )
        # num_classes=0: the encoder stops at the pooled embedding; the subject-level classifier is ours.
        self.encoder = EfficientNet25D(backbone, num_slices, in_channels, num_classes=0, **backbone_kwargs)
        self.in_channels = self.encoder.in_channels
        self.num_classes = num_classes
        self.pooling_mode = pooling
        self.feature_info = [{**entry, "module": f"encoder.{entry['module']}"} for entry in self.encoder.feature_info]
        self.pooling: nn.Module = (
            GatedAttentionPooling(self.encoder.embed_dim, attention_dim) if pooling == "attention" else MeanPooling()
        )
        self.dropout = nn.Dropout(dropout_rate)
        self.classifier = nn.Linear(self.encoder.embed_dim, num_classes)

    def _check_input(self, x: torch.Tensor) -> None:
        if torch.jit.is_tracing():  # shapes are traced values there; the export fixes them from a valid example
            return
        if x.ndim != 5 or x.shape[2] != self.in_channels:
            raise ValueError(
                f"MultiSliceEfficientNet25D expects [B, S, {self.in_channels}, H, W] (S slice stacks of one subject), "
                f"got shape {list(x.shape)}; build the input with slice_stack_transforms(num_stacks=S) and run the "
                "network with SimpleInferer (it pools the stacks itself; SliceStackInferer is for single-stack nets)."
            )

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-stack encoder features ``[B, S, C_i, h_i, w_i]`` of the input ``[B, S, C, H, W]``.

        Raises:
            ValueError: if ``x`` is not ``[B, S, in_channels, H, W]``.
        """
        self._check_input(x)
        num_stacks = x.shape[1]
        features = self.encoder.forward_features(x.flatten(0, 1))
        return [f.unflatten(0, (-1, num_stacks)) for f in features]

    def _pool(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        last = features[-1]
        embeddings = self.encoder.forward_head([last.flatten(0, 1)], pre_logits=True)
        pooled, weights = self.pooling(embeddings.unflatten(0, (-1, last.shape[1])))
        return self.classifier(self.dropout(pooled)), weights

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Subject-level logits ``[B, num_classes]`` from the last per-stack feature."""
        return self._pool(features)[0]

    def forward_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits [B, num_classes], pooling weights [B, S])``, from one pass (uniform weights for ``"mean"``)."""
        return self._pool(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# The tiny configurations cover both timm cases: EfficientNet (timm's tiny "test_efficientnet" stands in for the
# default B0) has a head feature after its last stage, MobileNetV3 pools its last stage directly.


@register_model(
    "efficientnet25d",
    tiny_kwargs={"backbone": "test_efficientnet"},
    tiny_input_shape=(12, 32, 32),
    default_input_shape=(12, 128, 128),
)
def efficientnet25d(**kwargs: Any) -> EfficientNet25D:
    """2.5D student: timm EfficientNet-B0 over K=3 adjacent slices of the 4 modalities."""
    return EfficientNet25D(**kwargs)


@register_model(
    "efficientnet2d",
    tiny_kwargs={"backbone": "mobilenetv3_small_050"},
    tiny_input_shape=(4, 32, 32),
    default_input_shape=(4, 128, 128),
)
def efficientnet2d(**kwargs: Any) -> EfficientNet25D:
    """2D ablation student: timm EfficientNet-B0 over one slice of the 4 modalities (K=1)."""
    kwargs.setdefault("num_slices", 1)
    return EfficientNet25D(**kwargs)


@register_model(
    "efficientnet25d_multi",
    tiny_kwargs={"backbone": "test_efficientnet", "attention_dim": 8},
    tiny_input_shape=(3, 12, 32, 32),
    default_input_shape=(8, 12, 128, 128),
)
def efficientnet25d_multi(**kwargs: Any) -> MultiSliceEfficientNet25D:
    """Multi-slice (MIL) 2.5D student: shared EfficientNet-B0 over S stacks of K=3 slices, attention or mean pooled."""
    return MultiSliceEfficientNet25D(**kwargs)
