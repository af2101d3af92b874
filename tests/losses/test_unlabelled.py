"""Label-free items (label -1): distilled by the KD losses, left out of their CE term, refused by CE-only training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medkd3d.losses import (
    UNLABELLED,
    DKDLoss,
    FocalLoss,
    KDLoss,
    LabelledCrossEntropyLoss,
    TokenDistillationLoss,
    class_weights_from_labels,
    labelled_mask,
)

STUDENT = [[1.0, 2.0], [0.3, -1.0], [0.0, 0.5], [-0.7, 1.1]]
TEACHER = [[2.0, 0.5], [0.0, 1.0], [3.0, -2.0], [0.2, 0.1]]
TARGET = [1, -1, 0, -1]  # items 1 and 3 have no grade
WEIGHTS = [1.5, 0.5]


def _hand_ce(logits, target, weight=None) -> float:
    """Class-weighted cross-entropy of the labelled items, as nn.CrossEntropyLoss(weight) averages it."""
    num, den = 0.0, 0.0
    for row, y in zip(logits, target):
        if y < 0:
            continue
        log_p = row[y] - math.log(sum(math.exp(z) for z in row))
        w = 1.0 if weight is None else weight[y]
        num -= w * log_p
        den += w
    return num / den


def _tensors(requires_grad: bool = True):
    student = torch.tensor(STUDENT, dtype=torch.float64, requires_grad=requires_grad)
    return student, torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(TARGET)


@pytest.mark.parametrize("weight", [None, WEIGHTS])
def test_kd_loss_ce_term_uses_labelled_items_only(weight) -> None:
    student, teacher, target = _tensors()
    ce = nn.CrossEntropyLoss(weight=None if weight is None else torch.tensor(weight, dtype=torch.float64))
    loss = KDLoss(alpha=0.25, temperature=2.0, ce_loss=ce)
    total, parts = loss(student, teacher, target)
    assert parts["ce"].item() == pytest.approx(0.75 * _hand_ce(STUDENT, TARGET, weight), rel=1e-10)
    # the KD term is the mean over all four items, labelled or not
    full_kd = KDLoss(alpha=1.0, temperature=2.0)(student, teacher, None)[0]
    assert parts["kd"].item() == pytest.approx(0.25 * full_kd.item(), rel=1e-10)
    assert total.item() == pytest.approx(parts["ce"].item() + parts["kd"].item())


def test_unlabelled_items_get_gradients_from_the_kd_term_only() -> None:
    student, teacher, target = _tensors()
    total, parts = KDLoss(alpha=0.5, temperature=2.0)(student, teacher, target)
    (grad_total,) = torch.autograd.grad(total, student, retain_graph=True)
    (grad_kd,) = torch.autograd.grad(parts["kd"], student, retain_graph=True)
    (grad_ce,) = torch.autograd.grad(parts["ce"], student)
    unlabelled = ~labelled_mask(target)
    assert unlabelled.tolist() == [False, True, False, True]
    assert torch.equal(grad_ce[unlabelled], torch.zeros_like(grad_ce[unlabelled]))
    torch.testing.assert_close(grad_total[unlabelled], grad_kd[unlabelled])
    assert grad_kd[unlabelled].abs().sum() > 0 and grad_ce[~unlabelled].abs().sum() > 0


def test_batch_without_labels_has_zero_ce_and_still_trains() -> None:
    student, teacher, _ = _tensors()
    none = torch.full((4,), UNLABELLED)
    total, parts = KDLoss(alpha=0.5, temperature=2.0)(student, teacher, none)
    assert parts["ce"].item() == 0.0 and total.item() == pytest.approx(parts["kd"].item())
    total.backward()
    assert student.grad.abs().sum() > 0
    # even when CE is the only term (alpha=0), backward() works on the exact zero
    student.grad = None
    total, parts = KDLoss(alpha=0.0)(student, None, none)
    total.backward()
    assert total.item() == 0.0 and torch.equal(student.grad, torch.zeros_like(student))


def test_token_loss_masks_the_class_token_ce() -> None:
    cls_logits, teacher, target = _tensors()
    dist_logits = torch.tensor(TEACHER[::-1], dtype=torch.float64, requires_grad=True)
    total, parts = TokenDistillationLoss(alpha=0.5, temperature=1.0)((cls_logits, dist_logits), teacher, target)
    assert parts["ce"].item() == pytest.approx(0.5 * _hand_ce(STUDENT, TARGET), rel=1e-10)
    total.backward()
    # unlabelled rows of the class token get nothing; the distillation token learns from every row
    assert torch.equal(cls_logits.grad[1], torch.zeros(2, dtype=torch.float64))
    assert (dist_logits.grad.abs().sum(dim=1) > 0).all()


def test_cross_entropy_training_refuses_unlabelled_items_clearly() -> None:
    student, _, target = _tensors()
    with pytest.raises(ValueError, match=r"2 of 4 item\(s\) have label -1 .*DistillationTrainer"):
        LabelledCrossEntropyLoss()(student, target)
    with pytest.raises(ValueError, match=r"labels \[2\] are not class indices in \[0, 2\)"):
        LabelledCrossEntropyLoss()(student, torch.tensor([0, 1, 2, 0]))
    labelled = torch.tensor([1, 0, 0, 1])
    weight = torch.tensor(WEIGHTS, dtype=torch.float64)
    expected = nn.CrossEntropyLoss(weight=weight)(student, labelled)
    assert torch.equal(LabelledCrossEntropyLoss(weight=weight)(student, labelled), expected)
    # losses whose every term needs the label refuse unlabelled items the same way
    with pytest.raises(ValueError, match="have label -1"):
        FocalLoss()(student, target)
    with pytest.raises(ValueError, match="have label -1"):
        DKDLoss()(student, torch.tensor(TEACHER, dtype=torch.float64), target)
    with pytest.raises(ValueError, match=r"labels \[-2\] are not class indices"):
        KDLoss()(student, torch.tensor(TEACHER, dtype=torch.float64), torch.tensor([0, -2, 1, -1]))


def test_supervised_trainer_with_labelled_ce_rejects_label_minus_one() -> None:
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer

    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
    items = [{"image": torch.randn(8), "label": torch.tensor(y)} for y in (0, 1, -1, 1)]
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=DataLoader(Dataset(items), batch_size=4),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=LabelledCrossEntropyLoss(),
    )
    with pytest.raises(ValueError, match=r"1 of 4 item\(s\) have label -1 \(unlabelled subjects\)"):
        trainer.run()


def test_class_weights_ignore_unlabelled_subjects() -> None:
    expected = class_weights_from_labels([0, 1, 1, 1], num_classes=2)
    np.testing.assert_allclose(class_weights_from_labels([0, None, 1, -1, 1, 1], num_classes=2), expected)
    np.testing.assert_allclose(class_weights_from_labels(torch.tensor([-1, 0, 1, 1, 1]), num_classes=2), expected)
    with pytest.raises(ValueError, match=r"integers in \[0, 2\)"):
        class_weights_from_labels([None, -1], num_classes=2)
    with pytest.raises(ValueError, match=r"integers in \[0, 2\)"):
        class_weights_from_labels([0, 1, -3], num_classes=2)


def test_volume_to_slice_kd_masks_repeated_labels_of_per_stack_logits() -> None:
    from medkd3d.losses import VolumeToSliceKDLoss

    student, teacher, target = _tensors()
    per_stack = torch.stack([student, student.flip(1)], dim=1)  # [B, S=2, C]
    _, parts = VolumeToSliceKDLoss(alpha=0.5, temperature=2.0)(per_stack, teacher, target)
    flat = per_stack.reshape(8, 2).tolist()
    assert parts["ce"].item() == pytest.approx(0.5 * _hand_ce(flat, [y for y in TARGET for _ in range(2)]), rel=1e-10)
