"""The auxiliary tumour-compartment task: the loss against hand values, and the handler on a real trainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from torch import nn

from medkd3d.engines import AuxiliaryFeatureLoss
from medkd3d.losses import TumourCompartmentLoss


def _seg(shape=(1, 1, 4, 4, 4)) -> torch.Tensor:
    """A label map whose first 2x2x2 octant is enhancing (4), two voxels are core (1), the rest background."""
    seg = torch.zeros(shape, dtype=torch.uint8)
    seg[:, :, :2, :2, :2] = 4
    seg[:, :, 3, 3, 2:] = 1
    return seg


def test_compartment_loss_matches_a_hand_computation() -> None:
    loss = TumourCompartmentLoss([3], labels=(1, 2, 4))
    with torch.no_grad():  # every head predicts the constant logit 0 (probability 0.5) for every compartment
        loss.heads[0].weight.zero_()
        loss.heads[0].bias.zero_()
    total, terms = loss([torch.randn(1, 3, 2, 2, 2)], _seg())
    # targets on the 2x2x2 grid: label 1 covers 2 of the 8 voxels of one cell (0.25), label 2 nothing,
    # label 4 one whole cell (1.0). BCE of p=0.5 is log 2 whatever the target.
    bce = math.log(2.0)
    eps = 1e-3
    dice = [
        1 - (2 * 0.5 * 0.25 + eps) / (8 * 0.5 + 0.25 + eps),
        1 - eps / (8 * 0.5 + eps),
        1 - (2 * 0.5 + eps) / (4 + 1 + eps),
    ]
    assert total.item() == pytest.approx(bce + sum(dice) / 3, rel=1e-5)
    assert terms == {"compartments": total}


def test_compartment_loss_averages_its_feature_maps_and_prefers_the_right_map() -> None:
    loss = TumourCompartmentLoss([1, 1], labels=(4,), dice=False)
    with torch.no_grad():
        for head in loss.heads:
            head.weight.fill_(10.0)
            head.bias.fill_(-5.0)
    seg = _seg()
    target = F.adaptive_avg_pool3d((seg == 4).float(), (2, 2, 2))
    right, wrong = target.clone(), 1 - target  # a feature map that shows the enhancing cell, and its opposite
    total, _ = loss([right, wrong], seg)
    expected = [F.binary_cross_entropy_with_logits(10 * f - 5, target) for f in (right, wrong)]
    assert total.item() == pytest.approx(sum(e.item() for e in expected) / 2, rel=1e-5)
    assert expected[0] < expected[1]


def test_compartment_loss_for_network_reads_the_stage_channels(tiny_net) -> None:
    loss = TumourCompartmentLoss.for_network(tiny_net(width=4), stages=[1, 0])
    assert [head.in_channels for head in loss.heads] == [8, 4]
    with pytest.raises(ValueError, match="not indices of the 2 feature_info entries of TinyNet3d"):
        TumourCompartmentLoss.for_network(tiny_net(), stages=[2])
    with pytest.raises(ValueError, match="2 heads but got 1"):
        loss([torch.zeros(1, 8, 2, 2, 2)], _seg())


def _segmented_items(n: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    items = []
    for i in range(n):
        seg = torch.zeros(1, 8, 8, 8, dtype=torch.uint8)
        seg[:, 2:5, 2:5, 2:5] = 4 if i % 2 else 2
        image = torch.randn(2, 8, 8, 8, generator=generator) + 2.0 * (seg > 0)
        items.append({"image": image, "seg": seg, "label": torch.tensor(i % 2), "subject": f"sub-{i:03d}"})
    return items


def _trainer(
    network: nn.Module, items: list[dict], handler: AuxiliaryFeatureLoss, epochs: int = 1
) -> SupervisedTrainer:
    optimizer = torch.optim.Adam([*network.parameters(), *handler.loss.parameters()], lr=0.02)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=DataLoader(Dataset(items), batch_size=2, shuffle=False),
        network=network,
        optimizer=optimizer,
        loss_function=nn.CrossEntropyLoss(),
        train_handlers=[handler],
    )
    return trainer


def test_handler_adds_the_weighted_term_to_the_loss_the_trainer_backpropagates(tiny_net) -> None:
    torch.manual_seed(0)
    network = tiny_net()
    loss = TumourCompartmentLoss.for_network(network, stages=[0])
    handler = AuxiliaryFeatureLoss(loss, stages=[0], weight=0.5)
    trainer = _trainer(network, _segmented_items(4), handler)
    seen = []

    @trainer.on(IterationEvents.BACKWARD_COMPLETED)
    def _check(engine):
        out = engine.state.output
        image = engine.state.batch["image"]
        with torch.no_grad():  # recompute both terms with the weights of this iteration (before the step)
            features = network.forward_features(image)
            ce = F.cross_entropy(network.forward_head(features), engine.state.batch["label"])
            term = 0.5 * loss([features[0]], engine.state.batch["seg"])[0]
        seen.append((out["loss"].item(), ce.item() + term.item(), out["loss_seg"].item(), term.item()))
        assert loss.heads[0].weight.grad is not None and loss.heads[0].weight.grad.abs().sum() > 0

    trainer.run()
    assert len(seen) == 2
    for total, expected_total, reported, expected_term in seen:
        assert total == pytest.approx(expected_total, rel=1e-5)
        assert reported == pytest.approx(expected_term, rel=1e-5)
    assert not network.stem._forward_hooks, "the feature hook must be removed when training ends"


def test_handler_learns_the_compartments(tiny_net) -> None:
    torch.manual_seed(0)
    network = tiny_net()
    loss = TumourCompartmentLoss.for_network(network, stages=[0], labels=(2, 4))
    handler = AuxiliaryFeatureLoss(loss, stages=[0])
    terms = []
    trainer = _trainer(network, _segmented_items(4), handler, epochs=15)
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: terms.append(e.state.output["loss_seg"].item()))
    trainer.run()
    assert sum(terms[-4:]) < 0.75 * sum(terms[:4])


def test_weight_zero_leaves_the_trainer_alone(tiny_net) -> None:
    network = tiny_net()
    handler = AuxiliaryFeatureLoss(TumourCompartmentLoss.for_network(network, [0]), stages=[0], weight=0.0)
    items = [{k: v for k, v in item.items() if k != "seg"} for item in _segmented_items(2)]
    trainer = _trainer(network, items, handler)
    trainer.run()  # no segmentation needed
    assert "loss_seg" not in trainer.state.output


def test_missing_segmentations_are_named_before_training(tiny_net) -> None:
    network = tiny_net()
    handler = AuxiliaryFeatureLoss(TumourCompartmentLoss.for_network(network, [0]), stages=[0])
    items = _segmented_items(4)
    items[1]["seg"] = None
    with pytest.raises(ValueError, match=r"1 have none: sub-001.*seg_aux_weight=0"):
        _trainer(network, items, handler).run()
    with pytest.raises(ValueError, match="not indices of the 2 feature_info entries of TinyNet3d"):
        _trainer(network, _segmented_items(2), AuxiliaryFeatureLoss(handler.loss, stages=[5])).run()
    with pytest.raises(ValueError, match="at least one stage"):
        AuxiliaryFeatureLoss(handler.loss, stages=[])
