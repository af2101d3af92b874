"""HDKD: MBCSA block and CBAM attention, teacher/student feature parity, DFLT tokens and heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medkd3d.networks import create_model
from medkd3d.networks.hdkd import DFLT, HDKDStudent, HDKDTeacher
from medkd3d.networks.mbcsa import CBAM, ChannelAttention, MBCSABlock, SpatialAttention

TINY = {"channels": (8, 16, 24), "stem_channels": 8}


def test_channel_attention_matches_formula_and_lies_in_unit_interval() -> None:
    attention = ChannelAttention(channels=16, reduction=4)
    x = torch.randn(2, 16, 5, 4, 3) * 3
    weights = attention(x)
    mlp = attention.mlp
    expected = torch.sigmoid(mlp(x.mean(dim=(2, 3, 4))) + mlp(x.amax(dim=(2, 3, 4))))
    assert weights.shape == (2, 16, 1, 1, 1)
    torch.testing.assert_close(weights.flatten(1), expected)
    assert isinstance(mlp[1], torch.nn.GELU)
    assert ((weights > 0) & (weights < 1)).all()


def test_spatial_attention_matches_formula_and_lies_in_unit_interval() -> None:
    attention = SpatialAttention(kernel_size=5)
    x = torch.randn(2, 6, 7, 6, 5) * 3
    weights = attention(x)
    pooled = torch.stack([x.mean(dim=1), x.amax(dim=1)], dim=1)
    expected = torch.sigmoid(F.conv3d(pooled, attention.conv.weight, attention.conv.bias, padding=2))
    assert weights.shape == (2, 1, 7, 6, 5)
    torch.testing.assert_close(weights, expected)
    assert ((weights > 0) & (weights < 1)).all()
    with pytest.raises(ValueError, match="odd"):
        SpatialAttention(kernel_size=4)


def test_cbam_applies_channel_then_spatial_attention() -> None:
    cbam = CBAM(channels=8, reduction=2, spatial_kernel_size=3)
    x = torch.randn(1, 8, 4, 4, 4)
    refined = x * cbam.channel_attention(x)
    torch.testing.assert_close(cbam(x), refined * cbam.spatial_attention(refined))


def test_mbcsa_residual_path_and_downsampling() -> None:
    block = MBCSABlock(16, 16, expansion=4).eval()
    assert block.expand.conv.out_channels == 64 and block.depthwise.conv.groups == 64
    x = torch.randn(2, 16, 6, 5, 4)
    # With the projection's BN silenced, the block must return its input unchanged: the residual is an identity.
    torch.nn.init.zeros_(block.project.adn.N.weight)
    torch.nn.init.zeros_(block.project.adn.N.bias)
    torch.testing.assert_close(block(x), x)

    down = MBCSABlock(16, 32, stride=2)
    assert down(torch.randn(2, 16, 7, 6, 5)).shape == (2, 32, 4, 3, 3)  # odd sizes round up like the conv


def test_teacher_and_student_stage_features_match_exactly() -> None:
    teacher = HDKDTeacher(**TINY, depths=(2, 1, 2), width_multiplier=0.5)
    student = HDKDStudent.from_teacher(teacher, depths=(1, 1, 1), embed_dim=16, num_heads=2, transformer_depth=1)
    direct = create_model("hdkd_student3d", **TINY, depths=(1, 1, 1), width_multiplier=0.5, embed_dim=16, num_heads=2)
    assert student.feature_info == teacher.feature_info == direct.feature_info
    # the stem first (its width: half the first stage's, at least 8), then the stages, widths scaled, rounded to 8
    assert [info["num_chs"] for info in teacher.feature_info] == [8, 8, 8, 16]
    assert [info["reduction"] for info in teacher.feature_info] == [2, 4, 8, 16]

    x = torch.randn(2, 4, 19, 16, 13)
    teacher_shapes = [f.shape for f in teacher.forward_features(x)]
    assert teacher_shapes == [f.shape for f in student.forward_features(x)]
    assert teacher_shapes == [f.shape for f in direct.forward_features(x)]
    assert teacher_shapes[0] == (2, 8, 10, 8, 7) and teacher_shapes[-1] == (2, 16, 2, 1, 1)
    assert sum(p.numel() for p in student.stages.parameters()) < sum(p.numel() for p in teacher.stages.parameters())


def test_student_from_teacher_refuses_structural_overrides() -> None:
    teacher = HDKDTeacher(**TINY, depths=(1, 1, 1))
    with pytest.raises(ValueError, match="channels"):
        HDKDStudent.from_teacher(teacher, channels=(8, 8, 8))
    with pytest.raises(ValueError, match="one value per stage"):
        HDKDTeacher(**TINY, depths=(1, 1))


def test_dflt_has_two_tokens_and_two_heads() -> None:
    dflt = DFLT(in_channels=16, num_classes=3, patch_size=2, embed_dim=16, depth=2, num_heads=2).eval()
    token_counts = []
    dflt.blocks[0].register_forward_hook(lambda _m, args, _out: token_counts.append(args[0].shape[1]))
    cls_logits, dist_logits = dflt(torch.randn(2, 16, 4, 6, 2))
    assert token_counts == [2 * 3 * 1 + 2]  # patches plus the class and distillation tokens
    assert cls_logits.shape == dist_logits.shape == (2, 3)
    assert dflt.head is not dflt.head_dist
    assert not torch.allclose(cls_logits, dist_logits)
    with pytest.raises(ValueError, match="divisible"):
        DFLT(in_channels=16, num_classes=3, embed_dim=10, num_heads=4)


def test_student_forward_is_mean_of_both_heads() -> None:
    student = create_model("hdkd_student3d", **TINY, depths=(1, 1, 1), embed_dim=16, num_heads=2, num_classes=3)
    student.eval()
    x = torch.randn(2, 4, 32, 32, 32)
    cls_logits, dist_logits = student.forward_heads(x)
    logits = student(x)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, (cls_logits + dist_logits) / 2)
    torch.testing.assert_close(student.forward_head(student.forward_features(x)), logits)
