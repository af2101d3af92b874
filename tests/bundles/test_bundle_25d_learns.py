"""The 2.5D student the ``quick`` profile builds can fit a small multiple-instance problem in a few steps.

Issue 11, item 4: under ``medkd3d pipeline --quick`` the 2.5D MIL student with an EfficientNet-B0 encoder did not
learn at all at 32x32 slices in its 16-epoch (240-step) budget - training accuracy ~0.5 and training-subject AUC
~0.5 under either transform in either BatchNorm mode, validation AUC anywhere from 0.24 to 0.62 - while a
ResNet-10t encoder under the same recipe fit the training subjects. This test is the quick, data-free form of
that: bags of 4 noise stacks whose class is a small bright patch in the T1ce (positive) or T2/FLAIR (negative)
channels of one stack. The quick-profile student must fit 32 such bags in 40 steps of the bundle's own optimiser
settings; EfficientNet-B0 ends at a loss near 1 and accuracy ~0.6 there.
"""

from __future__ import annotations

from pathlib import Path

import torch
from monai.bundle import ConfigParser

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "brats_student_effnet25d"


def _quick_parser() -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / c) for c in ("train.json", "profiles/quick.json")])
    parser.update({"bundle_root": str(BUNDLE)})
    return parser


def _toy_bags(num_bags: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, 4, 12, 32, 32]`` noise bags (K=3 slices x 4 modalities per stack) and alternating labels 0, 1.

    One stack per bag holds a 4x4 patch of +1.5: in the T1ce channels (3-5) for class 1, in the T2 and FLAIR
    channels (6-11) for class 0, at a random stack and position - a bag label carried by one instance.
    """
    bags = torch.randn(num_bags, 4, 12, 32, 32, generator=generator) * 0.5
    labels = torch.arange(num_bags) % 2
    for i in range(num_bags):
        stack = int(torch.randint(0, 4, (1,), generator=generator))
        row, col = (int(v) for v in torch.randint(4, 24, (2,), generator=generator))
        channels = slice(3, 6) if labels[i] else slice(6, 12)
        bags[i, stack, channels, row : row + 4, col : col + 4] += 1.5
    return bags, labels


def test_quick_25d_student_fits_a_small_mil_problem() -> None:
    parser = _quick_parser()
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def")
    bags, labels = _toy_bags(32, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(
        network.parameters(),
        lr=parser.get_parsed_content("learning_rate"),
        weight_decay=parser.get_parsed_content("weight_decay"),
    )
    network.train()
    for _ in range(40):
        batch = torch.randperm(len(bags))[:8]
        loss = torch.nn.functional.cross_entropy(network(bags[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    network.eval()  # judged as it is used: BatchNorm running statistics, all bags at once
    with torch.no_grad():
        logits = network(bags)
    assert torch.nn.functional.cross_entropy(logits, labels).item() < 0.3
    assert (logits.argmax(1) == labels).float().mean().item() >= 0.9
