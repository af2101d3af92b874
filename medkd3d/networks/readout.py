"""``CompartmentReadout``: grade from the tumour-compartment volumes a network predicts, with a fitted linear read.

The grade of a glioma shows in how much of it is necrotic core, edema and enhancing tumour. A network trained with
:class:`~medkd3d.losses.TumourCompartmentLoss` learns to predict each compartment's share of every voxel of a stage
map; the means of those shares over the map are soft compartment volumes. On the synthetic default a logistic
regression on their logarithms, fitted on the training subjects after training, ranks the held-out subjects better
than the network's own pooled classifier (``benchmarks/results/task_ceiling.md``). This module puts that regression
inside the network, so that checkpoints, evaluation, distillation and every export carry it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["CompartmentReadout", "compartment_log_volumes", "stage_readout"]


def compartment_log_volumes(logits: Tensor, eps: float = 1e-4) -> Tensor:
    """``[B, C]``: the logarithm of each compartment's mean predicted share over the voxels of ``[B, C, *S]`` logits.

    Args:
        logits: per-voxel compartment logits of a compartment head.
        eps: added to each mean share before the logarithm (a compartment can be absent).
    """
    return torch.log(torch.sigmoid(logits.float()).flatten(2).mean(2) + eps)


class CompartmentReadout(nn.Module):
    """Compartment shares of a stage map, their log-volumes, and a linear classifier fitted on them after training.

    ``head`` is a 1x1x1 convolution giving one logit per compartment and voxel; the auxiliary loss supervises it
    (:meth:`~medkd3d.losses.TumourCompartmentLoss.for_network` shares it instead of creating its own head).
    ``classifier`` is not trained by gradient: :meth:`fit` sets it from a logistic regression on the log-volumes
    of the training subjects, and only then does :attr:`fitted` become true. Networks holding a readout use its
    logits once it is fitted and their own classifier before.

    Args:
        in_channels: channels of the stage map the head reads.
        num_classes: number of classes (the fit needs 2).
        compartments: number of compartments (BraTS: 3).
        eps: added to each mean share before the logarithm (a compartment can be absent).
        spatial_dims: 3 for volumes, 2 for slices.
    """

    def __init__(
        self, in_channels: int, num_classes: int = 2, compartments: int = 3, eps: float = 1e-4, spatial_dims: int = 3
    ) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.head = conv(in_channels, compartments, kernel_size=1)
        self.classifier = nn.Linear(compartments, num_classes)
        self.classifier.requires_grad_(False)  # set by fit(), never by the optimizer
        self.eps = eps
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def log_volumes(self, feature: Tensor) -> Tensor:
        """``[B, compartments]``: :func:`compartment_log_volumes` of the head's logits on ``feature``."""
        return compartment_log_volumes(self.head(feature.float()), self.eps)

    def forward(self, feature: Tensor) -> Tensor:
        """Logits ``[B, num_classes]`` of the fitted classifier."""
        return self.classifier(self.log_volumes(feature))

    def replace(self, logits: Tensor, feature: Tensor) -> Tensor:
        """``logits`` (the network's own) until the readout is fitted, the readout's logits on ``feature`` after.

        A tensor switch rather than a Python branch, so that traced and ONNX exports follow the buffer's value.
        """
        fitted = self.fitted.to(logits.dtype)
        return fitted * self(feature).to(logits.dtype) + (1 - fitted) * logits

    @torch.no_grad()
    def adopt_head(self, source: CompartmentReadout) -> None:
        """Copy the head of another network's readout and freeze it: this readout then reads the compartments the
        way ``source``'s network learned to see them (a student reusing its teacher's head on features distilled
        to match the teacher's, as SimKD reuses the teacher's classifier).

        Raises:
            ValueError: if the heads' shapes differ.
        """
        if source.head.weight.shape != self.head.weight.shape:
            raise ValueError(
                f"Cannot adopt a compartment head of shape {tuple(source.head.weight.shape)} into one of shape "
                f"{tuple(self.head.weight.shape)}: the stages the two readouts read differ in width."
            )
        self.head.load_state_dict(source.head.state_dict())
        self.head.requires_grad_(False)

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
    feature_info: Sequence[Mapping[str, Any]], stage: int | None, num_classes: int, spatial_dims: int = 3
) -> CompartmentReadout | None:
    """The :class:`CompartmentReadout` a network holds on its stage ``stage`` (``None``: no readout).

    Args:
        feature_info: the network's timm-style ``feature_info`` (``num_chs`` of each stage).
        stage: index into ``feature_info`` of the stage the readout reads, or ``None``.
        num_classes: number of classes.
        spatial_dims: 3 for volumes, 2 for slices.

    Raises:
        ValueError: if ``stage`` is not an index of ``feature_info``.
    """
    if stage is None:
        return None
    if not 0 <= stage < len(feature_info):
        raise ValueError(f"readout_stage {stage} is not one of the {len(feature_info)} stages")
    return CompartmentReadout(feature_info[stage]["num_chs"], num_classes, spatial_dims=spatial_dims)
