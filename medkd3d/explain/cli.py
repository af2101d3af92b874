"""The ``medkd3d explain`` command: class activation maps of a bundle's model for one subject.

Example::

    medkd3d explain --bundle bundles/brats_student_effnet3d --subject BraTS19_TCIA01_131_1 \\
        --dataset-dir /data/BraTS2019 --method gradcam --out explain/ \\
        --teacher-bundle bundles/brats_teacher_vggvit3d

writes, for the subject ``S``, method ``M`` and each model ``B`` (the bundle directory name):

- ``S_M_B.nii.gz``: the map on the grid of the input files (same shape and affine), float32 in ``[0, 1]``,
  1 = most important, 0 where no map exists (2.5D models: slices no stack was centred on);
- ``S_M_B.png``: sagittal, coronal and axial planes through the map's peak, over the chosen modality;
- ``S_M_B.json``: the prediction, the explained class, the layer and the slice positions;
- with ``--teacher-bundle``: ``S_M_agreement.json`` (Pearson, top-10% Dice/IoU, mass in the tumour).

It prints what the numbers mean: the share of each map's mass inside the tumour segmentation (when the subject
has one) against what a uniform map would score, the teacher-student agreement with its scale, and a warning in
words for a constant (collapsed) map, whose correlation is undefined.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# ``--override ID=VALUE``: the same argparse type as ``medkd3d export`` (its module imports only the stdlib).
from medkd3d.export.cli import parse_override as _override

__all__ = ["register"]

logger = logging.getLogger(__name__)

#: Modality names of ``--modality``, in datalist channel order.
MODALITY_CHOICES = ("t1", "t1ce", "t2", "flair")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``medkd3d explain`` to the ``medkd3d`` command."""
    parser = subparsers.add_parser(
        "explain",
        help="class activation maps (Grad-CAM, Score-CAM, occlusion) of a bundle's model for one subject",
        description=(
            "Explain a trained bundle model's prediction for one subject: the map is saved as NIfTI on the input's "
            "grid (same affine), as a tri-planar PNG overlay, and compared with a teacher's map with --teacher-bundle."
        ),
    )
    model = parser.add_argument_group("model")
    model.add_argument("--bundle", required=True, help="MONAI bundle directory, e.g. bundles/brats_student_effnet3d")
    model.add_argument("--checkpoint", help="weights to load (default: the bundle's models/model.pt)")
    model.add_argument(
        "--override", action="append", type=_override, default=[], metavar="ID=VALUE",
        help="bundle config override the model was trained with, e.g. spatial_size=[64,64,64] (repeatable)",
    )  # fmt: skip
    data = parser.add_argument_group("subject (--subject from a dataset, or --input files)")
    data.add_argument("--subject", help="subject id to look up (with --input: the name used for the output files)")
    data.add_argument("--input", nargs=4, metavar=("T1", "T1CE", "T2", "FLAIR"), help="the four modality files")
    data.add_argument("--seg", help="segmentation of --input (for the in-tumour mass of the agreement)")
    data.add_argument("--dataset-dir", help="BraTS dataset root to find --subject in (default: the bundle's)")
    data.add_argument("--datalist", help="datalist JSON to find --subject in")
    method = parser.add_argument_group("explanation")
    method.add_argument("--method", choices=("gradcam", "scorecam", "occlusion"), default="gradcam")
    method.add_argument("--target-class", help="class index or name to explain (default: the predicted class)")
    method.add_argument("--layer", help="CAM layer module path (default: the deepest stage map with >= 4 voxels/axis)")
    method.add_argument("--num-stacks", type=int, help="2.5D models: number of slice stacks (default: the bundle's)")
    method.add_argument("--batch-size", type=int, default=16, help="inputs per forward pass (Score-CAM, occlusion)")
    method.add_argument("--mask-size", type=int, default=16, help="occlusion window in voxels per axis")
    method.add_argument("--overlap", type=float, default=0.5, help="occlusion window overlap in [0, 1)")
    method.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    teacher = parser.add_argument_group("teacher-student agreement")
    teacher.add_argument("--teacher-bundle", "--compare-bundle", dest="teacher_bundle", help="bundle to compare with")
    teacher.add_argument("--teacher-checkpoint", help="weights of the teacher bundle (default: its models/model.pt)")
    teacher.add_argument("--teacher-layer", help="CAM layer of the teacher (default as for --layer)")
    teacher.add_argument(
        "--teacher-override", action="append", type=_override, default=[], metavar="ID=VALUE",
        help="config override of the teacher bundle (repeatable)",
    )  # fmt: skip
    teacher.add_argument("--top-fraction", type=float, default=0.1, help="top voxel fraction for the overlap")
    output = parser.add_argument_group("output")
    output.add_argument("--out", required=True, help="output folder")
    output.add_argument("--modality", choices=MODALITY_CHOICES, default="flair", help="background of the PNG overlay")
    parser.set_defaults(func=_explain)


def _find_subject(subject: str, datalist: Mapping[str, Any], source: str) -> dict[str, Any]:
    records = [r for key, value in datalist.items() if isinstance(value, list) for r in value if isinstance(r, Mapping)]
    for record in records:
        if str(record.get("subject")) == subject:
            return dict(record)
    known = [str(r.get("subject")) for r in records]
    shown = ", ".join(known[:5]) + (f", ... ({len(known)} subjects)" if len(known) > 5 else "")
    raise ValueError(f"subject {subject!r} is not in {source} (it has: {shown or 'no subjects'}); check the id")


def _subject_record(args: argparse.Namespace, parser: Any) -> dict[str, Any]:
    """The datalist record to explain, from ``--input`` files or by looking ``--subject`` up."""
    from medkd3d.data import read_datalist

    if args.input:
        missing = [p for p in [*args.input, args.seg] if p and not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"--input/--seg files not found: {', '.join(missing)}; give T1 T1CE T2 FLAIR paths")
        subject = args.subject or re.sub(r"(_t1)?\.nii(\.gz)?$", "", Path(args.input[0]).name)
        return {"subject": subject, "image": [str(Path(p).resolve()) for p in args.input], "seg": args.seg}
    if not args.subject:
        raise ValueError(
            "give the subject to explain: --subject ID (with --dataset-dir or --datalist) or --input FILES"
        )
    if args.datalist:
        return _find_subject(args.subject, read_datalist(args.datalist), f"datalist {args.datalist}")
    if not args.dataset_dir and "datalist" in parser and parser.get_parsed_content("datalist"):
        path = parser.get_parsed_content("datalist")
        return _find_subject(args.subject, read_datalist(path), f"datalist {path}")
    root = args.dataset_dir or (parser.get_parsed_content("dataset_dir") if "dataset_dir" in parser else None)
    if not root or not Path(root).is_dir():
        raise FileNotFoundError(
            f"dataset folder {root} not found: pass --dataset-dir /path/to/BraTS or --datalist datalist.json to find "
            f"subject {args.subject!r}, or the files themselves with --input T1 T1CE T2 FLAIR"
        )
    return _find_subject(args.subject, read_datalist(root), f"dataset {root}")


def _target_class(value: str | None, class_names: Sequence[str]) -> int | None:
    if value is None:
        return None
    if value in class_names:
        return list(class_names).index(value)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--target-class {value!r} is neither a class index nor one of {list(class_names)}") from None


def _save_explanation(
    explanation: Any, record: Mapping[str, Any], out: Path, tag: str, modality: str, in_tumour: Mapping[str, Any]
) -> list[Path]:
    import nibabel as nib
    import numpy as np

    from medkd3d.explain.io import save_map_nifti, save_overlay_png, write_json

    stem = f"{explanation.subject}_{explanation.method}_{tag}"
    background_file = record["image"][MODALITY_CHOICES.index(modality)]
    background = np.asarray(nib.load(background_file).dataobj, dtype=np.float32)
    class_name = explanation.class_names[explanation.target_class]
    probability = explanation.probabilities[explanation.target_class]
    title = (
        f"{explanation.subject}: {explanation.method} of {tag} for {class_name} (p = {probability:.2f}) on {modality}"
    )
    return [
        save_map_nifti(explanation.map, explanation.affine, out / f"{stem}.nii.gz"),
        save_overlay_png(background, explanation.map, explanation.affine, out / f"{stem}.png", title=title),
        write_json(out / f"{stem}.json", {**explanation.summary(), "overlay_modality": modality, **in_tumour}),
    ]


def _brain_mask(record: Mapping[str, Any]) -> Any:
    """Voxels that are nonzero in any modality (the skull-stripped brain) on the input grid."""
    import nibabel as nib
    import numpy as np

    return np.any([np.asarray(nib.load(path).dataobj) != 0 for path in record["image"]], axis=0)


def _segmentation(record: Mapping[str, Any], shape: tuple[int, ...]) -> Any:
    """The subject's segmentation on the map grid, or ``None`` when it has none."""
    import nibabel as nib
    import numpy as np

    seg_path = record.get("seg")
    if not seg_path:
        return None
    seg = np.asarray(nib.load(seg_path).dataobj)
    if seg.shape != tuple(shape):
        raise ValueError(
            f"subject {record.get('subject')!r}: segmentation {seg_path} has shape {seg.shape} but the images have "
            f"{tuple(shape)}; give the segmentation of these images"
        )
    return seg


def _in_tumour(explanation: Any, brain: Any, seg: Any) -> dict[str, Any]:
    """:func:`~medkd3d.explain.agreement.map_in_tumour` of one map on the brain voxels it covers."""
    from medkd3d.explain.agreement import map_in_tumour

    return map_in_tumour(explanation.map, seg, brain & explanation.coverage)


def _agreement(
    teacher: Any, student: Any, record: Mapping[str, Any], brain: Any, seg: Any, fraction: float
) -> dict[str, Any]:
    from medkd3d.explain.agreement import map_agreement

    region = brain & teacher.coverage & student.coverage
    return {
        "subject": student.subject,
        "method": student.method,
        "teacher": teacher.summary(),
        "student": student.summary(),
        "region": "brain voxels (nonzero in any modality) where both maps exist",
        "segmentation": record.get("seg"),
        **map_agreement(teacher.map, student.map, seg=seg, mask=region, fraction=fraction),
    }


def _explain(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as error:
        # bad input (files, ids, checkpoints that do not fit): one clear line; the traceback with --verbose
        logger.debug("medkd3d explain failed", exc_info=True)
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    import torch

    from medkd3d.explain.agreement import describe_agreement, describe_map
    from medkd3d.explain.bundle import load_bundle_model
    from medkd3d.explain.explainer import explain_subject
    from medkd3d.explain.io import write_json

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    model, parser = load_bundle_model(args.bundle, args.checkpoint, dict(args.override))
    record = _subject_record(args, parser)
    settings = {
        "method": args.method, "num_stacks": args.num_stacks, "batch_size": args.batch_size,
        "mask_size": args.mask_size, "overlap": args.overlap, "device": device, "progress": True,
    }  # fmt: skip
    target = _target_class(args.target_class, model.class_names)
    student = explain_subject(model, record, target_class=target, layer=args.layer, **settings)
    brain, seg = _brain_mask(record), _segmentation(record, student.map.shape)
    student_in_tumour = _in_tumour(student, brain, seg)
    written = _save_explanation(student, record, out, model.name, args.modality, student_in_tumour)

    if args.teacher_bundle:
        teacher_model, _ = load_bundle_model(args.teacher_bundle, args.teacher_checkpoint, dict(args.teacher_override))
        if teacher_model.name == model.name:
            teacher_model.name = f"{teacher_model.name}_teacher"
        # the student's explained class, so both maps answer the same question
        teacher = explain_subject(
            teacher_model, record, target_class=student.target_class, layer=args.teacher_layer, **settings
        )
        written += _save_explanation(
            teacher, record, out, teacher_model.name, args.modality, _in_tumour(teacher, brain, seg)
        )
        report = _agreement(teacher, student, record, brain, seg, args.top_fraction)
        written.append(write_json(out / f"{student.subject}_{args.method}_agreement.json", report))
        print(
            f"{student.subject}: {args.method} of the teacher {teacher_model.name} and the student {model.name}; "
            "teacher-student agreement:"
        )
        lines = describe_agreement(report)
    else:
        print(f"{student.subject}: {args.method} of {model.name}:")
        lines = describe_map(f"map of {model.name}", student_in_tumour)
    if not record.get("seg"):
        lines.append("no tumour segmentation for this subject, so no mass inside it (give one with --seg)")
    for line in lines:
        print(f"  {line}")
    for path in written:
        print(path)
    return 0
