"""``medkd3d explain`` end to end on the shipped bundles, shrunk by config overrides, with tiny checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medkd3d.bundles import bundle_parser
from medkd3d.data import discover_brats
from medkd3d.explain import cli

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"

#: Config overrides that make each bundle's network tiny (32^3 volumes), as a user passes them with --override.
TINY = {
    "brats_student_effnet3d": ["spatial_size=[32,32,32]", "network_def#width_multiplier=0.25"],
    "brats_student_effnet25d": [
        "spatial_size=[32,32,32]",
        "num_stacks=4",
        "network_def#backbone=mobilenetv3_small_050",
    ],
    "brats_teacher_vggvit3d": [
        "spatial_size=[32,32,32]",
        "network_def#vgg_depth=11",
        "network_def#width_multiplier=0.0625",
        "network_def#patch_size=8",
        "network_def#vit_hidden_size=24",
        "network_def#vit_layers=1",
        "network_def#vit_heads=2",
        "network_def#msgff_dim=16",
        "network_def#msgff_heads=2",
        "network_def#max_tokens_per_axis=2",
    ],
}

pytestmark = pytest.mark.slow


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="medkd3d")
    cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def bundle_args(name: str, checkpoints: dict[str, Path], prefix: str = "") -> list[str]:
    """``--bundle``/``--checkpoint``/``--override`` arguments (``prefix="teacher-"`` for the compared bundle)."""
    args = [f"--{prefix}bundle", str(BUNDLES / name), f"--{prefix}checkpoint", str(checkpoints[name])]
    for override in TINY[name]:
        args += [f"--{prefix}override", override]
    return args


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint per bundle, saved as the bundles save them (``{"model": state_dict}``), random weights."""
    missing = [name for name in TINY if not (BUNDLES / name / "configs" / "inference.json").is_file()]
    if missing:
        pytest.skip(f"bundles without configs/inference.json: {missing}")
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for name, overrides in TINY.items():
        torch.manual_seed(0)
        network = bundle_parser(BUNDLES / name, dict(cli._override(o) for o in overrides)).get_parsed_content(
            "network_def"
        )
        paths[name] = folder / f"{name}.pt"
        torch.save({"model": network.state_dict()}, paths[name])
    return paths


@pytest.fixture(scope="module")
def subject(synthetic_brats_root: Path) -> dict:
    return discover_brats(synthetic_brats_root)["training"][0]


def test_gradcam_of_a_3d_student_against_its_teacher(
    checkpoints: dict[str, Path],
    subject: dict,
    synthetic_brats_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "explain", *bundle_args("brats_student_effnet3d", checkpoints),
        *bundle_args("brats_teacher_vggvit3d", checkpoints, prefix="teacher-"),
        "--subject", subject["subject"], "--dataset-dir", str(synthetic_brats_root),
        "--method", "gradcam", "--out", str(tmp_path), "--device", "cpu",
    ]  # fmt: skip
    assert run(argv) == 0
    source = nib.load(subject["image"][0])
    for model in ("brats_student_effnet3d", "brats_teacher_vggvit3d"):
        stem = tmp_path / f"{subject['subject']}_gradcam_{model}"
        saved = nib.load(f"{stem}.nii.gz")
        assert saved.shape == source.shape
        np.testing.assert_allclose(saved.affine, source.affine)
        values = saved.get_fdata()
        # networks trained for one tiny epoch may have no positive evidence for the explained class anywhere: an
        # all-zero Grad-CAM is then the right answer (the agreement's pearson is None, below); the CAM values
        # themselves are checked against hand computations in test_explain_cam.py
        assert values.min() >= 0 and values.max() <= 1
        assert Path(f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        summary = json.loads(Path(f"{stem}.json").read_text())
        assert summary["model"] == model and summary["layer"] and summary["overlay_modality"] == "flair"
    report = json.loads((tmp_path / f"{subject['subject']}_gradcam_agreement.json").read_text())
    assert report["segmentation"] == subject["seg"]
    assert report["teacher"]["target_class"] == report["student"]["target_class"]
    assert report["pearson"] is None or -1 <= report["pearson"] <= 1
    for key in ("teacher_mass_in_tumour", "student_mass_in_tumour", "tumour_fraction_of_region"):
        assert report[key] is None or 0 <= report[key] <= 1
    assert 0 < report["tumour_fraction_of_region"] < 1 and report["voxels"] > 0
    # the printed report gives each number with its meaning, never a bare "None"
    printed = capsys.readouterr().out
    assert "teacher-student agreement:" in printed and "None" not in printed
    assert "pearson r" in printed
    assert printed.count("of its mass is inside the tumour segmentation") + printed.count("no mass (all zero)") == 2
    for model in ("student", "teacher"):
        constant = report[f"{model}_constant"]
        assert (f"WARNING: the {model} map is constant (collapsed)" in printed) == constant


def test_scorecam_of_a_2p5d_student_from_input_files(
    checkpoints: dict[str, Path], subject: dict, tmp_path: Path
) -> None:
    argv = [
        "explain", *bundle_args("brats_student_effnet25d", checkpoints),
        *bundle_args("brats_student_effnet3d", checkpoints, prefix="teacher-"),
        "--input", *subject["image"], "--seg", subject["seg"], "--subject", "case1", "--target-class", "HGG",
        "--method", "scorecam", "--batch-size", "8", "--modality", "t1ce", "--out", str(tmp_path), "--device", "cpu",
    ]  # fmt: skip
    assert run(argv) == 0
    summary = json.loads((tmp_path / "case1_scorecam_brats_student_effnet25d.json").read_text())
    assert summary["target_class_name"] == "HGG" and summary["slice_axis"] == 2
    assert len(summary["slice_centres"]) == 4 and 0 < summary["coverage_fraction"] < 1
    report = json.loads((tmp_path / "case1_scorecam_agreement.json").read_text())
    assert report["student"]["slice_centres"] == summary["slice_centres"] and report["teacher"]["slice_centres"] is None
    assert report["top_fraction"] == 0.1


def test_occlusion_map(checkpoints: dict[str, Path], subject: dict, synthetic_brats_root: Path, tmp_path: Path) -> None:
    argv = [
        "explain", *bundle_args("brats_student_effnet3d", checkpoints), "--subject", subject["subject"],
        "--dataset-dir", str(synthetic_brats_root), "--method", "occlusion", "--mask-size", "16",
        "--out", str(tmp_path), "--device", "cpu",
    ]  # fmt: skip
    assert run(argv) == 0
    summary = json.loads((tmp_path / f"{subject['subject']}_occlusion_brats_student_effnet3d.json").read_text())
    assert summary["layer"] is None and summary["method"] == "occlusion"


def test_errors_name_the_problem(
    checkpoints: dict[str, Path], subject: dict, synthetic_brats_root: Path, tmp_path: Path, capsys
) -> None:
    model = bundle_args("brats_student_effnet3d", checkpoints)
    common = ["--dataset-dir", str(synthetic_brats_root), "--out", str(tmp_path), "--device", "cpu"]
    cases = {
        "subject 'BraTS19_nobody' is not in dataset": [*model, "--subject", "BraTS19_nobody"],
        "not found: train the model first": [
            "--bundle", str(BUNDLES / "brats_student_effnet3d"), "--checkpoint", str(tmp_path / "x.pt"),
            "--subject", subject["subject"],
        ],
        "'GBM' is neither a class index nor one of": [*model, "--subject", subject["subject"], "--target-class", "GBM"],
        "missing_t2.nii.gz": [*model, "--input", *subject["image"][:2], str(tmp_path / "missing_t2.nii.gz"),
                              subject["image"][3]],
        "has no layer 'blocks.9'": [*model, "--subject", subject["subject"], "--layer", "blocks.9"],
    }  # fmt: skip
    for message, argv in cases.items():
        assert run(["explain", *argv, *common]) == 1
        assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.nii.gz"))  # nothing written for failed runs
