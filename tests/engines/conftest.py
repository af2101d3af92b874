"""Tiny networks, losses and data shared by the engine tests (real modules, a few hundred parameters)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class TinyNet3d(nn.Module):
    """A two-stage 3D CNN following the medkd3d network contract, with BatchNorm (so eval mode matters)."""

    def __init__(self, in_channels: int = 2, num_classes: int = 2, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(in_channels, width, 3, padding=1), nn.BatchNorm3d(width), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv3d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(2 * width, num_classes)
        self.feature_info = [
            {"num_chs": width, "reduction": 1, "module": "stem"},
            {"num_chs": 2 * width, "reduction": 2, "module": "stage"},
        ]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        first = self.stem(x)
        return [first, self.stage(first)]

    def forward_head(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(features[-1].mean(dim=(2, 3, 4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ProjectedFeatureLoss(nn.Module):
    """Feature loss with a trainable 1x1x1 projector: MSE(projector(f_student), f_teacher) on the last stage."""

    def __init__(self, student_channels: int, teacher_channels: int) -> None:
        super().__init__()
        self.projector = nn.Conv3d(student_channels, teacher_channels, 1)
        self.calls: list[dict] = []

    def forward(self, student_features, teacher_features, **batch_kwargs):
        self.calls.append(batch_kwargs)
        term = F.mse_loss(self.projector(student_features[-1]), teacher_features[-1])
        return term, {"feat_proj": term}


def make_items(n: int, shape=(2, 8, 8, 8), seed: int = 0) -> list[dict]:
    """``n`` dictionaries with a learnable label (the sign of the mean of the first channel)."""
    generator = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        label = i % 2
        image = torch.randn(shape, generator=generator)
        image[0] += 1.0 if label else -1.0
        items.append({"image": image, "label": torch.tensor(label), "subject": f"sub-{i:03d}"})
    return items


@pytest.fixture
def tiny_net():
    return TinyNet3d


@pytest.fixture
def projected_feature_loss():
    return ProjectedFeatureLoss


@pytest.fixture
def items():
    return make_items
