"""``CompartmentReadout``: grade from the tumour-compartment volumes a network predicts, with a fitted linear read.

The grade of a glioma shows in how much of it is necrotic core, edema and enhancing tumour. A network trained with
:class:`~medkd3d.losses.TumourCompartmentLoss` learns to predict each compartment's share of every voxel of a stage
map; the means of those shares over the map are soft compartment volumes. On the synthetic default a logistic
regression on their logarithms, fitted on the training subjects after training, ranks the held-out subjects better
than the network's own pooled classifier (``benchmarks/results/task_ceiling.md``). This module puts that regression
inside the network, so that checkpoints, evaluation, distillation and every export carry it.

The shares come from a 1x1x1 convolution on one stage map, or from a :class:`CompartmentDecoder` over a finer and a
coarser stage map: a small enhancing focus, which tells many low-grade from high-grade tumours, covers a fraction of
one voxel of a coarse map but whole voxels of the finer one (``benchmarks/results/teacher_seeds.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CompartmentDecoder", "CompartmentReadout", "compartment_log_volumes", "readout_stages", "stage_readout"]


def compartment_log_volumes(logits: Tensor, eps: float = 1e-4) -> Tensor:
    """``[B, C]``: the logarithm of each compartment's mean predicted share over the voxels of ``[B, C, *S]`` logits.

    Args:
        logits: per-voxel compartment logits of a compartment head.
        eps: added to each mean share before the logarithm (a compartment can be absent).
    """
    return torch.log(torch.sigmoid(logits.float()).flatten(2).mean(2) + eps)


class CompartmentDecoder(nn.Module):
    """Per-voxel compartment logits at a fine stage map's resolution, from that map and a coarser one.

    One top-down step of a feature pyramid: each map is projected to ``width`` channels by a 1x1x1 convolution, the
    coarse one is upsampled (trilinear) onto the fine one and concatenated with it, then a 3x3x3 convolution with
    instance norm (batch statistics are poor at batch 8) and ReLU mixes them, and a 1x1x1 convolution gives one logit
    per compartment. The coarse map brings context (where the tumour is, what it is made of), the fine one the
    boundaries and the small foci a coarse voxel blurs.

    Args:
        fine_channels: channels of the fine map.
        coarse_channels: channels of the coarse map.
        compartments: number of compartments (BraTS: 3).
        width: channels of the projections and of the mixing convolution.
        spatial_dims: 3 for volumes, 2 for slices.
    """

    def __init__(
        self, fine_channels: int, coarse_channels: int, compartments: int = 3, width: int = 16, spatial_dims: int = 3
    ) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        self.fine = conv(fine_channels, width, kernel_size=1)
        self.coarse = conv(coarse_channels, width, kernel_size=1)
        self.mix = nn.Sequential(
            conv(2 * width, width, kernel_size=3, padding=1), norm(width, affine=True), nn.ReLU(inplace=True)
        )
        self.out = conv(width, compartments, kernel_size=1)
        self.mode = "trilinear" if spatial_dims == 3 else "bilinear"

    def forward(self, fine: Tensor, coarse: Tensor) -> Tensor:
        """Logits ``[B, compartments, *fine.shape[2:]]``."""
        fine = self.fine(fine)
        coarse = F.interpolate(self.coarse(coarse), size=fine.shape[2:], mode=self.mode, align_corners=False)
        return self.out(self.mix(torch.cat([fine, coarse], dim=1)))


def readout_stages(stage: int | Sequence[int] | None) -> tuple[int, ...]:
    """The stages a readout reads: ``(stage,)`` for one stage, ``(fine, coarse)`` for a decoder, ``()`` for none.

    Args:
        stage: a network's ``readout_stage``: one index into its ``feature_info``, a pair of them, or ``None``.

    Returns:
        The indices as a tuple.

    Raises:
        ValueError: if a sequence does not hold one or two stages.
    """
    if stage is None:
        return ()
    if isinstance(stage, int):
        return (stage,)
    stages = tuple(int(s) for s in stage)
    if len(stages) not in (1, 2):
        raise ValueError(
            f"readout_stage must be one stage or a pair [fine, coarse] for a compartment decoder, got {list(stage)}"
        )
    return stages


class CompartmentReadout(nn.Module):
    """Compartment shares of a stage map, their log-volumes, and a linear classifier fitted on them after training.

    One logit per compartment and voxel comes from ``head``, a 1x1x1 convolution on one stage map, or from
    ``decoder``, a :class:`CompartmentDecoder` on a fine and a coarse one (the other is ``None``; :attr:`predictor`
    is whichever is set). The auxiliary loss supervises it
    (:meth:`~medkd3d.losses.TumourCompartmentLoss.for_network` shares it instead of creating its own).
    ``classifier`` is not trained by gradient: :meth:`fit` sets it from a logistic regression on the log-volumes
    of the training subjects, and only then does :attr:`fitted` become true. Networks holding a readout use its
    logits once it is fitted and their own classifier before.

    Args:
        in_channels: channels of the stage map the head reads, or of the fine and the coarse map a decoder reads.
        num_classes: number of classes (the fit needs 2).
        compartments: number of compartments (BraTS: 3).
        eps: added to each mean share before the logarithm (a compartment can be absent).
        spatial_dims: 3 for volumes, 2 for slices.
        decoder_width: channels of a :class:`CompartmentDecoder`.

    Raises:
        ValueError: if ``in_channels`` lists neither one nor two maps.
    """

    __jit_unused_properties__ = ["predictor"]

    def __init__(
        self,
        in_channels: int | Sequence[int],
        num_classes: int = 2,
        compartments: int = 3,
        eps: float = 1e-4,
        spatial_dims: int = 3,
        decoder_width: int = 16,
    ) -> None:
        super().__init__()
        channels = [in_channels] if isinstance(in_channels, int) else [int(c) for c in in_channels]
        if len(channels) not in (1, 2):
            raise ValueError(f"CompartmentReadout reads one stage map or two (a decoder), got channels {channels}")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        # exactly one of the two is set; both are attributes so that TorchScript resolves the branch when scripting
        self.head = conv(channels[0], compartments, kernel_size=1) if len(channels) == 1 else None
        self.decoder = (
            CompartmentDecoder(*channels, compartments, decoder_width, spatial_dims) if len(channels) == 2 else None
        )
        self.classifier = nn.Linear(compartments, num_classes)
        self.classifier.requires_grad_(False)  # set by fit(), never by the optimizer
        self.eps = eps
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def predictor(self) -> nn.Module:
        """The module that predicts the compartments: ``head`` or ``decoder``."""
        return self.head if self.decoder is None else self.decoder

    def log_volumes(self, features: list[Tensor]) -> Tensor:
        """``[B, compartments]``: :func:`compartment_log_volumes` of the predicted compartment logits.

        Args:
            features: the stage map the head reads, or the fine and the coarse map the decoder reads.
        """
        if self.decoder is not None:
            logits = self.decoder(features[0].float(), features[1].float())
        elif self.head is not None:
            logits = self.head(features[0].float())
        else:
            raise RuntimeError("CompartmentReadout has neither a head nor a decoder")
        return compartment_log_volumes(logits, self.eps)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Logits ``[B, num_classes]`` of the fitted classifier on the stage map(s) (see :meth:`log_volumes`)."""
        return self.classifier(self.log_volumes(features))

    def replace(self, logits: Tensor, features: list[Tensor]) -> Tensor:
        """``logits`` (the network's own) until the readout is fitted, the readout's logits on ``features`` after.

        A tensor switch rather than a Python branch, so that traced and ONNX exports follow the buffer's value. In
        eager mode an unfitted readout is not computed at all: its weight in the switch is 0, and while the network
        trains its predictor is trained by the auxiliary loss, which runs it itself.
        """
        if not torch.jit.is_scripting() and not torch.jit.is_tracing() and not bool(self.fitted):
            return logits
        fitted = self.fitted.to(logits.dtype)
        return fitted * self(features).to(logits.dtype) + (1 - fitted) * logits

    @torch.no_grad()
    def adopt_head(self, source: CompartmentReadout) -> None:
        """Copy the head of another network's readout and freeze it: this readout then reads the compartments the
        way ``source``'s network learned to see them (a student reusing its teacher's head on features distilled
        to match the teacher's, as SimKD reuses the teacher's classifier).

        Raises:
            ValueError: if the heads' shapes differ.
        """
        theirs, mine = (
            {name: tuple(t.shape) for name, t in head.state_dict().items()}
            for head in (source.predictor, self.predictor)
        )
        if theirs != mine:
            raise ValueError(
                f"Cannot adopt a compartment head with weights {theirs} into one with {mine}: the stages the two "
                "readouts read differ in width, or one reads a decoder and the other a single stage."
            )
        self.predictor.load_state_dict(source.predictor.state_dict())
        self.predictor.requires_grad_(False)

    @torch.no_grad()
    def fit(self, log_volumes: Tensor | np.ndarray, labels: Tensor | np.ndarray, regularization: float = 1.0) -> None:
        """Fit the classifier: a standardised, class-balanced logistic regression, folded into one linear layer.

        With ``z = (x - mean) / std`` and the regression's ``P(class 1) = sigmoid(w . z + b)``, class 1's logit
        becomes ``(w / std) . x + b - (w / std) . mean`` and class 0's is 0, so the softmax of the two logits is the
        regression's probability.

        Args:
            log_volumes: ``[N, compartments]`` :meth:`log_volumes` of the training subjects.
            labels: ``[N]`` classes in ``{0, 1}``, both present.
            regularization: inverse regularisation strength ``C`` of the regression.

        Raises:
            ValueError: if the readout has more than two classes, or ``labels`` lack a class.
        """
        from medkd3d.engines.baseline import balanced_logistic_regression

        x = np.asarray(torch.as_tensor(log_volumes, dtype=torch.float64).cpu())
        y = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64).reshape(-1)
        if self.classifier.out_features != 2:
            raise ValueError(f"CompartmentReadout.fit needs 2 classes, the readout has {self.classifier.out_features}")
        if set(np.unique(y).tolist()) != {0, 1}:
            raise ValueError(f"CompartmentReadout.fit needs subjects of both classes, got labels {sorted(set(y))}")
        scaler, regression = balanced_logistic_regression(regularization).fit(x, y)
        slope = regression.coef_[0] / scaler.scale_
        weight = np.zeros((2, x.shape[1]))
        weight[1] = slope
        bias = np.array([0.0, regression.intercept_[0] - slope @ scaler.mean_])
        self.classifier.weight.copy_(torch.as_tensor(weight))
        self.classifier.bias.copy_(torch.as_tensor(bias))
        self.fitted.fill_(True)


def stage_readout(
    feature_info: Sequence[Mapping[str, Any]],
    stage: int | Sequence[int] | None,
    num_classes: int,
    spatial_dims: int = 3,
) -> CompartmentReadout | None:
    """The :class:`CompartmentReadout` a network holds on its stage(s) ``stage`` (``None``: no readout).

    Args:
        feature_info: the network's timm-style ``feature_info`` (``num_chs`` and ``reduction`` of each stage).
        stage: index into ``feature_info`` of the stage the readout reads; a pair ``[fine, coarse]`` for a
            :class:`CompartmentDecoder` over two stages; or ``None``.
        num_classes: number of classes.
        spatial_dims: 3 for volumes, 2 for slices.

    Raises:
        ValueError: if a stage is not an index of ``feature_info``, or a decoder's fine stage is not finer than its
            coarse one.
    """
    stages = readout_stages(stage)
    if not stages:
        return None
    for s in stages:
        if not 0 <= s < len(feature_info):
            raise ValueError(f"readout_stage {s} is not one of the {len(feature_info)} stages")
    if len(stages) == 2:
        fine, coarse = (feature_info[s].get("reduction") for s in stages)
        if fine is not None and coarse is not None and fine >= coarse:
            raise ValueError(
                f"A compartment decoder reads [fine, coarse] stages, but stage {stages[0]} (reduction {fine}) is not "
                f"finer than stage {stages[1]} (reduction {coarse})."
            )
    channels = [feature_info[s]["num_chs"] for s in stages]
    return CompartmentReadout(channels, num_classes, spatial_dims=spatial_dims)
