"""Model profiling (parameters, GFLOPs, latency) and the ``medkd3d models`` command."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from medkd3d.networks import create_model, get_model_entry
from medkd3d.networks.cli import (
    compression_summary,
    derive_input_shape,
    profile_registered_model,
    register,
    subject_extent,
)
from medkd3d.networks.profile import count_gflops, count_parameters, measure_latency, spatial_rank


def run_models(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="medkd3d")
    register(parser.add_subparsers())
    args = parser.parse_args(["models", *argv])
    return args.func(args)


def test_count_parameters_by_hand() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))  # 3*4 + 4 + 4*2 + 2
    assert count_parameters(model) == 26
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 10
    assert count_parameters(model) == 26


def test_count_gflops_by_hand() -> None:
    conv = nn.Conv3d(2, 3, kernel_size=3, padding=1)
    # 2 FLOPs per multiply-add: output voxels * out channels * (in channels * 27) * batch.
    assert count_gflops(conv, (2, 4, 4, 4), batch_size=2) * 1e9 == pytest.approx(2 * 4**3 * 3 * 2 * 27 * 2)
    assert count_gflops(nn.Linear(8, 5), (8,), batch_size=3) * 1e9 == pytest.approx(2 * 3 * 8 * 5)


def test_measure_latency_reports_order_statistics_and_restores_the_mode() -> None:
    model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5)).train()
    stats = measure_latency(model, (16,), warmup=1, repeats=5)
    assert set(stats) == {"median_ms", "p90_ms", "mean_ms"}
    assert 0 < stats["median_ms"] <= stats["p90_ms"]
    assert model.training
    with pytest.raises(ValueError, match="repeats >= 1"):
        measure_latency(model, (16,), repeats=0)


def test_spatial_rank_reads_the_first_convolution() -> None:
    assert spatial_rank(nn.Sequential(nn.Conv3d(4, 8, 3), nn.Conv2d(8, 8, 3))) == 3
    assert spatial_rank(nn.Sequential(nn.Linear(4, 4), nn.Conv2d(4, 8, 3))) == 2
    with pytest.raises(ValueError, match="Linear has no convolution"):
        spatial_rank(nn.Linear(4, 4))


@pytest.mark.parametrize(
    ("model_shape", "rank", "requested", "expected"),
    [
        ((4, 128, 128, 128), 3, None, (4, 128, 128, 128)),  # nothing requested: the model's own shape
        ((4, 128, 128, 128), 3, (1, 96, 96, 64), (1, 96, 96, 64)),  # 3D model: taken as is
        ((12, 128, 128), 2, (4, 96, 80, 64), (12, 96, 80)),  # 2.5D model: slice plane of the volume
        ((8, 12, 128, 128), 2, (4, 96, 80, 64), (8, 12, 96, 80)),  # multi-slice 2.5D: keeps slices and channels
        ((8, 12, 128, 128), 2, (20, 64, 64), (8, 20, 64, 64)),  # 2D request for a 2D model: new channels
        ((4, 128, 128, 128), 3, (12, 64, 64), (4, 128, 128, 128)),  # a 3D model cannot use a 2D shape
    ],
)
def test_derive_input_shape(model_shape, rank, requested, expected) -> None:
    assert derive_input_shape(model_shape, rank, requested) == expected


def test_profile_registered_model_rebuilds_for_the_requested_shape() -> None:
    row = profile_registered_model("vit3d", input_shape=(1, 32, 32, 32), tiny=True, repeats=1, warmup=0)
    assert row["input_shape"] == (1, 32, 32, 32)
    # The tiny ViT is rebuilt with in_channels=1 and img_size=32: 64 patches of 8^3 instead of 8.
    expected = create_model("vit3d", **{**get_model_entry("vit3d").tiny_kwargs, "in_channels": 1, "img_size": 32})
    assert row["params"] == count_parameters(expected)
    assert row["gflops"] == pytest.approx(count_gflops(expected, (1, 32, 32, 32)))


def test_models_command_prints_a_row_per_model(capsys) -> None:
    assert run_models("--tiny", "--filter", "vgg1[19]_3d", "--repeats", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[2:] if line.startswith("vgg")}
    assert set(rows) == {"vgg11_3d", "vgg19_3d"}
    for name, cells in rows.items():
        entry = get_model_entry(name)
        torch.manual_seed(0)
        model = create_model(name, **entry.tiny_kwargs)
        assert cells[1] == "teacher"
        assert cells[2] == "x".join(map(str, entry.tiny_input_shape))
        assert float(cells[3]) == pytest.approx(count_parameters(model) / 1e6, abs=1e-3)
        assert float(cells[4]) == pytest.approx(count_gflops(model, entry.tiny_input_shape), abs=1e-3)
        assert float(cells[5]) > 0


def test_models_command_explains_bad_requests(capsys) -> None:
    assert run_models("--tiny", "--filter", "no_such_model*") == 1
    assert "No registered model matches 'no_such_model*'" in capsys.readouterr().out
    assert run_models("--input-shape", "4", "32") == 2
    assert "has no spatial size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_models("--input-shape", "4", "0", "32", "32")


def _row(shape: tuple[int, ...], params: int, gflops: float, median_ms: float | None = None, rank: int = 3) -> dict:
    """A profiled row by hand (``rank``: spatial axes, 3 for a volume model, 2 for a 2D / 2.5D one)."""
    return {"input_shape": shape, "spatial_rank": rank, "params": params, "gflops": gflops, "median_ms": median_ms}


def test_compression_summary_by_hand() -> None:
    volume = (4, 128, 128, 128)
    rows = {
        "vggvit3d": _row(volume, 200, 50.0, 30.0),
        "efficientnet3d_b0": _row(volume, 5, 0.5, 2.0),
        "efficientnet25d_multi": _row((8, 12, 128, 128), 4, 2.0, 1.5, rank=2),  # a subject's 8 stacks in one input
        "hdkd_teacher3d": _row(volume, 10, 6.0),
        "hdkd_student3d": _row(volume, 8, 2.0),
    }
    assert compression_summary(rows) == [
        "efficientnet3d_b0 vs vggvit3d: 97.5% fewer parameters, 100.0x fewer GFLOPs, 15.0x faster",
        "efficientnet25d_multi vs vggvit3d: 98.0% fewer parameters, 25.0x fewer GFLOPs, 20.0x faster",
        "hdkd_student3d vs hdkd_teacher3d: 20.0% fewer parameters, 3.0x fewer GFLOPs",
    ]


def test_compression_summary_says_more_and_slower_for_a_bigger_student() -> None:
    volume = (4, 32, 32, 32)
    rows = {"vggvit3d": _row(volume, 100, 1.0, 2.0), "efficientnet3d_b0": _row(volume, 300, 4.0, 5.0)}
    assert compression_summary(rows) == [
        "efficientnet3d_b0 vs vggvit3d: 200.0% more parameters, 4.0x more GFLOPs, 2.5x slower"
    ]


def test_compression_summary_compares_only_the_same_subject() -> None:
    """A student input that is not the teacher's whole subject (another volume, another slice plane) is no
    per-subject comparison; the single-stack 2.5D network (one stack of a subject) has no pair at all."""
    rows = {
        "vggvit3d": _row((4, 128, 128, 128), 200, 50.0),
        "efficientnet3d_b0": _row((4, 64, 64, 64), 5, 0.5),
        "efficientnet25d_multi": _row((8, 12, 96, 96), 4, 2.0, rank=2),
        "efficientnet25d": _row((12, 128, 128), 4, 0.2, rank=2),
    }
    assert compression_summary(rows) == [
        "efficientnet3d_b0 vs vggvit3d: not compared, their inputs 4x64x64x64 and 4x128x128x128 are not one and "
        "the same subject",
        "efficientnet25d_multi vs vggvit3d: not compared, their inputs 8x12x96x96 and 4x128x128x128 are not one "
        "and the same subject",
    ]
    assert subject_extent(rows["efficientnet25d_multi"]) == (96, 96)
    assert subject_extent(rows["efficientnet25d"]) is None
    assert subject_extent(rows["vggvit3d"]) == (128, 128, 128)


def test_models_command_compares_the_multi_slice_student_per_subject(capsys) -> None:
    """The 2.5D line compares the teacher's volume with all the student's slice stacks of it, at one input each."""
    assert run_models("--tiny", "--filter", "[ve]*", "--repeats", "0", "--input-shape", "4", "32", "32", "32") == 0
    out = capsys.readouterr().out
    teacher = profile_registered_model("vggvit3d", (4, 32, 32, 32), tiny=True, repeats=0)
    student = profile_registered_model("efficientnet25d_multi", (4, 32, 32, 32), tiny=True, repeats=0)
    assert student["input_shape"][0] == get_model_entry("efficientnet25d_multi").tiny_input_shape[0]  # S stacks
    ratio = teacher["gflops"] / student["gflops"]
    expected = f"{ratio:.1f}x fewer GFLOPs" if ratio >= 1 else f"{1 / ratio:.1f}x more GFLOPs"
    assert f"efficientnet25d_multi vs vggvit3d: {100 * (1 - student['params'] / teacher['params']):.1f}% fewer " in out
    assert expected in out
    assert "efficientnet25d vs" not in out  # one slice stack is not a subject
    assert "% more parameters" in out  # the tiny 3D EfficientNet is bigger than the tiny teacher
    assert "-" not in out.split("Compression per subject")[1]  # no negative "fewer"


def test_models_command_prints_the_compression_of_profiled_pairs(capsys) -> None:
    assert run_models("--tiny", "--filter", "hdkd_*", "--repeats", "1", "--warmup", "0") == 0
    out = capsys.readouterr().out
    teacher = profile_registered_model("hdkd_teacher3d", tiny=True, repeats=0)
    student = profile_registered_model("hdkd_student3d", tiny=True, repeats=0)
    reduction = 100 * (1 - student["params"] / teacher["params"])
    assert f"hdkd_student3d vs hdkd_teacher3d: {reduction:.1f}% fewer parameters" in out
    assert "efficientnet3d_b0 vs" not in out  # its teacher was filtered out


def test_compression_summary_says_as_many_when_the_ratio_rounds_to_one() -> None:
    volume = (4, 16, 16, 16)
    rows = {"hdkd_teacher3d": _row(volume, 100, 1.00, 2.0), "hdkd_student3d": _row(volume, 93, 1.04, 1.96)}
    assert compression_summary(rows) == [
        "hdkd_student3d vs hdkd_teacher3d: 7.0% fewer parameters, as many GFLOPs (within 5%), as fast (within 5%)"
    ]  # never "1.0x more GFLOPs"
