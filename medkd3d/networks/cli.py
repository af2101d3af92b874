"""``medkd3d models``: a table of every registered model - parameters, GFLOPs and eager latency at an input.

Input shapes. Without ``--input-shape`` each model gets its registry ``default_input_shape`` (``--tiny``: its tiny
configuration and ``tiny_input_shape``). ``--input-shape C X Y Z`` describes a volume and is adapted per model:

- a model with as many spatial axes as the shape gets it as is (its ``in_channels`` becomes ``C``; and a model
  whose factory takes ``img_size``, such as the ViT, is built for the new size);
- a 2D / 2.5D model (fewer spatial axes) keeps its own leading axes (channels ``4*K``, or slices and channels)
  and takes the first spatial axes of the shape - the slice plane of that volume;
- a model with more spatial axes than the shape keeps its default shape.

The ``input`` column shows what each model actually received. Below the table, each default teacher/student
pair that was profiled gets a compression line per subject: fewer (or more) parameters in %, and the GFLOPs and
latency ratios of reading one subject. Every paired model reads a whole subject in one input (the 3D models a
volume, the multi-slice 2.5D student ``efficientnet25d_multi`` all ``S`` slice stacks ``[S, 4K, H, W]`` of it);
a pair whose inputs are not the same subject (a single slice stack, another volume size) is reported as not
compared.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import re
import sys
from collections.abc import Sequence
from typing import Any

from medkd3d.utils import non_negative_int, positive_int

__all__ = [
    "COMPRESSION_PAIRS",
    "compression_summary",
    "derive_input_shape",
    "plain_text",
    "profile_registered_model",
    "register",
    "subject_extent",
]

logger = logging.getLogger(__name__)

#: ``(teacher, student)`` pairs the bundles distill, compared per subject: the 2.5D bundle's student is the
#: multi-slice ``efficientnet25d_multi``, which reads a whole subject; the single-stack ``efficientnet25d`` reads
#: one slice stack, a fraction of a subject, so it has no line.
COMPRESSION_PAIRS: tuple[tuple[str, str], ...] = (
    ("vggvit3d", "efficientnet3d_b0"),
    ("vggvit3d", "efficientnet25d_multi"),
    ("hdkd_teacher3d", "hdkd_student3d"),
)


#: ``:role:`target``` of Sphinx (``:func:`~medkd3d.x.f```), with an optional ``~`` that keeps the last name only.
_ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")


def plain_text(doc: str) -> str:
    """A reST docstring as plain text for ``--help``: inline literals and Sphinx roles lose their markup.

    Args:
        doc: the docstring, e.g. ``"Uses ``--tiny`` and :func:`~medkd3d.networks.profile.spatial_rank`."``.

    Returns:
        The text without markup, e.g. ``"Uses --tiny and spatial_rank."``.
    """

    def role(match: re.Match) -> str:
        tilde, target = match.groups()
        return target.rsplit(".", 1)[-1] if tilde else target

    return _ROLE.sub(role, doc).replace("``", "")


def derive_input_shape(
    model_shape: Sequence[int], spatial_rank: int, requested: Sequence[int] | None
) -> tuple[int, ...]:
    """The input shape (no batch axis) a model gets for a requested ``(C, *spatial)`` shape (module docstring).

    Args:
        model_shape: the model's own input shape, e.g. ``(4, 128, 128, 128)`` or ``(12, 128, 128)``.
        spatial_rank: number of spatial axes the model convolves over (trailing axes of ``model_shape``).
        requested: the requested shape ``(C, *spatial)``, or ``None`` to keep ``model_shape``.

    Returns:
        The shape to build and run the model with.

    Raises:
        ValueError: if ``spatial_rank`` does not fit ``model_shape``.
    """
    model_shape = tuple(model_shape)
    if not 0 < spatial_rank < len(model_shape):
        raise ValueError(f"spatial_rank={spatial_rank} does not fit the model input shape {model_shape}.")
    if requested is None:
        return model_shape
    channels, spatial = int(requested[0]), tuple(int(n) for n in requested[1:])
    leading = model_shape[:-spatial_rank]
    if len(spatial) == spatial_rank:
        return (*leading[:-1], channels, *spatial)
    if len(spatial) > spatial_rank:
        return (*leading, *spatial[:spatial_rank])
    return model_shape


def profile_registered_model(
    name: str,
    input_shape: Sequence[int] | None = None,
    tiny: bool = False,
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
) -> dict[str, Any]:
    """Builds a registered model and measures it.

    Args:
        name: registry name.
        input_shape: requested ``(C, *spatial)`` shape, adapted per model (see :func:`derive_input_shape`);
            ``None`` for the model's own shape.
        tiny: use the model's tiny configuration and tiny input shape as the starting point.
        repeats: timed forward passes; ``0`` skips the latency measurement.
        warmup: untimed passes before timing.
        device: device to run on.

    Returns:
        ``{"name", "role", "input_shape", "spatial_rank", "params", "gflops", "median_ms", "p90_ms"}`` (latencies
        ``None`` when not measured; ``spatial_rank`` as :func:`~medkd3d.networks.profile.spatial_rank`).
    """
    from medkd3d.networks.profile import count_gflops, count_parameters, measure_latency, spatial_rank
    from medkd3d.networks.registry import get_model_entry

    entry = get_model_entry(name)
    kwargs = dict(entry.tiny_kwargs) if tiny else {}
    own_shape = entry.tiny_input_shape if tiny else entry.default_input_shape
    model = entry.factory(**kwargs)
    rank = spatial_rank(model)
    shape = derive_input_shape(own_shape, rank, input_shape)
    if shape != tuple(own_shape):
        if shape[-rank - 1] != own_shape[-rank - 1]:
            kwargs["in_channels"] = shape[-rank - 1]
        if "img_size" in inspect.signature(entry.factory).parameters:
            kwargs["img_size"] = shape[-rank:]
        model = entry.factory(**kwargs)
    model = model.to(device)
    row: dict[str, Any] = {
        "name": name,
        "role": entry.role,
        "input_shape": shape,
        "spatial_rank": rank,
        "params": count_parameters(model),
        "gflops": count_gflops(model, shape, device=device),
        "median_ms": None,
        "p90_ms": None,
    }
    if repeats > 0:
        row.update(measure_latency(model, shape, warmup=warmup, repeats=repeats, device=device))
    return row


def _format_row(row: dict[str, Any]) -> str:
    latency = (
        f"{row['median_ms']:>10.1f} {row['p90_ms']:>10.1f}" if row["median_ms"] is not None else f"{'-':>10} {'-':>10}"
    )
    shape = "x".join(str(n) for n in row["input_shape"])
    return (
        f"{row['name']:<24} {row['role']:<8} {shape:<18} {row['params'] / 1e6:>10.3f} {row['gflops']:>10.3f} {latency}"
    )


def subject_extent(row: dict[str, Any]) -> tuple[int, ...] | None:
    """The spatial size of the subject one input of a profiled model covers, or ``None`` for part of a subject.

    A volume model's input is a whole subject (``(X, Y, Z)``); a multi-slice 2.5D model's input ``[S, C, H, W]``
    holds all slice stacks of one subject, whose slice plane is ``(H, W)``; a single slice stack ``[C, H, W]`` is
    only part of a subject.

    Args:
        row: a row of :func:`profile_registered_model` (``input_shape`` and ``spatial_rank`` are read).
    """
    shape, rank = tuple(row["input_shape"]), row["spatial_rank"]
    if rank == 3 or len(shape) - rank >= 2:
        return shape[-rank:]
    return None


def _fewer_or_more(teacher: float, student: float, what: str) -> str:
    """``"2.0x fewer GFLOPs"``, ``"2.0x more GFLOPs"`` when the student needs more, or ``"as many GFLOPs"`` when
    the ratio rounds to 1.0x (a "1.0x more" would contradict itself)."""
    ratio = teacher / student if student <= teacher else student / teacher
    if f"{ratio:.1f}" == "1.0":
        return f"as many {what} (within 5%)"
    return f"{ratio:.1f}x {'fewer' if student <= teacher else 'more'} {what}"


def compression_summary(rows: dict[str, dict[str, Any]]) -> list[str]:
    """One line per :data:`COMPRESSION_PAIRS` entry whose teacher and student are both in ``rows``, per subject.

    Both models must read the same subject in one input (:func:`subject_extent`): the teacher's volume, and for
    a 2.5D student all its slice stacks over that volume's slice plane (the first two axes, as
    :func:`derive_input_shape` slices a volume). Otherwise the line says why the pair is not compared.

    Args:
        rows: profiled rows (see :func:`profile_registered_model`) by model name.

    Returns:
        Lines such as ``efficientnet3d_b0 vs vggvit3d: 97.1% fewer parameters, 242.2x fewer GFLOPs, 14.8x faster``
        (``more`` and ``slower`` where the student is bigger or slower); the latency part is left out when a
        latency was not measured.
    """
    lines = []
    for teacher_name, student_name in COMPRESSION_PAIRS:
        teacher, student = rows.get(teacher_name), rows.get(student_name)
        if teacher is None or student is None:
            continue
        teacher_subject, student_subject = subject_extent(teacher), subject_extent(student)
        if (
            teacher_subject is None
            or student_subject is None
            or student_subject != teacher_subject[: len(student_subject)]
        ):
            lines.append(
                f"{student_name} vs {teacher_name}: not compared, their inputs "
                f"{'x'.join(map(str, student['input_shape']))} and {'x'.join(map(str, teacher['input_shape']))} "
                "are not one and the same subject"
            )
            continue
        reduction = 100 * (1 - student["params"] / teacher["params"])
        parameters = f"{reduction:.1f}% fewer" if reduction >= 0 else f"{-reduction:.1f}% more"
        line = f"{student_name} vs {teacher_name}: {parameters} parameters, "
        line += _fewer_or_more(teacher["gflops"], student["gflops"], "GFLOPs")
        if teacher["median_ms"] is not None and student["median_ms"] is not None:
            speedup = teacher["median_ms"] / student["median_ms"]
            factor = speedup if speedup >= 1 else 1 / speedup
            if f"{factor:.1f}" == "1.0":
                line += ", as fast (within 5%)"
            else:
                line += f", {factor:.1f}x {'faster' if speedup >= 1 else 'slower'}"
        lines.append(line)
    return lines


def _run_models(args: argparse.Namespace) -> int:
    from medkd3d.networks import list_models

    if args.input_shape is not None and len(args.input_shape) < 3:
        print(
            f"medkd3d models: --input-shape {' '.join(map(str, args.input_shape))} has no spatial size; "
            "give channels and 2 or 3 spatial sizes, e.g. --input-shape 4 128 128 128.",
            file=sys.stderr,
        )
        return 2
    names = list_models(args.filter)
    if not names:
        print(f"No registered model matches {args.filter!r}; known models: {', '.join(list_models())}.")
        return 1
    header = (
        f"{'model':<24} {'role':<8} {'input':<18} {'params (M)':>10} {'GFLOPs':>10} {'median ms':>10} {'p90 ms':>10}"
    )
    print(header)
    print("-" * len(header))
    failed, rows = 0, {}
    for name in names:
        try:
            row = profile_registered_model(
                name, args.input_shape, tiny=args.tiny, repeats=args.repeats, warmup=args.warmup, device=args.device
            )
        except Exception as error:  # one broken model must not hide the others
            logger.debug("profiling %s failed", name, exc_info=True)
            print(f"{name:<24} failed: {type(error).__name__}: {error}")
            failed += 1
            continue
        rows[name] = row
        print(_format_row(row), flush=True)
    latency_note = f"{args.device} eager, batch 1, {args.repeats} timed runs" if args.repeats else "not measured"
    print(f"\nGFLOPs: convolutions and matmuls of one eval forward (batch 1); latency: {latency_note}.")
    compression = compression_summary(rows)
    if compression:
        print("\nCompression per subject (student vs teacher, each reading one whole subject):")
        print("\n".join(f"  {line}" for line in compression))
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``medkd3d models`` to the ``medkd3d`` command."""
    parser = subparsers.add_parser(
        "models",
        help="list the registered models with parameters, GFLOPs and latency",
        description=plain_text(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--input-shape",
        nargs="+",
        type=positive_int,
        metavar="N",
        help="input shape without batch, C X Y Z (a volume; 2D/2.5D models take its slice plane) or C H W",
    )
    parser.add_argument("--tiny", action="store_true", help="use the tiny test configurations (fast)")
    parser.add_argument("--filter", default="*", metavar="PATTERN", help="shell-style name filter, e.g. 'vgg*'")
    parser.add_argument(
        "--repeats", type=non_negative_int, default=5, help="timed forward passes per model (0: skip timing)"
    )
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed passes before timing")
    parser.add_argument("--device", default="cpu", help="device for the measurements (default: cpu)")
    parser.set_defaults(func=_run_models)
