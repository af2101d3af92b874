"""Cross-architecture KD in 3D: PCA and GL projectors, gradient reversal, multi-view adversarial training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medkd3d.losses.cross_arch import AdversarialFeatureLoss, CrossArchitectureKDLoss
from medkd3d.losses.projectors import (
    FeatureDiscriminator,
    GroupWiseLinearProjector,
    PartiallyCrossAttentionProjector,
    as_feature_volume,
    attention_kl,
    random_feature_views,
)


def test_projector_output_shapes() -> None:
    student = torch.randn(2, 8, 6, 6, 6)
    assert GroupWiseLinearProjector(8, 12, groups=4)(student).shape == (2, 12, 6, 6, 6)
    pca = PartiallyCrossAttentionProjector(8, embed_dim=12, num_heads=3, grid=(4, 4, 2), kernel_size=3)
    q, k, v = pca.student_qkv(student)
    assert q.shape == k.shape == v.shape == (2, 3, 32, 4)
    assert pca.teacher_tokens(torch.randn(2, 12, 8, 8, 8)).shape == (2, 3, 32, 4)
    assert pca(student, torch.randn(2, 12, 8, 8, 8)).ndim == 0
    assert FeatureDiscriminator(12, grid=2)(torch.randn(2, 12, 5, 5, 5)).shape == (2,)


def test_group_wise_linear_projector_is_one_matrix_per_channel_group() -> None:
    projector = GroupWiseLinearProjector(4, 6, groups=2)
    x = torch.randn(1, 4, 2, 2, 2)
    w, b = projector.proj.weight[:, :, 0, 0, 0], projector.proj.bias  # [6, 2]: rows 0-2 group 0, rows 3-5 group 1
    voxels = x.flatten(2)[0]  # [4, 8]
    expected = torch.cat([w[:3] @ voxels[:2], w[3:] @ voxels[2:]]) + b[:, None]
    assert torch.allclose(projector(x).flatten(2)[0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        GroupWiseLinearProjector(8, 12, groups=3)


def test_attention_kl_matches_hand_computation() -> None:
    logits = torch.tensor([[[0.0, 1.0], [2.0, -1.0]]])
    teacher = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])
    p_s = torch.softmax(logits, -1)[0]
    row0 = 0.5 * math.log(0.5 / p_s[0, 0]) + 0.5 * math.log(0.5 / p_s[0, 1])
    row1 = math.log(1.0 / p_s[1, 1])  # 0 * log 0 counts as 0
    assert attention_kl(logits, teacher).item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    assert attention_kl(logits, torch.softmax(logits, -1)).item() == pytest.approx(0.0, abs=1e-6)


def test_pca_loss_is_zero_when_student_projections_equal_the_teacher_and_positive_otherwise() -> None:
    # teacher tokens already layer-normalised on the 4^3 grid; the student map is the same map and its Q/K/V
    # convolution is the identity, so Q_s = K_s = V_s = Q_t = K_t = V_t
    teacher = F.layer_norm(torch.randn(2, 4, 4, 4, 8), (8,)).permute(0, 4, 1, 2, 3).contiguous()
    pca = PartiallyCrossAttentionProjector(8, embed_dim=8, num_heads=2, grid=4, cross_prob=0.0).eval()
    with torch.no_grad():
        pca.qkv.weight.copy_(torch.eye(8).repeat(3, 1)[:, :, None, None, None])
        pca.qkv.bias.zero_()
    assert pca(teacher.clone(), teacher).item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        pca.qkv.weight.add_(0.3 * torch.randn_like(pca.qkv.weight))
    assert pca(teacher.clone(), teacher).item() > 1e-3


def test_partial_cross_replaces_student_qkv_only_in_training() -> None:
    student, teacher = torch.randn(2, 8, 4, 4, 4), torch.randn(2, 8, 6, 6, 6)
    pca = PartiallyCrossAttentionProjector(8, embed_dim=8, grid=2, cross_prob=1.0)
    assert pca.train()(student, teacher).item() == pytest.approx(0.0, abs=1e-6)  # Q, K, V all the teacher's
    assert pca.eval()(student, teacher).item() > 1e-3


def test_provided_teacher_attention_is_pooled_to_the_grid() -> None:
    # on a 4^3 token grid (plus a class token) every query attends uniformly to the 8 tokens of its own
    # 2x2x2 cell, so pooled to a 2^3 grid the attention is the identity
    cell = torch.stack(torch.meshgrid(*[torch.arange(4) // 2] * 3, indexing="ij")).flatten(1)
    cell = cell[0] * 4 + cell[1] * 2 + cell[2]
    grid_attention = (cell[:, None] == cell[None, :]).float() / 8
    attention = torch.zeros(2, 3, 65, 65)
    attention[:, :, 0, 0] = 1.0
    attention[:, :, 1:, 1:] = grid_attention
    pca = PartiallyCrossAttentionProjector(8, embed_dim=6, num_heads=3, grid=2)
    pooled = pca.pool_attention(attention, (4, 4, 4), num_prefix_tokens=1)
    assert torch.allclose(pooled, torch.eye(8).expand(2, 3, 8, 8), atol=1e-6)
    # every query attends to the tokens of cell 5 only: pooled, every row is the 6th unit vector
    attention[:, :, 1:, 1:] = (cell == 5).float().expand(64, 64) / 8
    pooled = pca.pool_attention(attention, (4, 4, 4), num_prefix_tokens=1)
    assert torch.allclose(pooled, torch.eye(8)[5].expand(2, 3, 8, 8), atol=1e-6)

    # through the loss: the class token is recognised as the attention's extra token and dropped
    loss = CrossArchitectureKDLoss(8, 6, gl_weight=0.0, pca_heads=3, pca_grid=2, teacher_prefix_tokens=1).eval()
    student, teacher_tokens = torch.randn(2, 8, 4, 4, 4), torch.randn(2, 65, 6)
    total, _ = loss([student], [teacher_tokens], teacher_attentions=[attention])
    teacher_map = as_feature_volume(teacher_tokens, num_prefix_tokens=1)
    assert total.item() == pytest.approx(loss.pca[0](student, teacher_map, pooled).item(), rel=1e-6)
    assert total.item() != pytest.approx(loss([student], [teacher_tokens])[0].item(), rel=1e-3)


def test_tokens_become_a_volume_in_row_major_grid_order() -> None:
    tokens = torch.randn(2, 1 + 2 * 3 * 4, 5)
    volume = as_feature_volume(tokens, grid=(2, 3, 4), num_prefix_tokens=1)
    assert volume.shape == (2, 5, 2, 3, 4)
    assert torch.equal(volume[:, :, 1, 2, 3], tokens[:, 1 + 1 * 12 + 2 * 4 + 3])
    assert as_feature_volume(torch.randn(2, 27, 5)).shape == (2, 5, 3, 3, 3)
    with pytest.raises(ValueError, match="not a cube"):
        as_feature_volume(torch.randn(2, 28, 5), name="teacher")


def test_gradient_reversal_trains_the_discriminator_and_fools_it_with_the_projector() -> None:
    projector = GroupWiseLinearProjector(8, 8, groups=2)
    adversarial = AdversarialFeatureLoss(8, num_views=2, min_crop_fraction=0.5)
    student, teacher = torch.randn(4, 8, 4, 4, 4), torch.randn(4, 8, 4, 4, 4) + 1.0
    params = [*adversarial.discriminator.parameters(), *projector.parameters()]

    torch.manual_seed(1)
    loss = adversarial(projector(student), teacher)
    reversed_grads = torch.autograd.grad(loss, params)

    # the same computation without the reversal layer (same views: same seed, same draws)
    torch.manual_seed(1)
    views = random_feature_views((projector(student), teacher), 2, 0.5)
    disc = adversarial.discriminator
    plain = torch.stack(
        [F.binary_cross_entropy_with_logits(disc(t), torch.ones(4)) for _, t in views]
        + [F.binary_cross_entropy_with_logits(disc(s), torch.zeros(4)) for s, _ in views]
    ).mean()
    assert plain.item() == pytest.approx(loss.item(), rel=1e-6)
    plain_grads = torch.autograd.grad(plain, params)

    n_disc = len(list(disc.parameters()))
    for reversed_grad, plain_grad in zip(reversed_grads[:n_disc], plain_grads[:n_disc]):
        assert torch.allclose(reversed_grad, plain_grad, atol=1e-7)
    for reversed_grad, plain_grad in zip(reversed_grads[n_disc:], plain_grads[n_disc:]):
        assert plain_grad.abs().sum() > 0
        assert torch.allclose(reversed_grad, -plain_grad, atol=1e-7)

    # a small step along the discriminator's gradient lowers the discriminator loss ...
    with torch.no_grad():
        for p, g in zip(params[:n_disc], reversed_grads[:n_disc]):
            p.sub_(0.05 * g)
        torch.manual_seed(1)
        assert adversarial(projector(student), teacher).item() < loss.item()
        # ... and the projector's (reversed) step raises it: the student learns to fool the discriminator
        torch.manual_seed(1)
        before = adversarial(projector(student), teacher)
        for p, g in zip(params[n_disc:], reversed_grads[n_disc:]):
            p.sub_(0.05 * g)
        torch.manual_seed(1)
        assert adversarial(projector(student), teacher).item() > before.item()


def test_cross_architecture_loss_is_learnable() -> None:
    student = [torch.randn(2, 8, 4, 4, 4), torch.randn(2, 16, 2, 2, 2)]
    mixing = torch.randn(16, 8)
    tokens = torch.einsum("oc,bcxyz->bxyzo", mixing, F.avg_pool3d(student[0], 2)).flatten(1, 3)  # [2, 8, 16]
    # a ViT-like stage (class token + 2^3 tokens) and a CNN-like map; prefix tokens only apply to tokens
    teacher = [torch.cat([torch.zeros(2, 1, 16), tokens], 1), torch.randn(2, 8, 2, 2, 2)]
    loss = CrossArchitectureKDLoss([8, 16], [16, 8], gl_groups=2, pca_grid=2, teacher_prefix_tokens=1)
    optimizer = torch.optim.Adam(loss.parameters(), lr=0.05)
    with torch.no_grad():
        _, initial = loss.eval()(student, teacher)
    loss.train()
    for _ in range(20):
        optimizer.zero_grad()
        total, components = loss(student, teacher)
        total.backward()
        optimizer.step()
    with torch.no_grad():
        final_total, final = loss.eval()(student, teacher)
    assert set(components) == {"pca", "gl"}
    assert final["pca"] < 0.6 * initial["pca"] and final["gl"] < 0.6 * initial["gl"]
    assert torch.allclose(final["pca"] + final["gl"], final_total)


def test_multi_view_adds_the_adversarial_term_and_its_discriminators() -> None:
    student = [torch.randn(2, 8, 6, 6, 6)]
    teacher = [torch.randn(2, 12, 3, 3, 3, requires_grad=True)]
    loss = CrossArchitectureKDLoss(8, 12, pca_weight=0.5, gl_weight=2.0, multi_view=True, adv_weight=0.1)
    total, components = loss(student, teacher, slice_index=None)  # unrelated batch kwargs are accepted
    assert set(components) == {"pca", "gl", "adv"}
    assert torch.allclose(total, components["pca"] + components["gl"] + components["adv"])
    total.backward()
    assert teacher[0].grad is None
    assert all(p.grad is not None for p in loss.parameters())  # nothing unused (DDP-safe)
    assert any(p is q for p in loss.parameters() for q in loss.adv[0].discriminator.parameters())

    gl_only = CrossArchitectureKDLoss(8, 12, pca_weight=0.0)
    assert gl_only.pca is None and gl_only.adv is None
    _, components = gl_only(student, teacher)
    assert set(components) == {"gl"}


def test_cross_architecture_loss_rejects_mismatched_features() -> None:
    loss = CrossArchitectureKDLoss([8, 16], [12, 24], student_indices=[0, 2], teacher_indices=[0, 1])
    student = [torch.randn(1, 8, 4, 4, 4), torch.randn(1, 4, 2, 2, 2), torch.randn(1, 16, 2, 2, 2)]
    with pytest.raises(ValueError, match=r"stage 1 teacher feature has 20 channels.*teacher_channels\[1\] is 24"):
        loss(student, [torch.randn(1, 12, 4, 4, 4), torch.randn(1, 20, 2, 2, 2)])
    with pytest.raises(ValueError, match="student gives 3 features and the teacher 1"):
        loss(student, [torch.randn(1, 12, 4, 4, 4)])
    with pytest.raises(ValueError, match="one entry per"):
        CrossArchitectureKDLoss([8, 16], [12])


def test_normalized_teacher_targets_do_not_scale_with_the_teacher() -> None:
    """``normalize_teacher=True``: the loss of a teacher map and of the same map 100x larger (plus an offset) agree;
    without it the GL term grows with the teacher's scale."""
    torch.manual_seed(0)
    student = [torch.randn(2, 8, 4, 4, 4)]
    teacher = torch.randn(2, 12, 2, 2, 2)
    for normalize in (True, False):
        torch.manual_seed(1)
        loss = CrossArchitectureKDLoss(8, 12, normalize_teacher=normalize).eval()
        with torch.no_grad():
            _, small = loss(student, [teacher])
            _, large = loss(student, [100.0 * teacher + 5.0])
        if normalize:
            torch.testing.assert_close(small["gl"], large["gl"], rtol=1e-4, atol=1e-5)
        else:
            assert large["gl"] > 100 * small["gl"]
