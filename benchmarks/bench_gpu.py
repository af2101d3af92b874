"""GPU checks of every bundle: peak memory and step time of AMP training per profile, batch-1 latency per runtime.

``amp``: for every bundle and recipe (``train.json`` alone, then each profile of ``configs/profiles``), the bundle's
own training engine (``train#trainer``: MONAI's ``SupervisedTrainer`` for teachers, the ``DistillationTrainer``
with its teacher forward for students) runs a few iterations on random batches of the recipe's batch size and
spatial size, with AMP on (``torch.autocast`` float16 + ``GradScaler``, as the bundles do when ``amp`` is true).
Only the data (random tensors instead of the dataset), the handlers (none: no validation, checkpoints or logs),
the teacher's weights (random, built by its teacher bundle under the same recipe, never read from ``bundles/*/models``) and the class
weights (off: they need the dataset's labels) differ from a real run. Reported: peak GPU memory
(``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``, reset before each run) and the median step time.

``latency``: every bundle's network (random weights, ``network_def`` of ``train.json`` with an optional recipe)
at batch 1 and its training input size: eager float32, eager AMP (autocast float16), TorchScript (traced, as
``medkd3d export`` does) in float32 and float16 and, where ONNX Runtime has its CUDA provider, ONNX Runtime;
ratios to eager float32 of the same run.

Each row is appended to ``<out>/<stem>.csv`` and ``.jsonl`` as soon as it is measured, so a run stopped at a time
limit keeps what it measured. Usage (from the repository root)::

    python benchmarks/bench_gpu.py amp --out /tmp/gpu                      # every bundle x recipe on cuda
    python benchmarks/bench_gpu.py latency --out /tmp/gpu
    python benchmarks/bench_gpu.py amp --device cpu --recipes quick --warmup 0 --steps 1   # CPU smoke run
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO / "bundles"
#: ``"full"`` is ``train.json`` alone (the default recipe); the others are its profiles.
RECIPES = ("full", "gpu", "cpu", "quick")
LATENCY_RUNTIMES = ("eager-fp32", "eager-amp-fp16", "torchscript-fp32", "torchscript-fp16", "onnxruntime-cuda")

logger = logging.getLogger("bench_gpu")


# ------------------------------------------------------------------------------------------------ configs
def bundle_names() -> list[str]:
    """Every bundle of the repository, teachers first (the order of ``medkd3d pipeline``)."""
    from medkd3d.pipeline.run import MODELS

    return [m.bundle for m in MODELS]


def train_parser(bundle: str, recipe: str, device: str, amp: bool, overrides: Mapping[str, Any] | None = None) -> Any:
    """The bundle's ``train.json`` merged with the recipe's profile, as ``medkd3d pipeline --profile`` merges them.

    Args:
        bundle: bundle name under ``bundles/``.
        recipe: ``"full"`` (``train.json`` alone) or a profile name.
        device: ``"cuda"`` or ``"cpu"``; replaces the profile's device (the ``cpu`` profile pins the CPU).
        amp: replaces the recipe's ``amp``.
        overrides: further config overrides (applied last).

    Returns:
        A ``monai.bundle.ConfigParser``.
    """
    from monai.bundle import ConfigParser

    from medkd3d.bundles import profile_configs

    root = BUNDLES_DIR / bundle
    configs = ["train.json", *profile_configs(root, [] if recipe == "full" else [recipe])]
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / c) for c in configs])
    torch_device = "cuda:0" if device == "cuda" else device
    parser.update({"bundle_root": str(root), "device": f"$torch.device('{torch_device}')", "amp": bool(amp)})
    if isinstance(parser.get("teacher"), dict):  # a student: its teacher as the teacher bundle trains under the recipe
        parser["teacher#profiles"] = [] if recipe == "full" else [recipe]
    parser.update(dict(overrides or {}))
    return parser


def _preprocessing_target(parser: Any) -> str:
    return str(parser.get("train#preprocessing", {}).get("_target_", ""))


def input_shapes(parser: Any) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes of the network inputs a training batch of this bundle holds.

    A 3D bundle has ``"image"`` ``[4, X, Y, Z]``; the 2.5D bundle (``slice_stack_transforms``) has ``"image"``
    ``[S, 4*K, H, W]`` (``[4*K, H, W]`` without ``num_stacks``) and, when its trainer feeds the teacher another
    key, that key as the ``[4, X, Y, Z]`` volume.

    Args:
        parser: a parser from :func:`train_parser`.

    Returns:
        ``{batch key: shape without the batch axis}``.
    """
    spatial = [int(s) for s in parser.get_parsed_content("spatial_size")]
    volume = (4, *spatial)
    if not _preprocessing_target(parser).endswith("slice_stack_transforms"):
        return {"image": volume}
    k = int(parser.get_parsed_content("num_slices"))
    axis = int(parser.get_parsed_content("slice_axis"))
    stacks = parser.get_parsed_content("num_stacks") if "num_stacks" in parser else None
    plane = tuple(s for i, s in enumerate(spatial) if i != axis)
    image = (4 * k, *plane) if stacks is None else (int(stacks), 4 * k, *plane)
    shapes = {"image": image}
    teacher_key = parser.get("train#trainer", {}).get("teacher_image_key")
    if teacher_key:
        shapes[str(teacher_key)] = volume
    return shapes


class RandomBatches:
    """``num_batches`` copies of one random training batch: a sized iterable the bundle trainer accepts as its data
    loader (a plain object, so ``ConfigParser`` keeps it as it is).

    Args:
        shapes: per-sample shapes by batch key (:func:`input_shapes`).
        batch_size: samples per batch.
        num_batches: batches per epoch.
        num_classes: labels are ``0, 1, ..., num_classes - 1`` in turn (every class in every batch of 2 or more).
        seed: seed of the random images.
        pin_memory: page-lock the batch (as a ``DataLoader`` with ``pin_memory=True``) for faster copies to a GPU.
    """

    def __init__(
        self,
        shapes: Mapping[str, Sequence[int]],
        batch_size: int,
        num_batches: int,
        num_classes: int,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.batch: dict[str, torch.Tensor] = {
            key: torch.randn(batch_size, *shape, generator=generator) for key, shape in shapes.items()
        }
        if pin_memory:
            self.batch = {key: value.pin_memory() for key, value in self.batch.items()}
        self.batch["label"] = torch.arange(batch_size) % num_classes
        self.num_batches = num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for _ in range(self.num_batches):
            yield dict(self.batch)


def build_trainer(parser: Any, batches: RandomBatches) -> Any:
    """The bundle's ``train#trainer`` on ``batches``: no handlers, one epoch, class weights off and, for students,
    the teacher built by its teacher bundle with random weights (no checkpoint is read).

    Args:
        parser: a parser from :func:`train_parser` (modified in place).
        batches: the data loader.

    Returns:
        The trainer (``SupervisedTrainer`` or ``DistillationTrainer``).
    """
    parser.update(
        {
            "epochs": 1,
            # set the item, not only its flag: MONAI resolves a disabled item's references (the dataset's labels)
            "class_weights": None,
            "train#handlers": [],
            "train#dataloader": batches,
        }
    )
    if isinstance(parser.get("teacher"), dict):
        # load_teacher reads the teacher bundle's checkpoint; random weights cost the same memory and time
        parser["teacher#random_weights"] = True
    return parser.get_parsed_content("train#trainer")


def _parameters_m(module: Any) -> float | None:
    if not isinstance(module, torch.nn.Module):
        return None
    return sum(p.numel() for p in module.parameters()) / 1e6


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _error_text(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def measure_training(bundle: str, recipe: str, device: str, warmup: int, steps: int, amp: bool = True) -> dict:
    """Peak memory and step time of ``warmup + steps`` iterations of the bundle's trainer under ``recipe``.

    Args:
        bundle: bundle name.
        recipe: ``"full"`` or a profile name.
        device: ``"cuda"`` or ``"cpu"`` (no memory figures on the CPU).
        warmup: untimed first iterations (cuDNN algorithm choice, allocator growth).
        steps: timed iterations.
        amp: train with AMP (ignored on the CPU, where the trainers fall back to float32).

    Returns:
        One result row; ``status`` is ``"ok"``, ``"out of memory"`` or the error, never raised.
    """
    from medkd3d.engines import loss_terms

    use_amp = amp and device == "cuda"
    row: dict[str, Any] = {"bundle": bundle, "recipe": recipe, "device": device, "amp": use_amp}
    trainer = parser = batches = None
    try:
        parser = train_parser(bundle, recipe, device, use_amp)
        shapes = input_shapes(parser)
        batch_size = int(parser.get_parsed_content("batch_size"))
        num_classes = len(parser.get_parsed_content("class_names"))
        row.update(
            batch_size=batch_size,
            input_shape="x".join(map(str, shapes["image"])),
            # the teacher's own input (the 2.5D student's teacher sees the volume), else the image
            teacher_input_shape="x".join(map(str, shapes[next((k for k in shapes if k != "image"), "image")])),
            kd_mode=str(parser.get("kd_mode") or "none"),
        )
        batches = RandomBatches(shapes, batch_size, warmup + steps, num_classes, pin_memory=device == "cuda")
        if device == "cuda":
            _free(device)
            torch.cuda.reset_peak_memory_stats()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = build_trainer(parser, batches)
        teacher = getattr(trainer, "teacher", None)
        row.update(
            network=str(parser.get("network_def", {}).get("name", "")),
            params_m=_parameters_m(trainer.network),
            teacher_params_m=_parameters_m(teacher),
            trainer=type(trainer).__name__,
        )
        times: list[float] = []
        last = [time.perf_counter()]

        def _tick(_: Any) -> None:
            _synchronize(device)
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        from ignite.engine import Events

        trainer.add_event_handler(Events.ITERATION_COMPLETED, _tick)
        _synchronize(device)
        last[0] = time.perf_counter()
        trainer.run()
        timed = times[warmup:] or times
        loss = loss_terms(trainer.state.output).get("loss", float("nan"))
        row.update(
            status="ok" if math.isfinite(loss) else "non-finite loss",
            steps=len(timed),
            step_ms=statistics.median(timed) * 1e3,
            first_step_ms=times[0] * 1e3 if times else None,
            loss=loss,
            scaler=type(trainer.scaler).__name__ if getattr(trainer, "scaler", None) is not None else "",
        )
        if device == "cuda":
            row.update(
                peak_allocated_mb=torch.cuda.max_memory_allocated() / 2**20,
                peak_reserved_mb=torch.cuda.max_memory_reserved() / 2**20,
            )
    except torch.OutOfMemoryError as error:
        row.update(status="out of memory", error=_error_text(error))
    except Exception as error:  # a bundle that fails is reported and the others still run
        logger.exception("%s / %s failed", bundle, recipe)
        row.update(status="error", error=_error_text(error))
    finally:
        del trainer, parser, batches
        _free(device)
    return row


# ------------------------------------------------------------------------------------------------ latency
def _onnx_cuda_available() -> tuple[bool, str]:
    from medkd3d.export.runtime import onnxruntime_status, ort

    available, reason = onnxruntime_status()
    if not available:
        return False, reason
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return False, f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: {providers})"
    return True, ""


def _runtime_callables(
    network: torch.nn.Module, x: torch.Tensor, device: str, runtimes: Sequence[str], scratch: Path
) -> Iterator[tuple[str, Callable[[], Any] | None, str]]:
    """``(runtime, call or None, note)`` for each requested runtime; built lazily, one at a time."""
    for runtime in runtimes:
        if runtime == "eager-fp32":
            yield runtime, lambda: network(x), ""
        elif runtime == "eager-amp-fp16":
            if device != "cuda":
                yield runtime, None, "autocast float16 needs CUDA"
                continue

            def call() -> Any:
                with torch.autocast("cuda", dtype=torch.float16):
                    return network(x)

            yield runtime, call, ""
        elif runtime in ("torchscript-fp32", "torchscript-fp16"):
            half = runtime.endswith("fp16")
            if half and device != "cuda":
                yield runtime, None, "float16 convolutions need CUDA"
                continue
            import copy

            net = copy.deepcopy(network).half() if half else network
            xi = x.half() if half else x
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                traced = torch.jit.trace(net, xi, check_trace=False)
            yield runtime, lambda traced=traced, xi=xi: traced(xi), "traced, as medkd3d export writes it"
            del traced, net
        elif runtime == "onnxruntime-cuda":
            ok, why = _onnx_cuda_available()
            if not ok or device != "cuda":
                yield runtime, None, why or "needs --device cuda"
                continue
            from medkd3d.export.runtime import ort

            path = scratch / "model.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(network, (x,), str(path), dynamo=False, opset_version=18)
            session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
            feed = {session.get_inputs()[0].name: x.cpu().numpy()}
            yield (
                runtime,
                lambda session=session, feed=feed: session.run(None, feed),
                "numpy in and out (host copies included)",
            )
            del session
        else:
            raise ValueError(f"unknown runtime {runtime!r}; choose from {LATENCY_RUNTIMES}")


def measure_latency(
    bundle: str,
    device: str,
    recipe: str = "full",
    runtimes: Sequence[str] = LATENCY_RUNTIMES,
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float = 5.0,
    overrides: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Batch-1 latency of the bundle's network on each runtime, and the ratio to eager float32 of the same run.

    Args:
        bundle: bundle name.
        device: ``"cuda"`` or ``"cpu"``.
        recipe: ``"full"`` (default input size) or a profile.
        runtimes: from :data:`LATENCY_RUNTIMES`.
        warmup, repeats, max_seconds: timing settings per runtime.
        overrides: config overrides (e.g. a smaller ``spatial_size``).

    Returns:
        One row per runtime; ``status`` is ``"ok"``, ``"not run: <why>"`` or the error, never raised.
    """
    from medkd3d.export.bundle import prepare_for_export
    from medkd3d.networks.profile import latency_stats, time_calls

    parser = train_parser(bundle, recipe, device, amp=False, overrides=overrides)
    shape = input_shapes(parser)["image"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        network = prepare_for_export(parser.get_parsed_content("network_def")).to(device).eval()
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(0)).to(device)
    base = {
        "bundle": bundle,
        "recipe": recipe,
        "device": device,
        "network": str(parser.get("network_def", {}).get("name", "")),
        "params_m": _parameters_m(network),
        "input_shape": "x".join(map(str, shape)),
    }
    rows: list[dict] = []
    eager_ms: float | None = None
    with torch.inference_mode(False), torch.no_grad(), tempfile.TemporaryDirectory() as scratch:
        calls = _runtime_callables(network, x, device, runtimes, Path(scratch))
        while True:
            try:
                runtime, call, note = next(calls)
            except StopIteration:
                break
            except Exception as error:  # building one runtime failed: report it, the generator is spent
                rows.append({**base, "runtime": "?", "status": "error", "error": _error_text(error)})
                break
            row = {**base, "runtime": runtime, "note": note}
            if call is None:
                rows.append({**row, "status": f"not run: {note}", "note": ""})
                continue
            try:
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times = time_calls(
                    call, warmup=warmup, min_repeats=min(2, repeats), max_repeats=repeats, max_seconds=max_seconds,
                    device=device,
                )  # fmt: skip
                stats = latency_stats(times)
                median = stats["median_ms"]
                eager_ms = median if runtime == "eager-fp32" else eager_ms
                row.update(
                    status="ok",
                    repeats=len(times),
                    latency_median_ms=median,
                    latency_p90_ms=stats["p90_ms"],
                    ratio_to_eager_fp32=median / eager_ms if eager_ms else None,
                )
                if device == "cuda":
                    row["peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            except Exception as error:
                row.update(status="error", error=_error_text(error))
            rows.append(row)
    del network, x
    _free(device)
    return rows


# ------------------------------------------------------------------------------------------------ output
class RowWriter:
    """Appends rows to ``<out>/<stem>.jsonl`` and rewrites ``<out>/<stem>.csv`` (union of the keys) after each.

    Args:
        out: results directory (created).
        stem: file name without suffix.
    """

    def __init__(self, out: str | os.PathLike, stem: str) -> None:
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.stem = stem
        self.rows: list[dict] = []

    def add(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        with open(self.out / f"{self.stem}.jsonl", "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        with open(self.out / f"{self.stem}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)
        shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}
        print(json.dumps(shown, default=str), flush=True)


def device_info(device: str) -> dict[str, Any]:
    """The device, torch and CUDA versions, and whether TensorRT can be imported."""
    import monai

    from medkd3d.export.tensorrt import tensorrt_status

    info: dict[str, Any] = {
        "device": device,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": sys.version.split()[0],
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
        )
    info["tensorrt"] = "available" if tensorrt_status()[0] else tensorrt_status()[1]
    info["onnxruntime_cuda"] = "available" if _onnx_cuda_available()[0] else _onnx_cuda_available()[1]
    return info


# ------------------------------------------------------------------------------------------------ CLI
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=["amp", "latency", "info"], help="what to measure")
    parser.add_argument("--bundles", nargs="+", default=None, help="bundle names (default: every bundle)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), help=f"amp: recipes (default: {RECIPES})")
    parser.add_argument("--recipe", default="full", help="latency: the recipe whose sizes are used")
    parser.add_argument("--runtimes", nargs="+", default=list(LATENCY_RUNTIMES), choices=LATENCY_RUNTIMES)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="amp: timed iterations; latency: repeats")
    parser.add_argument("--max-seconds", type=float, default=5.0, help="latency: timed work per runtime")
    parser.add_argument("--budget-s", type=float, default=0.0, help="start no new bundle after this many seconds")
    parser.add_argument("--spatial", type=int, default=None, help="override spatial_size (cube) for quick checks")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "bench_gpu"), help="raw results folder")
    parser.add_argument("--stem", default=None, help="file name without suffix (default: the task)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU", file=sys.stderr)
        return 1
    writer = RowWriter(args.out, args.stem or args.task)
    info = device_info(args.device)
    # every task records the machine it measured on beside its rows
    (writer.out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    if args.task == "info":
        print(json.dumps(info), flush=True)
        return 0
    bundles = args.bundles or bundle_names()
    overrides = {"spatial_size": [args.spatial] * 3} if args.spatial else None
    if overrides and args.task == "amp":
        logger.warning("--spatial applies to latency only; amp uses each recipe's sizes")
    start = time.perf_counter()
    failed = 0
    # recipe-major: the full-size and gpu rows of every bundle come before the small recipes if time runs out
    jobs = (
        [(b, r) for r in args.recipes for b in bundles] if args.task == "amp" else [(b, args.recipe) for b in bundles]
    )
    for bundle, recipe in jobs:
        if args.budget_s and time.perf_counter() - start > args.budget_s:
            writer.add({"bundle": bundle, "recipe": recipe, "status": f"not run: time budget {args.budget_s:.0f} s"})
            continue
        if args.task == "amp":
            rows = [measure_training(bundle, recipe, args.device, args.warmup, args.steps)]
        else:
            rows = measure_latency(
                bundle, args.device, recipe, args.runtimes, args.warmup, args.steps, args.max_seconds, overrides
            )
        for row in rows:
            failed += row.get("status") in ("error", "non-finite loss")
            writer.add(row)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
