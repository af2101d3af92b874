"""Attention benchmark: PyTorch's fused attention against the explicit softmax product, in one run.

:class:`medkd3d.networks.vit3d.Attention` (the ViT's, MSGFF's and the HDKD transformers' attention) computes
``softmax(q k^T / sqrt(d)) v`` with ``torch.nn.functional.scaled_dot_product_attention``. This script measures what
that gains over writing the product out (``q @ k^T``, softmax, dropout, ``@ v``, as the module did before), per
token count the package's networks use: one training step (forward and backward) of one attention layer with the
same weights, both ways timed in turn within each repeat, median reported with the ratio measured in the same run.
It also reports the largest difference between the two layers' outputs in eval mode (no dropout), in the same
precision. On a GPU, ``amp`` runs the steps under float16 autocast, as the bundles train wherever CUDA is.
The results go to ``benchmarks/results/attention_cpu.md`` or ``attention_gpu.md`` (``--output``)::

    python benchmarks/bench_attention.py --threads 1
    python benchmarks/bench_attention.py --device cuda --precision fp32 amp --steps 20
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
RESULTS = Path(__file__).resolve().parent / "results"


class ExplicitAttention(Attention):
    """The same layer with the product written out: the reference the fused kernel is measured against."""

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * (dim // self.num_heads) ** -0.5).softmax(dim=-1)
        weights = torch.nn.functional.dropout(weights, self.attn_dropout_rate, self.training)
        return self.proj_drop(self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, dim)))


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of ``precision``: ``"amp"`` is float16, as MONAI's engines use with ``amp=True``."""
    return torch.autocast(device.type, dtype=torch.float16, enabled=precision == "amp")


def training_step(layer: Attention, inputs: Tensor, precision: str) -> Callable[[], None]:
    """Forward and backward of ``layer`` on ``inputs`` (a sum of the outputs as the loss), as a callable."""

    def step() -> None:
        layer.zero_grad(set_to_none=True)
        with autocast(inputs.device, precision):
            loss = layer(inputs).float().sum()
        loss.backward()

    return step


@torch.no_grad()
def output_difference(fused: Attention, explicit: Attention, inputs: Tensor, precision: str) -> float:
    """Largest absolute difference between the two layers' outputs in eval mode (no dropout)."""
    fused.eval()
    explicit.eval()
    with autocast(inputs.device, precision):
        difference = (fused(inputs).float() - explicit(inputs).float()).abs().max().item()
    fused.train()
    explicit.train()
    return difference


def time_layer(
    batch: int, tokens: int, width: int, heads: int, dropout: float, steps: int, device: torch.device, precision: str
) -> dict[str, float]:
    """Median seconds of one training step of the fused and the explicit layer, interleaved, and their largest
    output difference (``"max_abs_diff"``)."""
    torch.manual_seed(0)
    fused = Attention(width, heads, dropout_rate=dropout).to(device).train()
    explicit = ExplicitAttention(width, heads, dropout_rate=dropout).to(device).train()
    explicit.load_state_dict(fused.state_dict())
    inputs = torch.randn(batch, tokens, width, device=device, requires_grad=True)
    runs = {"fused": training_step(fused, inputs, precision), "explicit": training_step(explicit, inputs, precision)}
    warmup = 3 if device.type == "cuda" else 1  # allocator; on a GPU also cuBLAS handles and kernel selection
    times = time_interleaved(runs, steps, warmup=warmup, device=device)
    result = {name: statistics.median(values) / 1000 for name, values in times.items()}
    result["max_abs_diff"] = output_difference(fused, explicit, inputs, precision)
    return result


def machine(device: torch.device) -> str:
    """The processor or GPU, the torch threads and the torch version, in words."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    return f"{where}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def report(results: dict[tuple[str, str], dict[str, float]], command: str, device: torch.device, steps: int) -> str:
    """The Markdown table of :func:`time_layer`'s results per (layer, precision), with the machine and the command."""
    where = "a GPU" if device.type == "cuda" else "the CPU"
    lines = [
        f"# Attention on {where}: fused kernel against the explicit product",
        "",
        f"Command: `{command}`. Machine: {machine(device)}. Median of {steps} interleaved training steps (forward "
        "and backward) of one attention layer on random tokens; the ratio is fused over explicit in the same run "
        "(below 1: the fused kernel is faster). Difference: the largest absolute difference of the two layers' "
        "outputs in eval mode, in the same precision (amp: float16 autocast).",
        "",
        "| layer | batch x tokens x width, heads | attention dropout | precision | explicit (s) | fused (s) | ratio | "
        "difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (label, precision), seconds in results.items():
        batch, tokens, width, heads, dropout = next(layer[1:] for layer in LAYERS if layer[0] == label)
        lines.append(
            f"| {label} | {batch} x {tokens} x {width}, {heads} | {dropout} | {precision} | "
            f"{seconds['explicit']:.4f} | {seconds['fused']:.4f} | {seconds['fused'] / seconds['explicit']:.2f} | "
            f"{seconds['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads (default: 1, a --jobs 2 worker's)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per layer and way (default: 5)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=("fp32", "amp"),
        default=["fp32"],
        help="fp32 and/or amp (float16 autocast, CUDA only; default: fp32)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="Markdown file to write (default: results/attention_<cpu|gpu>.md; '': print only)",
    )
    args = parser.parse_args(argv)
    if "amp" in args.precision and args.device != "cuda":
        parser.error("--precision amp needs --device cuda (the bundles use autocast on CUDA only)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    results = {
        (label, precision): time_layer(*layer, steps=args.steps, device=device, precision=precision)
        for precision in args.precision
        for label, *layer in LAYERS
    }
    command = (
        f"python benchmarks/bench_attention.py --device {args.device} --precision {' '.join(args.precision)} "
        f"--threads {args.threads} --steps {args.steps}"
    )
    text = report(results, command, device, args.steps)
    print(text)
    output = (
        RESULTS / f"attention_{'gpu' if device.type == 'cuda' else 'cpu'}.md" if args.output is None else args.output
    )
    if output:
        atomic_write_text(output, text)


if __name__ == "__main__":
    main()
