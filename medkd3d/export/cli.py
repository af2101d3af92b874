"""``medkd3d export``, ``medkd3d infer`` and ``medkd3d bench``.

Examples::

    medkd3d export --bundle bundles/brats_student_effnet3d --formats torchscript onnx --out exports/effnet3d
    medkd3d export --bundle bundles/brats_student_effnet3d --formats tensorrt --precision int8 \\
        --calib-data calibration.json --out exports/effnet3d
    medkd3d export --onnx exports/effnet3d/model.onnx --formats tensorrt --out engines/effnet3d   # on a Jetson
    medkd3d infer --model exports/effnet3d/model.onnx --input /data/BraTS2019 --out predictions.csv
    medkd3d bench --runtimes eager onnxruntime torchscript
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

__all__ = ["parse_override", "register"]

logger = logging.getLogger(__name__)

#: Exit code of an export whose parity check failed (bad arguments give 2, like argparse).
PARITY_FAILED = 1


def parse_override(text: str) -> tuple[str, Any]:
    """Argparse type of the bundle config overrides of ``export``, ``explain`` (``--override``, ``--teacher-override``).

    ``KEY=VALUE`` with a JSON value (``spatial_size=[64,64,64]``), or a plain string when it is not JSON.

    Raises:
        argparse.ArgumentTypeError: without ``=`` or without a key.
    """
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. spatial_size=[64,64,64]), got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export``, ``infer`` and ``bench`` sub-commands."""
    from medkd3d.export.bench import add_arguments as add_bench_arguments

    export = subparsers.add_parser(
        "export",
        help="export a trained bundle to TorchScript / ONNX / TensorRT, each checked against eager PyTorch",
        description="Export a bundle's trained model. Every artefact is compared with the eager network on random "
        "inputs and on real preprocessed subjects; an artefact out of tolerance is not kept and the command fails.",
    )
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", help="bundle directory, e.g. bundles/brats_student_effnet3d")
    source.add_argument("--onnx", help="build a TensorRT engine from this exported model.onnx alone (on the device)")
    export.add_argument("--checkpoint", default=None, help="trained weights (default: the bundle's models/model.pt)")
    export.add_argument(
        "--formats",
        nargs="+",
        default=None,
        choices=("torchscript", "onnx", "tensorrt"),
        help="formats (default: torchscript onnx; tensorrt with --onnx)",
    )
    export.add_argument(
        "--precision",
        default="fp16",
        choices=("fp32", "fp16", "int8"),
        help="TensorRT engine precision (default: fp16)",
    )
    export.add_argument("--calib-data", default=None, help="INT8 calibration datalist JSON or dataset folder")
    export.add_argument("--calib-batches", type=int, default=None, help="use at most this many calibration batches")
    export.add_argument(
        "--data",
        default=None,
        help="datalist or dataset folder for the parity check (default: --calib-data, else the "
        "bundle's dataset_dir, else generated synthetic subjects)",
    )
    export.add_argument("--parity-subjects", type=int, default=2, help="real subjects in the parity check (default: 2)")
    export.add_argument(
        "--atol",
        type=float,
        default=None,
        help="allowed |logit difference| (plus rtol x the largest |logit|; default: per precision)",
    )
    export.add_argument(
        "--min-agreement", type=float, default=None, help="min class agreement (default: per precision)"
    )
    export.add_argument("--max-batch", type=int, default=8, help="largest batch of the TensorRT profile (default: 8)")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    export.add_argument(
        "--legacy-onnx-exporter",
        action="store_true",
        help="use PyTorch's TorchScript-based ONNX exporter instead of torch.export",
    )
    export.add_argument(
        "--override",
        action="append",
        type=parse_override,
        default=[],
        metavar="KEY=VALUE",
        help="bundle config override, e.g. spatial_size=[64,64,64] (repeatable); a checkpoint that records its "
        "training configuration needs none, and an override that contradicts that record is refused",
    )
    export.add_argument("--out", required=True, help="output directory (one per bundle)")
    export.set_defaults(func=_export)

    infer = subparsers.add_parser(
        "infer",
        help="class probabilities of NIfTI subjects with an exported model (the bundle's preprocessing)",
        description="Run an exported model on a dataset folder or datalist with the preprocessing and inferer "
        "of the bundle it came from; writes the bundle's predictions CSV (subject, prob_<class>..., predicted, label). "
        "Trust model: an exported model is data. Its inference.json (embedded in the .onnx/.ts or beside an "
        ".engine) lists allow-listed MONAI/medkd3d transforms with plain JSON arguments; infer validates it and "
        "never evaluates or imports anything from it, refusing any '$' expression, '@' reference, '%' macro, "
        "'_target_' key or unknown transform/argument. A MONAI config is never parsed. The network itself still "
        "runs in ONNX Runtime, TorchScript or TensorRT: only load TorchScript files and TensorRT engines from "
        "sources you trust (a TorchScript module is a program, an engine can carry plugins).",
    )
    infer.add_argument("--model", required=True, help="model.onnx, model.engine, model.ts or an export directory")
    infer.add_argument("--input", required=True, help="dataset folder (BraTS layout) or datalist JSON")
    infer.add_argument("--out", required=True, help="predictions CSV")
    infer.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "tensorrt", "onnxruntime", "torchscript"),
        help="runtime (default auto: TensorRT > ONNX Runtime > TorchScript)",
    )
    infer.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    infer.add_argument(
        "--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: one per core)"
    )
    infer.set_defaults(func=_infer)

    bench = subparsers.add_parser(
        "bench",
        help="latency, throughput, memory, parameters and GFLOPs of every bundle on every runtime",
        description="Benchmark each bundle's model on each available runtime in one run; writes markdown and CSV "
        "with the machine's description and the ratios (student vs teacher, runtime vs eager). "
        "benchmarks/bench_deploy.py runs the same benchmark and also checks the project's targets.",
    )
    add_bench_arguments(bench)
    bench.set_defaults(func=_bench)


def _export(args: argparse.Namespace) -> int:
    from medkd3d.export.exporter import export_bundle, export_engine_from_onnx
    from medkd3d.export.onnx import DEFAULT_OPSET
    from medkd3d.export.parity import ParityError

    try:
        if args.onnx:
            if args.formats not in (None, ["tensorrt"]):
                raise ValueError("--onnx builds a TensorRT engine only; pass --formats tensorrt (or no --formats).")
            results = export_engine_from_onnx(
                args.onnx, args.out, precision=args.precision, calib_data=args.calib_data,
                calib_batches=args.calib_batches, max_batch=args.max_batch, parity_data=args.data,
                num_parity_subjects=args.parity_subjects, atol=args.atol, min_agreement=args.min_agreement,
            )  # fmt: skip
        else:
            results = export_bundle(
                args.bundle, args.out, formats=args.formats or ["torchscript", "onnx"], checkpoint=args.checkpoint, overrides=dict(args.override),
                parity_data=args.data, num_parity_subjects=args.parity_subjects, atol=args.atol,
                min_agreement=args.min_agreement, precision=args.precision, calib_data=args.calib_data,
                calib_batches=args.calib_batches, max_batch=args.max_batch, opset=args.opset or DEFAULT_OPSET,
                dynamo=not args.legacy_onnx_exporter,
            )  # fmt: skip
    except ParityError as error:
        print(error.report.summary())
        print(f"error: {error}", file=sys.stderr)
        return PARITY_FAILED
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for result in results.values():
        print(result.parity.summary())
        print(f"Wrote {result.path}" + "".join(f", {f}" for f in result.files))
    return 0


def _infer(args: argparse.Namespace) -> int:
    from medkd3d.export.inputs import load_records
    from medkd3d.export.runtime import load_predictor, predictions_csv
    from medkd3d.utils import atomic_write_text

    options = {"threads": args.threads} if args.threads else {}
    try:
        predictor = load_predictor(args.model, backend=args.backend, device=args.device, **options)
        records = load_records(args.input)
        rows = predictor.predict_records(records)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    atomic_write_text(args.out, predictions_csv(rows, predictor.class_names))
    print(f"Wrote class probabilities of {len(rows)} subjects to {args.out} ({predictor.runtime.description}).")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from medkd3d.export.bench import run_from_args

    return run_from_args(args)
