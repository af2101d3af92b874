"""Export a distilled student bundle for an NVIDIA Jetson, and check the deployed model against the bundle.

Every step uses the medkd3d Python API (``medkd3d.export``), so this script is the template for your own
deployment:

1. **Checkpoint**: a trained student bundle (``--checkpoint``, e.g. from ``medkd3d pipeline``), or with ``--train``
   its teacher bundle and then the student bundle trained briefly here on a synthetic BraTS dataset (the MONAI
   bundle runs ``python -m monai.bundle run --config_file bundles/<b>/configs/train.json`` does);
2. **Export** with :func:`medkd3d.export.export_bundle`: ``model.onnx`` and ``model.ts``, each kept only when it
   matches eager PyTorch (parity reports ``*.parity.json``), and the deployment configs beside them;
3. **Deployed inference** through the runtime interface (:func:`medkd3d.export.load_predictor`: the bundle's own
   preprocessing and inferer, ONNX Runtime and TorchScript on the CPU) on synthetic NIfTI subjects;
4. **The bundle's own predictions** on the same subjects (its ``inference.json``, eager PyTorch on the CPU in
   float32): every deployed class probability must match them within ``--tolerance``;
5. **TensorRT FP16**, only where CUDA and the ``tensorrt`` package are available: the engine is built from the
   ONNX file and checked (elsewhere, the engine is built on the Jetson itself: it is specific to the GPU and
   TensorRT version that build it);
6. prints the commands to run on the Jetson (docs/jetson.md) and writes them to ``<out>/jetson_commands.sh``.

Run (a couple of minutes on 2 CPU cores with tiny networks)::

    python examples/export_for_jetson.py --train --tiny --out runs/jetson

or export a model trained by the quick pipeline (full-width networks at 32^3)::

    medkd3d pipeline --quick --bundles brats_student_effnet3d --out runs/pipeline
    python examples/export_for_jetson.py --checkpoint runs/pipeline/brats_student_effnet3d/models/model.pt \\
        --size 32 --out runs/jetson

A checkpoint trained with other config overrides needs the same ones here (``--override KEY=VALUE``, as for
``medkd3d export``). ``<out>/summary.json`` holds every check's numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd3d.bundles import find_bundle_root, run_bundle_config
from medkd3d.data import generate_synthetic_brats
from medkd3d.export import (
    DeploymentConfig,
    ParityError,
    export_bundle,
    export_engine_from_onnx,
    load_predictor,
    load_records,
    predictions_csv,
    tensorrt_status,
    tiny_overrides,
)
from medkd3d.export.cli import parse_override
from medkd3d.pipeline.run import MODELS
from medkd3d.utils import atomic_write_text

logger = logging.getLogger("export_for_jetson")

#: Student bundles and the teacher bundle each is distilled from.
TEACHER_OF = {m.bundle: m.teacher for m in MODELS if m.teacher}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/jetson", help="output folder (data, checkpoints, export, predictions)")
    parser.add_argument("--bundle", default="brats_student_effnet3d", choices=sorted(TEACHER_OF), help="student bundle")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="the trained student bundle checkpoint (models/model.pt)")
    source.add_argument("--train", action="store_true", help="train the teacher and student bundles briefly first")
    parser.add_argument("--size", type=int, default=32, help="preprocessed volume side (the bundle's spatial_size)")
    parser.add_argument("--tiny", action="store_true", help="tiny networks (each model's registry tiny settings)")
    parser.add_argument(
        "--override", action="append", type=parse_override, default=[], metavar="KEY=VALUE",
        help="further bundle config override the model was (or is) trained with (repeatable)",
    )  # fmt: skip
    parser.add_argument("--epochs", type=int, default=2, help="with --train: epochs of the teacher and the student")
    parser.add_argument("--subjects-per-class", type=int, default=6, help="with --train: synthetic HGG and LGG each")
    parser.add_argument("--infer-subjects", type=int, default=4, help="synthetic subjects to run the deployed model on")
    parser.add_argument(
        "--tolerance", type=float, default=1e-3, help="largest allowed |probability difference| deployed vs bundle"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.infer_subjects < 2:
        parser.error("--infer-subjects must be at least 2 (one HGG and one LGG subject)")
    return args


def network_overrides(bundle: str, args: argparse.Namespace, prefix: str = "network_def") -> dict[str, Any]:
    """``spatial_size`` and, with ``--tiny``, the bundle network's tiny settings as ``<prefix>#<arg>`` overrides."""
    overrides: dict[str, Any] = {"spatial_size": [args.size] * 3}
    if args.tiny:
        tiny = tiny_overrides(find_bundle_root(bundle), spatial=args.size)
        overrides.update({f"{prefix}#{k.split('#', 1)[1]}": v for k, v in tiny.items() if k.startswith("network_def#")})
    return overrides


def train_student(args: argparse.Namespace, out: Path) -> Path:
    """Train the teacher bundle, then distil the student bundle from it, on a synthetic dataset.

    Returns:
        The student's checkpoint (``models/model.pt``: its final model, the bundles' ``model_selection``).
    """
    data = generate_synthetic_brats(
        out / "data", n_hgg=args.subjects_per_class, n_lgg=args.subjects_per_class, shape=(64, 64, 48), seed=args.seed
    )
    teacher = TEACHER_OF[args.bundle]
    common = {"dataset_dir": str(data), "epochs": args.epochs, "batch_size": 2, "num_workers": 0, "num_folds": 3}
    runs = {
        teacher: network_overrides(teacher, args),
        # the student builds its teacher as the teacher's checkpoint records it was trained (tiny or not)
        args.bundle: {
            **network_overrides(args.bundle, args),
            "teacher_ckpt": str(out / "train" / teacher / "models" / "model.pt"),
        },
    }
    for bundle, overrides in runs.items():  # the teacher first: the student distils from its checkpoint
        logger.info("training %s for %d epochs", bundle, args.epochs)
        run_bundle_config(
            find_bundle_root(bundle), "train.json", **common, **overrides, **dict(args.override),
            ckpt_dir=str(out / "train" / bundle / "models"), output_dir=str(out / "train" / bundle / "eval"),
        )  # fmt: skip
    return out / "train" / args.bundle / "models" / "model.pt"


def read_bundle_predictions(path: Path, class_names: Sequence[str]) -> dict[str, np.ndarray]:
    """``subject -> class probabilities`` from a ``predictions.csv`` written by the bundle's inference."""
    with path.open(newline="") as f:
        return {row["subject"]: np.array([float(row[f"prob_{c}"]) for c in class_names]) for row in csv.DictReader(f)}


def compare(rows: Sequence[Mapping[str, Any]], reference: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Largest probability difference and predicted-class agreement of deployed ``rows`` vs the bundle's own."""
    missing = sorted({r["subject"] for r in rows} ^ set(reference))
    if missing:
        raise ValueError(f"the deployed and the bundle predictions cover different subjects: {missing}")
    diffs = [float(np.abs(np.asarray(r["probabilities"]) - reference[r["subject"]]).max()) for r in rows]
    agree = [int(np.argmax(r["probabilities"])) == int(np.argmax(reference[r["subject"]])) for r in rows]
    return {"subjects": len(rows), "max_prob_diff": max(diffs), "class_agreement": sum(agree) / len(agree)}


def jetson_commands(
    name: str, export_dir: Path, subjects: Path, deployment: DeploymentConfig, max_batch: int = 8
) -> list[str]:
    """The Jetson side of docs/jetson.md for the export in ``export_dir`` and the NIfTI ``subjects`` folder
    (engine build with its parity check, inference, latency)."""
    shape = "x".join(str(s) for s in deployment.input_shape)
    per_subject = int(deployment.export_info.get("inputs_per_subject", 1))
    shapes = (
        f"--minShapes=image:1x{shape} --optShapes=image:{per_subject}x{shape} --maxShapes=image:{max_batch}x{shape}"
    )
    return [
        "# on the workstation: copy the export and some subjects (here the synthetic ones) to the Jetson",
        f"scp -r {shlex.quote(str(export_dir))} jetson:~/{name}",
        f"scp -r {shlex.quote(str(subjects))} jetson:~/subjects",
        "# on the Jetson (JetPack 6.1/6.2, TensorRT 10.3; set-up in docs/jetson.md): check TensorRT, build, infer",
        "pytest -m tensorrt tests/export",
        f"medkd3d export --onnx ~/{name}/model.onnx --precision fp16 --data ~/subjects --out ~/{name}-trt",
        f"medkd3d infer --model ~/{name}-trt/model.engine --input ~/subjects --out predictions.csv",
        "# or with trtexec (no parity check; copy metadata.json, inference.json and export.json beside the engine)",
        f"/usr/src/tensorrt/bin/trtexec --onnx=model.onnx --saveEngine=model.engine --fp16 {shapes}",
        f"/usr/src/tensorrt/bin/trtexec --loadEngine=model.engine --shapes=image:{per_subject}x{shape}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out, start = Path(args.out), time.time()
    root = find_bundle_root(args.bundle)
    overrides = {**network_overrides(args.bundle, args), **dict(args.override)}

    # 1. the trained student
    checkpoint = train_student(args, out) if args.train else Path(args.checkpoint)

    # 2. export, each artefact checked against eager PyTorch on random and real (synthetic) subjects
    subjects = generate_synthetic_brats(
        out / "subjects", n_hgg=(args.infer_subjects + 1) // 2, n_lgg=args.infer_subjects // 2, shape=(64, 64, 48),
        seed=args.seed + 1,
    )  # fmt: skip
    export_dir = out / "export"
    try:
        results = export_bundle(
            root, export_dir, ["torchscript", "onnx"], checkpoint=checkpoint, overrides=overrides, parity_data=subjects
        )
    except ParityError as error:  # the artefact was not kept; the report says by how much it missed
        print(error.report.summary(), file=sys.stderr)
        return 1
    except (FileNotFoundError, RuntimeError) as error:  # no checkpoint, or one trained with other overrides
        print(f"error: {error}", file=sys.stderr)
        return 2
    summary: dict[str, Any] = {"bundle": args.bundle, "checkpoint": str(checkpoint), "overrides": overrides}
    summary["export"] = {fmt: {"path": str(r.path), **r.parity.to_dict()} for fmt, r in results.items()}
    for result in results.values():
        print(result.parity.summary())

    # 3-4. the bundle's own inference (eager, CPU, float32) and the deployed model on the same subjects
    run_bundle_config(
        root, "inference.json", workflow_type="infer", dataset_dir=str(subjects), ckpt_path=str(checkpoint),
        output_dir=str(out / "predictions" / "bundle"), num_workers=0, amp=False, device="$torch.device('cpu')",
        **overrides,
    )  # fmt: skip
    deployment = DeploymentConfig.read_directory(export_dir)
    reference = read_bundle_predictions(out / "predictions" / "bundle" / "predictions.csv", deployment.class_names)
    records = load_records(subjects)
    artefacts = {"onnxruntime": export_dir / "model.onnx", "torchscript": export_dir / "model.ts"}
    tolerances = dict.fromkeys(artefacts, args.tolerance)

    # 5. TensorRT FP16 where this machine can build engines (else the Jetson builds its own)
    available, reason = tensorrt_status()
    if available:
        engine = export_engine_from_onnx(
            export_dir / "model.onnx", out / "tensorrt", precision="fp16", parity_data=subjects
        )
        print(engine["tensorrt"].parity.summary())
        summary["export"]["tensorrt"] = {"path": str(engine["tensorrt"].path), **engine["tensorrt"].parity.to_dict()}
        artefacts["tensorrt"] = engine["tensorrt"].path
        tolerances["tensorrt"] = max(args.tolerance, 2e-2)  # FP16 engines drift more than FP32 runtimes
    else:
        logger.info("No TensorRT engine here (%s): build it on the Jetson with the commands below.", reason)
    summary["tensorrt"] = "built" if available else f"skipped: {reason}"

    # the comparison only means something when the predictions depend on the subject (not after a too-short run)
    spread = float(np.ptp(np.stack(list(reference.values())), axis=0).max()) if len(reference) > 1 else 0.0
    summary["bundle_prob_spread"] = spread
    summary["deployed"], failures = {}, []
    for backend, path in artefacts.items():
        predictor = load_predictor(path, backend=backend, device="cuda" if backend == "tensorrt" else "cpu")
        rows = predictor.predict_records(records)
        atomic_write_text(out / "predictions" / f"{backend}.csv", predictions_csv(rows, predictor.class_names))
        check = {**compare(rows, reference), "tolerance": tolerances[backend], "runtime": predictor.runtime.description}
        summary["deployed"][backend] = check
        print(
            f"{backend:>12} vs bundle on {check['subjects']} subjects: max |probability difference| "
            f"{check['max_prob_diff']:.2e} (tolerance {check['tolerance']:.0e}), class agreement {check['class_agreement']:.2f}"
        )
        if check["max_prob_diff"] > check["tolerance"]:
            failures.append(backend)
        elif spread <= 10 * check["max_prob_diff"]:
            logger.warning(
                "The bundle's probabilities vary by only %.1e across subjects: the model hardly depends on its input "
                "(train longer), so matching them says little.", spread,
            )  # fmt: skip

    # 6. what to run on the Jetson
    commands = jetson_commands(args.bundle, export_dir, subjects, deployment)
    atomic_write_text(out / "jetson_commands.sh", "#!/bin/sh\n" + "\n".join(commands) + "\n")
    print("\nOn the Jetson (see docs/jetson.md):\n" + "\n".join(f"  {c}" for c in commands))
    summary["passed"] = not failures
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=str))
    if failures:
        print(f"error: {', '.join(failures)} predictions differ from the bundle's beyond tolerance", file=sys.stderr)
        return 1
    logger.info("done in %.0f s; export in %s, checks in %s", time.time() - start, export_dir, out / "summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
