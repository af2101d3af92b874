"""Data commands of ``medkd3d``: ``synth``, ``datalist``, ``check-data`` and ``split``.

They need only NumPy, nibabel and the standard library (no torch), so the modules are imported at the top.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from medkd3d.data.discovery import (
    DISCOVERY_LAYOUTS,
    discover_brats,
    load_datalist,
    parse_modality_patterns,
    write_datalist,
)
from medkd3d.data.splits import make_splits, write_splits
from medkd3d.data.synthetic import SYNTHETIC_LAYOUTS, generate_synthetic_brats
from medkd3d.data.validation import check_data

_LAYOUT_HELP = (
    "brats2019: {HGG,LGG}/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz (also BraTS 2018); "
    "brats2020: BraTS20_Training_NNN/ folders + name_mapping.csv; "
    "brats2021: BraTS2021_NNNNN/ folders + a labels CSV; "
    "generic: any folder of subject folders + a labels CSV (also BraTS 2023+: BraTS-GLI-XXXXX-YYY/ folders with "
    "t1n/t1c/t2w/t2f files)"
)


def _add_discovery_options(parser: argparse.ArgumentParser) -> None:
    """The label and layout options that ``datalist`` and ``check-data`` share."""
    parser.add_argument(
        "--labels",
        metavar="CSV",
        default=None,
        help="CSV with one row per subject holding its label (default: name_mapping.csv for BraTS 2020, the HGG/LGG "
        "folders for BraTS 2019, the only *.csv in ROOT for BraTS 2021 and generic folders)",
    )
    parser.add_argument(
        "--label-column",
        metavar="COL",
        default=None,
        help="column of --labels holding the label (default: 'Grade', or the only column besides the subject id); "
        "grades map to LGG=0, HGG=1, integer codes (e.g. MGMT_value) keep their value; a value outside a known set "
        "(Grade: LGG/HGG, MGMT_value: 0/1) is an error unless --class-names declares the classes",
    )
    parser.add_argument(
        "--class-names",
        metavar="A,B,...",
        default=None,
        type=lambda text: [n.strip() for n in text.split(",")],
        help="declare the classes, in label order (e.g. LGG,HGG,XGG); every label must be one of them",
    )
    parser.add_argument(
        "--subject-column",
        metavar="COL",
        default=None,
        help="column of --labels holding the subject id, matched to folder names exactly, case-insensitively or by "
        "trailing number (default: the first of BraTS_2020_subject_ID, BraTS21ID, BraTS_2019_subject_ID, subject, "
        "subject_id, ID)",
    )
    parser.add_argument(
        "--layout",
        choices=DISCOVERY_LAYOUTS,
        default="auto",
        help=f"dataset layout (default: detect it). {_LAYOUT_HELP}",
    )


def _add_modality_option(parser: argparse.ArgumentParser) -> None:
    """``--modality NAME=GLOB``, shared by ``datalist`` and ``check-data``; parsed by :func:`_discovery_kwargs`."""
    parser.add_argument(
        "--modality",
        action="append",
        default=[],
        metavar="NAME=GLOB",
        help="file-name pattern of a modality (NAME: t1, t1ce, t2, flair or seg) in each subject folder, for files "
        "whose names carry no modality token, e.g. --modality 't1=*_T1w.nii.gz' --modality 't1ce=*_gd.nii.gz' "
        "(shell-style, case-insensitive; quote it); repeat it per modality; modalities without a pattern are "
        "recognised by name",
    )


def _discovery_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The :func:`~medkd3d.data.discover_brats` keyword arguments of :func:`_add_discovery_options` and
    :func:`_add_modality_option`.

    Raises:
        ValueError: for a malformed ``--modality`` (see :func:`~medkd3d.data.parse_modality_patterns`).
    """
    return {
        "labels_csv": args.labels,
        "label_column": args.label_column,
        "subject_column": args.subject_column,
        "layout": args.layout,
        "class_names": args.class_names,
        "modality_patterns": parse_modality_patterns(args.modality),
    }


def _synth(args: argparse.Namespace) -> int:
    root = generate_synthetic_brats(
        args.out,
        layout=args.layout,
        n_hgg=args.n_hgg,
        n_lgg=args.n_lgg,
        shape=tuple(args.shape),
        seed=args.seed,
        anatomy=args.anatomy,
        num_workers=args.workers,
    )
    print(f"wrote {args.n_hgg} HGG + {args.n_lgg} LGG synthetic subjects ({args.layout}) to {root}")
    return 0


def _datalist(args: argparse.Namespace) -> int:
    try:
        datalist = discover_brats(args.root, **_discovery_kwargs(args))
    except (FileNotFoundError, ValueError) as error:  # DataValidationError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.labeled_only:
        # e.g. BraTS 2021 subjects that the RSNA-MICCAI MGMT CSV does not list: training needs every label
        left_out = [r["subject"] for r in datalist["training"] if r["label"] is None]
        datalist["training"] = [r for r in datalist["training"] if r["label"] is not None]
        if left_out:
            print(
                f"left out {len(left_out)} subjects without a label: {', '.join(left_out[:5])}"
                + (", ..." if len(left_out) > 5 else "")
            )
        if not datalist["training"]:
            print(f"error: no subject of {args.root} has a label; check --labels and --label-column", file=sys.stderr)
            return 1
    path = write_datalist(datalist, args.out)
    counts = {
        name: sum(r["label"] == i for r in datalist["training"]) for i, name in enumerate(datalist["class_names"])
    }
    unlabeled = sum(r["label"] is None for r in datalist["training"])
    if unlabeled:
        counts["unlabeled"] = unlabeled
    summary = ", ".join(f"{name}: {n}" for name, n in counts.items())
    print(f"wrote {path}: {len(datalist['training'])} subjects ({summary}), layout {datalist['layout']}")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    try:
        problems = check_data(
            args.data,
            require_labels=not args.allow_unlabeled,
            affine_atol=args.affine_atol,
            num_workers=args.workers,
            progress=args.progress,
            **_discovery_kwargs(args),
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) found in {args.data}", file=sys.stderr)
        return 1
    print(f"OK: {args.data} has no problems")
    return 0


def _per_class(value: str) -> int | str:
    if value == "all":
        return value
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'all', got {value!r}")
    return number


def _run_split(args: argparse.Namespace) -> int:
    try:
        datalist = load_datalist(args.datalist)
        splits = make_splits(
            datalist["training"],
            num_folds=args.folds,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            train_per_class=args.train_per_class,
            seed=args.seed,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    splits["datalist"] = str(Path(args.datalist).resolve())
    splits["class_names"] = datalist.get("class_names")
    path = write_splits(splits, args.out)
    sizes = ", ".join(f"fold {i}: {len(f['train'])} train / {len(f['val'])} val" for i, f in enumerate(splits["folds"]))
    print(f"wrote {path}: {len(splits['test'])} test; {sizes}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth``, ``datalist``, ``check-data`` and ``split`` sub-commands.

    Args:
        subparsers: the sub-parser collection of the ``medkd3d`` parser.
    """
    synth = subparsers.add_parser(
        "synth",
        help="write a synthetic BraTS dataset (brain MRI with gliomas, HGG and LGG)",
        description="Write a synthetic BraTS dataset in the exact folder and file naming of a BraTS release: "
        "T1, T1ce, T2 and FLAIR int16 NIfTI volumes (1 mm) built on the MNI152 anatomy, with HGG and LGG tumour "
        "phenotypes that overlap, scanner bias fields and noise, and BraTS segmentations (labels 1, 2, 4). "
        "The same seed gives byte-identical files.",
    )
    synth.add_argument("--out", required=True, metavar="DIR", help="dataset root to write (created if needed)")
    synth.add_argument(
        "--layout",
        choices=SYNTHETIC_LAYOUTS,
        default="brats2019",
        help="naming to follow (default: %(default)s). " + _LAYOUT_HELP.split("; generic")[0],
    )
    synth.add_argument("--n-hgg", type=int, default=10, metavar="N", help="high-grade subjects (default: %(default)s)")
    synth.add_argument("--n-lgg", type=int, default=10, metavar="M", help="low-grade subjects (default: %(default)s)")
    synth.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(240, 240, 155),
        metavar=("X", "Y", "Z"),
        help="volume shape in voxels; the 240x240x155 mm BraTS field is scaled onto it (default: 240 240 155)",
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    synth.add_argument(
        "--anatomy",
        choices=("auto", "mni152", "procedural"),
        default="auto",
        help="brain anatomy: nilearn's MNI152 template, or a procedural brain (default: MNI152 if "
        "nilearn is installed)",
    )
    synth.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="subjects synthesised in parallel threads; the output does not depend on it (default: %(default)s)",
    )
    synth.set_defaults(func=_synth)

    datalist = subparsers.add_parser(
        "datalist",
        help="find the subjects of a BraTS folder and write a MONAI datalist JSON",
        description="Detect the layout of ROOT, find the T1, T1ce, T2, FLAIR (and seg) files of every subject "
        "(.nii or .nii.gz, any capitalisation, t1ce/t1gd/t1c spellings, the modality read from the end of the file "
        "name, or by a --modality pattern) and write a MONAI-style datalist with paths relative to the JSON file. "
        "Fails, listing every subject, if a modality is missing or matched by more than one file.",
    )
    datalist.add_argument("root", metavar="ROOT", help="dataset root (the folder holding HGG/LGG or the subjects)")
    datalist.add_argument("--out", required=True, metavar="JSON", help="datalist file to write")
    _add_modality_option(datalist)
    datalist.add_argument(
        "--labeled-only",
        action="store_true",
        help="leave out the subjects without a label (e.g. BraTS 2021 subjects that an MGMT labels CSV does not "
        "list); training refuses a datalist with unlabeled subjects",
    )
    _add_discovery_options(datalist)
    datalist.set_defaults(func=_datalist)

    check = subparsers.add_parser(
        "check-data",
        help="read every file of a dataset once and report all problems",
        description="Validate a dataset root or a datalist JSON in one pass and print one line per problem "
        "(subject, file, problem, fix): missing modality, unreadable/truncated file, non-3D image, NaN/Inf voxels, "
        "all-zero volume, modalities with different shapes or affines, duplicate subject ids, missing labels, "
        "labels outside the class list. Exits with 1 if any problem is found, 0 otherwise. For a ROOT, subjects, "
        "modalities and labels are found as by `medkd3d datalist` (--labels, --label-column, --subject-column, "
        "--layout, --modality).",
    )
    check.add_argument("data", metavar="ROOT|DATALIST", help="dataset root folder or datalist JSON file")
    check.add_argument(
        "--allow-unlabeled",
        action="store_true",
        help="do not report subjects without a label (unlabeled inference data)",
    )
    check.add_argument(
        "--affine-atol",
        type=float,
        default=1e-3,
        metavar="TOL",
        help="tolerated difference between the affines of a subject's files (default: %(default)s)",
    )
    check.add_argument(
        "--workers", type=int, default=None, metavar="N", help="threads reading files (default: min(4, CPU count))"
    )
    check.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: with more than 20 subjects)",
    )
    _add_modality_option(check)
    _add_discovery_options(check)
    check.set_defaults(func=_check_data)

    split = subparsers.add_parser(
        "split",
        help="patient-level stratified k-fold or train/val/test split of a datalist",
        description="Split the subjects of a datalist by patient, stratified by class, seeded; write a JSON split "
        "file that training configs and `medkd3d.data.split_records` read.",
    )
    split.add_argument("datalist", help="datalist JSON written by `medkd3d datalist`")
    scheme = split.add_mutually_exclusive_group()
    scheme.add_argument("--folds", type=int, default=None, help="k-fold cross-validation with K folds (default 5)")
    scheme.add_argument("--val-fraction", type=float, default=None, help="single train/val split instead of k-fold")
    split.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="fraction of each class held out for test before the folds, the same for every fold (default 0.2, as "
        "the bundles' test_fraction; 0 holds out none, and the bundles' evaluate.json then refuses to report)",
    )
    split.add_argument(
        "--train-per-class",
        type=_per_class,
        default=None,
        metavar="N|all",
        help="keep N training subjects per class (data-size studies; nested across N for one seed)",
    )
    split.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    split.add_argument("--out", required=True, help="output split JSON")
    split.set_defaults(func=_run_split)
