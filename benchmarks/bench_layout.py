"""Layout benchmark: one CPU training step of each 3D network channels-first against channels-last, in one run.

The ``quick`` profiles store the 3D networks channels-last on a CPU (``channels_last``,
:func:`medkd3d.networks.place_network`) and every engine feeds the networks plain tensors
(:func:`medkd3d.engines.prepare_plain_batch`). This script measures why, per network: the time of one training step
(forward, backward, AdamW step) on random data, with

* ``channels-first``: the default layout, from a plain tensor;
* ``channels-last``: ``place_network(..., channels_last=True)``, from a plain tensor;
* ``channels-last, MetaTensor``: the same network fed a MONAI ``MetaTensor``, as MONAI's default batch preparation
  would feed it.

The three are timed in turn within each repeat (interleaved, so a change in the load of a shared machine touches
them alike); the median step of each is reported with its ratio to channels-first, measured in the same run. The
networks are the ``quick`` profiles' VGG-ViT teacher, ResNet-10 student and HDKD teacher at 32^3 and batch 8, and
the full-size default 3D student, EfficientNet-B0 with group norm, at 64^3 and batch 2. The results go to
``benchmarks/results/layout_cpu.md`` (``--output``)::

    python benchmarks/bench_layout.py --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from torch import nn

from medkd3d.networks import create_model, place_network
from medkd3d.networks.profile import time_interleaved
from medkd3d.utils import atomic_write_text

#: ``(label, registry name, network arguments, input shape with the batch)``.
NETWORKS: tuple[tuple[str, str, dict[str, Any], tuple[int, ...]], ...] = (
    (
        "VGG-ViT teacher (quick)",
        "vggvit3d",
        dict(
            img_size=[32, 32, 32], width_multiplier=0.25, vit_hidden_size=192, vit_layers=4, vit_heads=3, msgff_dim=64
        ),
        (8, 4, 32, 32, 32),
    ),
    ("ResNet-10 student (quick)", "resnet10_3d", {"norm": "batch", "width_multiplier": 0.375}, (8, 4, 32, 32, 32)),
    ("HDKD teacher (quick)", "hdkd_teacher3d", {"depths": [2, 2, 3], "head_pooling": "avgmax"}, (8, 4, 32, 32, 32)),
    (
        "EfficientNet-B0 student (default, at 64^3)",
        "efficientnet3d_b0",
        {"norm": ("group", {"num_groups": 8}), "head_pooling": "avgmax"},
        (2, 4, 64, 64, 64),
    ),
)
LAYOUTS = ("channels-first", "channels-last", "channels-last, MetaTensor")
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "layout_cpu.md"


def training_step(network: nn.Module, inputs: torch.Tensor) -> Callable[[], None]:
    """One AdamW training step of ``network`` on ``inputs`` (a sum of the logits as the loss), as a callable."""
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        network(inputs).sum().backward()
        optimizer.step()

    return step


def time_layouts(name: str, kwargs: dict[str, Any], shape: tuple[int, ...], steps: int) -> dict[str, float]:
    """Median seconds of one training step of the network in each layout of :data:`LAYOUTS`, interleaved."""
    torch.manual_seed(0)
    first = create_model(name, in_channels=shape[1], num_classes=2, **kwargs).train()
    last = create_model(name, in_channels=shape[1], num_classes=2, **kwargs).train()
    last.load_state_dict(first.state_dict())
    place_network(last, "cpu", channels_last=True)
    inputs = torch.randn(shape)
    runs = {
        "channels-first": training_step(first, inputs),
        "channels-last": training_step(last, inputs),
        "channels-last, MetaTensor": training_step(last, MetaTensor(inputs)),
    }
    times = time_interleaved(runs, steps)  # one warm-up call each: allocator, oneDNN primitive caches
    return {layout: statistics.median(values) / 1000 for layout, values in times.items()}


def report(results: dict[str, dict[str, float]], threads: int, steps: int) -> str:
    """The Markdown table of :func:`time_layouts`' results, with the machine and the command."""
    lines = [
        "# 3D network layouts on the CPU: one training step",
        "",
        f"Command: `python benchmarks/bench_layout.py --threads {threads} --steps {steps}`. Machine: "
        f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}. Median of "
        f"{steps} interleaved steps (forward, backward, AdamW) on random data; the ratio is to channels-first in "
        "the same run (below 1: faster).",
        "",
        "| network | input | " + " | ".join(f"{layout} (s)" for layout in LAYOUTS) + " | channels-last ratio | "
        "channels-last, MetaTensor ratio |",
        "|---|---|" + "---|" * (len(LAYOUTS) + 2),
    ]
    for label, _, _, shape in NETWORKS:
        seconds = results[label]
        base = seconds["channels-first"]
        cells = [f"{seconds[layout]:.3f}" for layout in LAYOUTS]
        ratios = [f"{seconds[layout] / base:.2f}" for layout in LAYOUTS[1:]]
        lines.append(f"| {label} | {' x '.join(map(str, shape))} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads (default: 1, a --jobs 2 worker's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per layout (default: 5)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="Markdown file to write ('' : print only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {label: time_layouts(name, kwargs, shape, args.steps) for label, name, kwargs, shape in NETWORKS}
    text = report(results, args.threads, args.steps)
    print(text)
    if args.output:
        atomic_write_text(args.output, text)


if __name__ == "__main__":
    main()
