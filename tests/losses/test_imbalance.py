"""Class weights (inverse frequency, Cui et al. effective number) and FocalLoss, on BraTS 2019's 259/76 split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medkd3d.losses import FocalLoss, KDLoss, class_weights_from_counts, class_weights_from_labels

# BraTS 2019 training set: 76 LGG (class 0) and 259 HGG (class 1).
BRATS19_LABELS = [0] * 76 + [1] * 259


def test_inverse_frequency_weights_on_brats2019():
    weights = class_weights_from_labels(BRATS19_LABELS, num_classes=2)
    # w_c ∝ 1/n_c, normalised to sum to 2: w_LGG = 2 * 259 / 335, w_HGG = 2 * 76 / 335.
    np.testing.assert_allclose(weights.numpy(), [2 * 259 / 335, 2 * 76 / 335], rtol=1e-6)
    assert weights.dtype == torch.float32


def test_effective_number_weights_on_brats2019():
    beta = 0.999
    weights = class_weights_from_labels(torch.tensor(BRATS19_LABELS), num_classes=2, method="effective", beta=beta)
    effective = [(1 - beta**n) / (1 - beta) for n in (76, 259)]  # about 73.2 and 228.3 "effective" subjects
    inverse = [1 / e for e in effective]
    expected = [2 * w / sum(inverse) for w in inverse]
    np.testing.assert_allclose(weights.numpy(), expected, rtol=1e-6)
    # Effective-number weights are milder than inverse frequency; beta=0 gives equal weights.
    assert weights[0] < class_weights_from_labels(BRATS19_LABELS, 2)[0]
    np.testing.assert_allclose(class_weights_from_counts([76, 259], method="effective", beta=0.0).numpy(), [1, 1])


def test_class_weights_reject_bad_labels():
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no samples"):
        class_weights_from_labels([0, 1, 1], num_classes=3)
    with pytest.raises(ValueError, match=r"integers in \[0, 2\)"):
        class_weights_from_labels([0, 1, 2], num_classes=2)
    with pytest.raises(ValueError, match="integer class indices or None"):
        class_weights_from_labels([0, "HGG", 1], num_classes=2)
    with pytest.raises(ValueError, match="beta"):
        class_weights_from_counts([3, 4], method="effective", beta=1.0)
    with pytest.raises(ValueError, match="method"):
        class_weights_from_counts([3, 4], method="sqrt")


LOGITS = [[2.0, -1.0], [0.5, 0.7], [-0.3, 1.2], [1.0, 1.0]]
TARGET = [0, 1, 0, 1]


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = torch.tensor(LOGITS), torch.tensor(TARGET)
    weight = class_weights_from_labels(BRATS19_LABELS, 2)
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(
        nn.CrossEntropyLoss()(logits, target).item(), rel=1e-6
    )
    assert FocalLoss(gamma=0.0, weight=weight)(logits, target).item() == pytest.approx(
        nn.CrossEntropyLoss(weight=weight)(logits, target).item(), rel=1e-6
    )


def test_focal_matches_hand_computation():
    gamma, weight = 2.0, [1.5, 0.5]
    e = np.exp(np.asarray(LOGITS))
    p = e / e.sum(axis=1, keepdims=True)
    per_sample = [-weight[y] * (1 - p[i, y]) ** gamma * math.log(p[i, y]) for i, y in enumerate(TARGET)]
    loss = FocalLoss(gamma=gamma, weight=torch.tensor(weight), reduction="none")
    np.testing.assert_allclose(loss(torch.tensor(LOGITS), torch.tensor(TARGET)).numpy(), per_sample, rtol=1e-5)
    mean = FocalLoss(gamma=gamma, weight=weight)(torch.tensor(LOGITS), torch.tensor(TARGET))
    assert mean.item() == pytest.approx(sum(per_sample) / sum(weight[y] for y in TARGET), rel=1e-5)
    # The focusing term down-weights the easy first sample (p = 0.95) far more than the hard third one.
    assert per_sample[0] < 0.01 * per_sample[2]


def test_focal_loss_drops_in_as_ce_term():
    logits, target = torch.tensor(LOGITS), torch.tensor(TARGET)
    focal = FocalLoss(gamma=2.0, weight=[1.5, 0.5])
    total, components = KDLoss(alpha=0.0, ce_loss=focal)(logits, None, target)
    assert total.item() == pytest.approx(focal(logits, target).item(), rel=1e-6)
    assert list(components) == ["ce"]


def test_focal_rejects_bad_arguments():
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        FocalLoss(reduction="batchmean")
    with pytest.raises(ValueError, match="weight has 3 entries but the logits have 2 classes"):
        FocalLoss(weight=[1.0, 1.0, 1.0])(torch.tensor(LOGITS), torch.tensor(TARGET))
