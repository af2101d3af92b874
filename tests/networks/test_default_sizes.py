"""Default model sizes: the seed's teacher in 3D, and students that are at least as compressed as the seeds'.

The seeds report students with ~97% fewer parameters than their teachers (000, 002) and a teacher/student FLOPs
ratio of ~2.8 for the HDKD pair (001). Sizes are counted on the ``meta`` device: FLOPs of a 128^3 pass without
computing it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medkd3d.networks import create_model
from medkd3d.networks.profile import count_gflops, count_parameters

VOLUME = (4, 128, 128, 128)
SLICE_STACK = (12, 128, 128)  # 3 slices x 4 modalities, the 2.5D bundle's default
STACKS_PER_SUBJECT = 8  # the 2.5D bundle's default number of stacks per subject


def _on_meta(name: str) -> nn.Module:
    return create_model(name).eval().to("meta")


@pytest.fixture(scope="module")
def teacher() -> nn.Module:
    return _on_meta("vggvit3d")


def test_teacher_is_the_seed_teacher_in_3d(teacher: nn.Module) -> None:
    assert teacher.msgff.fusion == "gated"
    assert [info["num_chs"] for info in teacher.feature_info[:5]] == [64, 128, 256, 512, 512]  # VGG19, full width
    assert (teacher.vit.num_features, len(teacher.vit.blocks)) == (768, 12)  # ViT-B
    # At 128^3: VGG stages 2..4 are 16^3, 8^3, 4^3; the ViT map is 8^3; 16^3 is pooled to 8 tokens per axis.
    assert teacher.msgff.feature_sizes == [(16, 16, 16), (8, 8, 8), (4, 4, 4), (8, 8, 8)]
    assert teacher.msgff.token_counts == [512, 512, 64, 512]
    assert 150e6 < count_parameters(teacher) < 170e6


def test_3d_student_compression(teacher: nn.Module) -> None:
    student = _on_meta("efficientnet3d_b0")
    assert count_parameters(student) <= 0.03 * count_parameters(teacher)  # >= 97% fewer parameters
    assert count_gflops(teacher, VOLUME) >= 100 * count_gflops(student, VOLUME)


def test_25d_student_compression(teacher: nn.Module) -> None:
    student = _on_meta("efficientnet25d")
    assert count_parameters(student) <= 0.03 * count_parameters(teacher)
    per_stack = count_gflops(student, SLICE_STACK)
    assert count_gflops(teacher, VOLUME) >= 100 * STACKS_PER_SUBJECT * per_stack  # per subject, all stacks


def test_hdkd_student_is_cheaper_than_its_teacher() -> None:
    teacher, student = _on_meta("hdkd_teacher3d"), _on_meta("hdkd_student3d")
    assert count_parameters(student) < count_parameters(teacher)
    assert count_gflops(teacher, VOLUME) >= 2.8 * count_gflops(student, VOLUME)  # the seed's 5.88 / 2.08


def test_meta_counting_equals_real_counting() -> None:
    """The sizes above are counted on ``meta``; they must equal a real pass (a small model at a small input)."""
    torch.manual_seed(0)
    model = create_model("efficientnet3d_b0", width_multiplier=0.25).eval()
    real = count_gflops(model, (4, 32, 32, 32))
    assert count_gflops(model.to("meta"), (4, 32, 32, 32)) == pytest.approx(real)
