"""Volume-to-slice distillation: depth pooling at the student's slice position, adapter, and the logit KD."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medkd3d.losses.kd import KDLoss
from medkd3d.losses.volume_to_slice import (
    VolumeToSliceFeatureLoss,
    VolumeToSliceKDLoss,
    depth_pooling_weights,
    pool_teacher_slices,
)

DEPTH = 8


def one_hot_depth_volume(batch: int = 2, axis: int = 2) -> torch.Tensor:
    """``[B, DEPTH, 3, 3, DEPTH]`` (depth on spatial ``axis``) whose channel ``c`` is 1 exactly at depth ``c``."""
    volume = torch.eye(DEPTH)[:, None, None, :].expand(DEPTH, 3, 3, DEPTH)  # [C, P, Q, D]
    return volume.movedim(-1, 1 + axis).unsqueeze(0).repeat(batch, 1, 1, 1, 1)


def test_depth_pooling_picks_the_teacher_slice_at_the_slice_index() -> None:
    teacher = one_hot_depth_volume()
    # slice centres as fractions of the depth extent: (k + 0.5) / DEPTH is the centre of slice k
    pooled = pool_teacher_slices(teacher, torch.tensor([(3 + 0.5) / DEPTH, (6 + 0.5) / DEPTH]), window=0)
    assert pooled.shape == (2, DEPTH, 3, 3)
    assert torch.equal(pooled[:, :, 1, 1], torch.eye(DEPTH)[[3, 6]])
    # window 1 averages slices 2, 3, 4; at the border slice 0 repeats (replicate padding)
    pooled = pool_teacher_slices(teacher, torch.tensor([3.5 / DEPTH, 0.5 / DEPTH]), window=1)
    expected = torch.zeros(2, DEPTH)
    expected[0, 2:5] = 1 / 3
    expected[1, :2] = torch.tensor([2 / 3, 1 / 3])
    assert torch.allclose(pooled[:, :, 0, 2], expected)
    # between two slice centres the slices are interpolated linearly; align_corners maps 0 and 1 to the ends
    assert torch.allclose(depth_pooling_weights(torch.tensor(4.0 / DEPTH), DEPTH)[3:5], torch.tensor([0.5, 0.5]))
    ends = depth_pooling_weights(torch.tensor([0.0, 1.0]), DEPTH, align_corners=True)
    assert torch.equal(ends, torch.eye(DEPTH)[[0, DEPTH - 1]])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_depth_pooling_follows_the_slicing_axis(axis: int) -> None:
    teacher = one_hot_depth_volume(axis=axis % 3)
    pooled = pool_teacher_slices(teacher, torch.tensor([5.5 / DEPTH, 1.5 / DEPTH]), axis=axis)
    assert torch.equal(pooled[:, :, 0, 0], torch.eye(DEPTH)[[5, 1]])


@pytest.mark.parametrize("adapter_side", ["student", "teacher"])
def test_gradients_reach_adapter_and_student_but_not_the_teacher(adapter_side: str) -> None:
    loss = VolumeToSliceFeatureLoss(6, 8, window=1, adapter_side=adapter_side)
    student = torch.randn(2, 6, 8, 8, requires_grad=True)
    teacher = torch.randn(2, 8, 4, 4, 4, requires_grad=True)  # not under no_grad, as if the trainer forgot
    total, components = loss([student], [teacher], slice_index=torch.tensor([0.2, 0.9]))
    assert set(components) == {"v2s_feat"} and total.item() > 0
    total.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert loss.adapters[0].weight.grad is not None and loss.adapters[0].weight.grad.abs().sum() > 0
    assert teacher.grad is None


def test_feature_loss_matches_hand_computation_with_an_identity_adapter() -> None:
    loss = VolumeToSliceFeatureLoss(DEPTH, DEPTH, weight=2.0, window=0)
    with torch.no_grad():
        loss.adapters[0].weight.copy_(torch.eye(DEPTH)[:, :, None, None])
        loss.adapters[0].bias.zero_()
    student = torch.rand(2, DEPTH, 3, 3)
    index = torch.tensor([2.5 / DEPTH, 7.5 / DEPTH])
    total, _ = loss([student], [one_hot_depth_volume()], slice_index=index)
    target = torch.eye(DEPTH)[[2, 7]][:, :, None, None].expand_as(student)
    assert total.item() == pytest.approx(2.0 * F.mse_loss(student, target).item(), rel=1e-6)


def test_multi_slice_students_are_matched_per_slice_or_with_the_mean_slice() -> None:
    loss = VolumeToSliceFeatureLoss(4, 8, window=1)
    teacher = torch.randn(2, 8, 4, 4, 6)
    index = torch.tensor([[0.1, 0.5, 0.9], [0.3, 0.4, 0.6]])
    per_slice = torch.randn(2, 3, 4, 4, 4)
    total, _ = loss([per_slice], [teacher], slice_index=index)
    separate = [loss([per_slice[:, s]], [teacher], slice_index=index[:, s])[0] for s in range(3)]
    assert total.item() == pytest.approx(torch.stack(separate).mean().item(), rel=1e-5)
    fused = torch.randn(2, 4, 4, 4)
    total, _ = loss([fused], [teacher], slice_index=index)
    mean_slice = pool_teacher_slices(teacher, index, window=1).mean(1)
    assert total.item() == pytest.approx(F.mse_loss(loss.adapters[0](fused), mean_slice).item(), rel=1e-5)


def test_feature_loss_rejects_missing_or_malformed_slice_index() -> None:
    loss = VolumeToSliceFeatureLoss(4, 8)
    student, teacher = [torch.randn(2, 4, 4, 4)], [torch.randn(2, 8, 4, 4, 4)]
    with pytest.raises(ValueError, match="slice_index is missing"):
        loss(student, teacher)
    with pytest.raises(ValueError, match=r"fractions of the depth in \[0, 1\]"):
        loss(student, teacher, slice_index=torch.tensor([3.0, 40.0]))
    with pytest.raises(ValueError, match="batch=2"):
        loss(student, teacher, slice_index=torch.tensor([0.5]))
    with pytest.raises(ValueError, match="adapter_side"):
        VolumeToSliceFeatureLoss(4, 8, adapter_side="both")


def test_volume_logits_supervise_each_slice_prediction() -> None:
    kd, v2s = KDLoss(alpha=0.7, temperature=2.0), VolumeToSliceKDLoss(alpha=0.7, temperature=2.0)
    teacher, target = torch.randn(3, 2), torch.tensor([0, 1, 1])
    student = torch.randn(3, 2)
    assert torch.equal(v2s(student, teacher, target)[0], kd(student, teacher, target)[0])
    per_slice = torch.randn(3, 4, 2)
    total, components = v2s(per_slice, teacher, target)
    repeated, _ = kd(per_slice.reshape(12, 2), teacher.repeat_interleave(4, 0), target.repeat_interleave(4, 0))
    assert set(components) == {"kd", "ce"}
    assert torch.allclose(total, repeated)


def test_volume_logits_supervise_the_mil_students_subject_logits() -> None:
    """A multiple-instance student pools its S stacks itself: the KD term compares the teacher's volume logits with
    the subject logits the student outputs (the prediction that is evaluated), once per subject."""
    from medkd3d.networks import create_model

    torch.manual_seed(0)
    student = create_model("efficientnet25d_multi", backbone="test_efficientnet", attention_dim=8).train()
    stacks = torch.randn(2, 3, 12, 32, 32, requires_grad=True)  # [B, S, 4K, H, W]
    teacher, target = torch.randn(2, 2), torch.tensor([0, 1])
    subject_logits = student(stacks)
    assert subject_logits.shape == (2, 2)
    v2s = VolumeToSliceKDLoss(alpha=0.5, temperature=4.0)
    total, components = v2s(subject_logits, teacher, target)
    expected, expected_components = KDLoss(alpha=0.5, temperature=4.0)(subject_logits, teacher, target)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(components["kd"], expected_components["kd"])
    total.backward()
    assert (stacks.grad.abs().sum(dim=(2, 3, 4)) > 0).all()  # every stack of every subject is distilled
    with pytest.raises(ValueError, match=r"\[batch, num_classes\]"):
        v2s(torch.randn(6, 2), teacher, target)  # B * S flattened stack logits are not subject logits


def test_feature_loss_reads_a_multi_slice_encoders_flattened_stacks() -> None:
    """A forward hook inside the MIL student's shared encoder sees [B * S, C, H, W]: matched stack by stack as the
    [B, S, C, H, W] maps of forward_features; any other batch is refused instead of broadcast."""
    loss = VolumeToSliceFeatureLoss(4, 8, window=1)
    teacher = torch.randn(2, 8, 4, 4, 6)
    index = torch.tensor([[0.1, 0.5, 0.9], [0.3, 0.4, 0.6]])
    per_slice = torch.randn(2, 3, 4, 4, 4)
    stacked, _ = loss([per_slice], [teacher], slice_index=index)
    flattened, _ = loss([per_slice.flatten(0, 1)], [teacher], slice_index=index)
    torch.testing.assert_close(flattened, stacked)
    with pytest.raises(ValueError, match="batch of 2"):
        loss([torch.randn(4, 4, 4, 4)], [teacher], slice_index=index)


def test_feature_and_logit_kd_train_a_mil_student_through_the_trainer() -> None:
    """Volume-to-slice KD of the 2.5D bundle's MIL student in DistillationTrainer: subject logits against volume
    logits, and its per-stack forward_features against the teacher's depth-pooled stage maps at each stack's
    slice_index [B, S]."""
    from medkd3d.engines import DistillationTrainer
    from medkd3d.networks import create_model

    torch.manual_seed(0)
    student = create_model("efficientnet25d_multi", backbone="test_efficientnet", attention_dim=8)
    teacher = create_model("vgg11_3d", width_multiplier=0.0625, head_hidden_dim=16)
    # student stage 2 (32 channels, stride 8) learns the teacher's stage 2 (16 channels, stride 8)
    feature_loss = VolumeToSliceFeatureLoss(32, 16, student_indices=[2], teacher_indices=[2])
    kd_loss = VolumeToSliceKDLoss(alpha=0.5, temperature=4.0)
    batch = {
        "image": torch.randn(2, 3, 12, 32, 32),  # [B, S, 4K, H, W]
        "volume": torch.randn(2, 4, 32, 32, 32),
        "slice_index": torch.tensor([[0.2, 0.5, 0.8], [0.1, 0.5, 0.9]]),
        "label": torch.tensor([0, 1]),
    }
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    optimizer = torch.optim.SGD([*student.parameters(), *feature_loss.parameters()], lr=0.1)
    trainer = DistillationTrainer(
        device="cpu", max_epochs=1, train_data_loader=[batch], network=student, optimizer=optimizer,
        kd_loss=kd_loss, teacher=teacher, teacher_image_key="volume", feature_loss=feature_loss,
        student_feature_taps="forward_features", teacher_feature_taps="forward_features",
        feature_loss_batch_keys=("slice_index",), decollate=False,
    )  # fmt: skip
    trainer.run()
    output = trainer.state.output
    assert output["pred"].shape == (2, 2)  # the subject logits were supervised, not per-stack ones
    for term in ("loss_kd", "loss_ce", "loss_v2s_feat"):
        assert torch.isfinite(output[term]) and output[term] > 0
    encoder_stem = "encoder.backbone.conv_stem.weight"
    assert not torch.equal(before[encoder_stem], student.get_parameter(encoder_stem).detach())
