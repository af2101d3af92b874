"""Attention benchmark: PyTorch's fused attention against the explicit softmax product, in one run, on the CPU.

:class:`medkd3d.networks.vit3d.Attention` (the ViT's, MSGFF's and the HDKD transformers' attention) computes
``softmax(q k^T / sqrt(d)) v`` with ``torch.nn.functional.scaled_dot_product_attention``. This script measures what
that gains over writing the product out (``q @ k^T``, softmax, dropout, ``@ v``, as the module did before), per
token count the package's networks use: one training step (forward and backward) of one attention layer with the
same weights, both ways timed in turn within each repeat, median reported with the ratio measured in the same run.
The results go to ``benchmarks/results/attention_cpu.md`` (``--output``)::

    python benchmarks/bench_attention.py --threads 1
"""

from __future__ import annotations

import argparse
import platform
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from medkd3d.networks.profile import time_interleaved
from medkd3d.networks.vit3d import Attention
from medkd3d.utils import atomic_write_text

#: ``(label, batch, tokens, width, heads, dropout)`` of the attention layers of the package's networks.
LAYERS: tuple[tuple[str, int, int, int, int, float], ...] = (
    ("VGG-ViT teacher (quick): ViT, 2^3 patches + class token", 8, 9, 192, 3, 0.1),
    ("VGG-ViT teacher (quick): MSGFF over VGG stages 2-4 and the ViT", 8, 73, 64, 4, 0.0),
    ("VGG-ViT teacher (quick) with MSGFF over VGG stage 1 too", 8, 585, 64, 4, 0.0),
    ("VGG-ViT teacher (default, 128^3): ViT, 8^3 patches + class token", 2, 513, 768, 12, 0.1),
    ("VGG-ViT teacher (default, 128^3): MSGFF over VGG stages 2-4 and the ViT", 2, 1600, 256, 4, 0.0),
)
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "attention_cpu.md"


class ExplicitAttention(Attention):
    """The same layer with the product written out: the reference the fused kernel is measured against."""

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * (dim // self.num_heads) ** -0.5).softmax(dim=-1)
        weights = torch.nn.functional.dropout(weights, self.attn_dropout_rate, self.training)
        return self.proj_drop(self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, dim)))


def training_step(layer: Attention, inputs: Tensor) -> Callable[[], None]:
    """Forward and backward of ``layer`` on ``inputs`` (a sum of the outputs as the loss), as a callable."""

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        layer(inputs).sum().backward()

    return step


def time_layer(batch: int, tokens: int, width: int, heads: int, dropout: float, steps: int) -> dict[str, float]:
    """Median seconds of one training step of the fused and the explicit layer, interleaved."""
    torch.manual_seed(0)
    fused = Attention(width, heads, dropout_rate=dropout).train()
    explicit = ExplicitAttention(width, heads, dropout_rate=dropout).train()
    explicit.load_state_dict(fused.state_dict())
    inputs = torch.randn(batch, tokens, width, requires_grad=True)
    runs = {"fused": training_step(fused, inputs), "explicit": training_step(explicit, inputs)}
    times = time_interleaved(runs, steps)  # one warm-up call each: allocator
    return {name: statistics.median(values) / 1000 for name, values in times.items()}


def report(results: dict[str, dict[str, float]], threads: int, steps: int) -> str:
    """The Markdown table of :func:`time_layer`'s results, with the machine and the command."""
    lines = [
        "# Attention on the CPU: fused kernel against the explicit product",
        "",
        f"Command: `python benchmarks/bench_attention.py --threads {threads} --steps {steps}`. Machine: "
        f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}. Median of "
        f"{steps} interleaved training steps (forward and backward) of one attention layer on random tokens; the "
        "ratio is fused over explicit in the same run (below 1: the fused kernel is faster).",
        "",
        "| layer | batch x tokens x width, heads | attention dropout | explicit (s) | fused (s) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for label, batch, tokens, width, heads, dropout in LAYERS:
        seconds = results[label]
        lines.append(
            f"| {label} | {batch} x {tokens} x {width}, {heads} | {dropout} | {seconds['explicit']:.4f} | "
            f"{seconds['fused']:.4f} | {seconds['fused'] / seconds['explicit']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads (default: 1, a --jobs 2 worker's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per layer and way (default: 5)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="Markdown file to write ('' : print only)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {label: time_layer(*layer, steps=args.steps) for label, *layer in LAYERS}
    text = report(results, args.threads, args.steps)
    print(text)
    if args.output:
        atomic_write_text(args.output, text)


if __name__ == "__main__":
    main()
