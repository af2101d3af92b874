"""DistillationTrainer: frozen teacher, trained student and projector, events, logged terms, accumulation, AMP."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines.utils import IterationEvents
from monai.handlers import StatsHandler
from torch import nn

from medkd3d.engines import DistillationTrainer, loss_terms
from medkd3d.losses.kd import KDLoss
from medkd3d.losses.token import TokenDistillationLoss


def _loader(items, batch_size=4):
    return DataLoader(Dataset(items), batch_size=batch_size, shuffle=False)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_teacher_frozen_in_eval_while_student_and_projector_learn(tiny_net, projected_feature_loss, items):
    teacher, student = tiny_net(width=6), tiny_net(width=4)
    feature_loss = projected_feature_loss(student_channels=8, teacher_channels=12)
    teacher_before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(student.state_dict())
    projector_before = feature_loss.projector.weight.detach().clone()
    optimizer = torch.optim.SGD([*student.parameters(), *feature_loss.parameters()], lr=0.1)
    trainer = DistillationTrainer(
        "cpu", 2, _loader(items(8)), student, teacher, optimizer, KDLoss(alpha=0.5, temperature=2.0),
        feature_loss=feature_loss, student_feature_taps=["stage"], teacher_feature_taps="forward_features",
    )  # fmt: skip
    teacher_modes = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda _: teacher.train())  # a careless handler
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda _: teacher_modes.append(teacher.training))
    trainer.run()

    assert teacher_modes == [False] * 4
    assert all(not p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():  # weights and BatchNorm statistics, bitwise
        assert torch.equal(value, teacher_before[name]), name
    changed = [name for name, value in student.state_dict().items() if not torch.equal(value, student_before[name])]
    assert "stem.0.weight" in changed and "head.weight" in changed
    assert not torch.equal(feature_loss.projector.weight, projector_before)
    assert student.training


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_events_in_supervised_trainer_order_and_logged_terms(tiny_net, projected_feature_loss, items):
    teacher, student = tiny_net(width=6), tiny_net(width=4)
    feature_loss = projected_feature_loss(8, 12)
    optimizer = torch.optim.Adam([*student.parameters(), *feature_loss.parameters()], lr=1e-3)
    stats = StatsHandler(name="medkd3d.test.distill", output_transform=loss_terms, iteration_log=True)
    trainer = DistillationTrainer(
        "cpu", 1, _loader(items(6), batch_size=2), student, teacher, optimizer, KDLoss(0.5, 4.0),
        feature_loss=feature_loss, student_feature_taps="forward_features", teacher_feature_taps=["stage"],
        train_handlers=[stats],
    )  # fmt: skip
    fired = []
    for event in (IterationEvents.FORWARD_COMPLETED, IterationEvents.LOSS_COMPLETED,
                  IterationEvents.BACKWARD_COMPLETED, IterationEvents.MODEL_COMPLETED):  # fmt: skip
        trainer.add_event_handler(event, lambda _, e=event: fired.append(e))
    records = _Records()
    logging.getLogger("medkd3d.test.distill").addHandler(records)  # StatsHandler's logger does not propagate
    try:
        trainer.run()
    finally:
        logging.getLogger("medkd3d.test.distill").removeHandler(records)

    assert (
        fired
        == [
            IterationEvents.FORWARD_COMPLETED,
            IterationEvents.LOSS_COMPLETED,
            IterationEvents.BACKWARD_COMPLETED,
            IterationEvents.MODEL_COMPLETED,
        ]
        * 3
    )
    output = trainer.state.output  # decollated: one dict per batch item
    assert isinstance(output, list) and len(output) == 2
    terms = loss_terms(output)
    assert set(terms) == {"loss", "loss_kd", "loss_ce", "loss_feat_proj"}
    assert terms["loss"] == pytest.approx(terms["loss_kd"] + terms["loss_ce"] + terms["loss_feat_proj"], rel=1e-5)
    assert output[0]["pred"].shape == (2,)
    iteration_lines = [message for message in records.messages if "Iter:" in message]
    assert len(iteration_lines) == 3
    assert all(f"{key}: " in iteration_lines[-1] for key in terms)


def test_hooks_only_during_run_and_each_network_runs_once(tiny_net, projected_feature_loss, items):
    teacher, student = tiny_net(width=6), tiny_net(width=4)
    feature_loss = projected_feature_loss(8, 12)
    calls = {"student": 0, "teacher": 0}
    student.stem.register_forward_pre_hook(lambda *_: calls.__setitem__("student", calls["student"] + 1))
    teacher.stem.register_forward_pre_hook(lambda *_: calls.__setitem__("teacher", calls["teacher"] + 1))
    optimizer = torch.optim.SGD([*student.parameters(), *feature_loss.parameters()], lr=0.01)
    trainer = DistillationTrainer(
        "cpu", 1, _loader(items(8)), student, teacher, optimizer, KDLoss(0.5, 4.0),
        feature_loss=feature_loss, student_feature_taps=["stem", "stage"], teacher_feature_taps=["stem", "stage"],
    )  # fmt: skip
    hooks_during_run = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: hooks_during_run.append(_hook_count(student)))
    trainer.run()
    assert hooks_during_run == [2, 2]
    assert calls == {"student": 2, "teacher": 2}  # one pass each per iteration, features included
    assert _hook_count(student) == 0 and _hook_count(teacher) == 0


def test_gradient_accumulation_equals_one_large_batch(items):
    flat = [{**item, "image": item["image"].flatten()[:16]} for item in items(8)]
    torch.manual_seed(1)
    teacher, student = nn.Linear(16, 2), nn.Linear(16, 2)
    students = {}
    for accumulation_steps, batch_size in ((1, 8), (4, 2)):
        model = copy.deepcopy(student)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        DistillationTrainer(
            "cpu", 1, _loader(flat, batch_size), model, teacher, optimizer, KDLoss(0.5, 2.0),
            accumulation_steps=accumulation_steps,
        ).run()  # fmt: skip
        students[accumulation_steps] = model
    assert not torch.equal(students[1].weight, student.weight)
    torch.testing.assert_close(students[4].weight, students[1].weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(students[4].bias, students[1].bias, rtol=1e-5, atol=1e-6)


def test_optimizer_missing_trainable_loss_parameters_is_an_error(tiny_net, projected_feature_loss, items):
    student = tiny_net()
    with pytest.raises(ValueError, match=r"feature_loss\.projector\.weight"):
        DistillationTrainer(
            "cpu", 1, _loader(items(4)), student, tiny_net(), torch.optim.SGD(student.parameters(), lr=0.1),
            KDLoss(), feature_loss=projected_feature_loss(8, 8), student_feature_taps=["stage"],
            teacher_feature_taps=["stage"],
        )  # fmt: skip


def test_inconsistent_feature_arguments_are_errors(tiny_net, projected_feature_loss, items):
    student = tiny_net()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="feature_loss, student_feature_taps and teacher_feature_taps together"):
        DistillationTrainer("cpu", 1, _loader(items(4)), student, tiny_net(), optimizer, KDLoss(),
                            student_feature_taps=["stage"])  # fmt: skip
    with pytest.raises(ValueError, match="needs a teacher"):
        DistillationTrainer("cpu", 1, _loader(items(4)), student, None, optimizer, KDLoss())


def test_amp_without_cuda_warns_and_trains_in_float32(tiny_net, items):
    student = tiny_net()
    with pytest.warns(UserWarning, match="amp=True needs a CUDA device"):
        trainer = DistillationTrainer(
            "cpu", 1, _loader(items(4)), student, tiny_net(), torch.optim.SGD(student.parameters(), lr=0.1),
            KDLoss(), amp=True,
        )  # fmt: skip
    trainer.run()
    assert not trainer.amp and trainer.state.output[0]["pred"].dtype == torch.float32


class TwoHeadStudent(nn.Module):
    """Distillation-token style student: two linear heads on shared features; forward is their mean."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8 * 8, 8), nn.ReLU())
        self.cls_head, self.dist_head = nn.Linear(8, 2), nn.Linear(8, 2)

    def forward_heads(self, x):
        h = self.body(x)
        return self.cls_head(h), self.dist_head(h)

    def forward(self, x):
        cls_logits, dist_logits = self.forward_heads(x)
        return (cls_logits + dist_logits) / 2


class RecordingLoss(nn.Module):
    """Wraps a loss and keeps what the trainer passed to it."""

    def __init__(self, loss):
        super().__init__()
        self.loss, self.seen = loss, []

    def forward(self, student_logits, teacher_logits, target):
        self.seen.append((student_logits, teacher_logits))
        return self.loss(student_logits, teacher_logits, target)


def test_two_head_student_gets_token_loss_pair_and_pred_is_their_mean(tiny_net, items):
    student = TwoHeadStudent()
    loss = RecordingLoss(TokenDistillationLoss(alpha=0.5, temperature=1.0))
    trainer = DistillationTrainer(
        "cpu", 1, _loader(items(4)), student, tiny_net(), torch.optim.SGD(student.parameters(), lr=0.1), loss,
        decollate=False,
    )  # fmt: skip
    trainer.run()
    (cls_logits, dist_logits), _ = loss.seen[-1]
    torch.testing.assert_close(trainer.state.output["pred"], (cls_logits + dist_logits) / 2)
    assert set(loss_terms(trainer.state.output)) == {"loss", "loss_ce", "loss_kd"}


def test_multiple_teachers_give_a_list_of_logits_in_order(tiny_net, items):
    teachers = {"cnn": tiny_net(width=6), "other": tiny_net(width=2)}
    student = tiny_net()
    loss = RecordingLoss(lambda s, t, y: (sum(KDLoss(1.0, 2.0)(s, ti, y)[0] for ti in t), {}))
    DistillationTrainer(
        "cpu", 1, _loader(items(4)), student, teachers, torch.optim.SGD(student.parameters(), lr=0.1), loss
    ).run()
    _, teacher_logits = loss.seen[-1]
    batch = torch.stack([item["image"] for item in items(4)])
    with torch.no_grad():
        for logits, teacher in zip(teacher_logits, teachers.values()):
            torch.testing.assert_close(logits, teacher.eval()(batch))


def test_teacher_image_key_and_feature_batch_keys(tiny_net, projected_feature_loss, items):
    """A 2D student on slices, distilled from a 3D teacher that reads the batch's "volume"."""

    class SliceStudent(nn.Module):
        def __init__(self):
            super().__init__()
            self.stage = nn.Conv2d(2, 4, 3, padding=1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.stage(x).mean(dim=(2, 3)))

    class SliceFeatureLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, student_features, teacher_features, slice_index):
            self.seen.append(slice_index)
            pooled = teacher_features[-1].mean(dim=(2, 3, 4))[:, :4]
            term = ((student_features[0].mean(dim=(2, 3)) - pooled) ** 2).mean()
            return term, {"feat_slice": term}

    data = [{**item, "volume": item["image"], "image": item["image"][:, :, :, 4], "slice_index": 0.5}
            for item in items(4)]  # fmt: skip
    student, feature_loss = SliceStudent(), SliceFeatureLoss()
    DistillationTrainer(
        "cpu", 1, _loader(data), student, tiny_net(width=4), torch.optim.SGD(student.parameters(), lr=0.1),
        KDLoss(), feature_loss=feature_loss, student_feature_taps=["stage"], teacher_feature_taps=["stage"],
        teacher_image_key="volume", feature_loss_batch_keys=("slice_index",),
    ).run()  # fmt: skip
    torch.testing.assert_close(feature_loss.seen[-1], torch.full((4,), 0.5, dtype=torch.float64))


def test_hdkd_recipe_with_zoo_models(items):
    """HDKD: token distillation plus stage-wise feature KD between the zoo's HDKD teacher and student."""
    from medkd3d.engines import feature_info_taps
    from medkd3d.losses import FeatureKDLoss
    from medkd3d.networks import create_model, get_model_entry

    entry = get_model_entry("hdkd_teacher3d")
    teacher = create_model("hdkd_teacher3d", **entry.tiny_kwargs)
    student = type(create_model("hdkd_student3d", **get_model_entry("hdkd_student3d").tiny_kwargs)).from_teacher(
        teacher, depths=(1, 1, 1), patch_size=1, embed_dim=16, transformer_depth=1, num_heads=2
    )
    x = torch.randn(2, *entry.tiny_input_shape)
    with torch.no_grad(), feature_info_taps(student) as taps:  # the hooks see what forward_features returns
        student.eval().forward_heads(x)
        for tapped, direct in zip(taps.features, student.forward_features(x)):
            torch.testing.assert_close(tapped, direct)

    data = [{**item, "image": torch.randn(entry.tiny_input_shape)} for item in items(4)]
    feature_loss = FeatureKDLoss(lambda_feat=10.0, beta=1.0)
    trainer = DistillationTrainer(
        "cpu", 1, _loader(data, batch_size=2), student, teacher, torch.optim.Adam(student.parameters(), 1e-3),
        TokenDistillationLoss(alpha=0.5, temperature=1.0), feature_loss=feature_loss,
        student_feature_taps="forward_features", teacher_feature_taps="forward_features",
    )  # fmt: skip
    trainer.run()
    terms = loss_terms(trainer.state.output)
    # the stem and the three stages
    assert set(terms) == {"loss", "loss_ce", "loss_kd", "loss_feat_1", "loss_feat_2", "loss_feat_3", "loss_feat_4"}
    assert terms["loss"] == pytest.approx(sum(v for k, v in terms.items() if k != "loss"), rel=1e-5)
    assert _hook_count(student) == 0


def test_label_free_items_are_distilled_and_counted(tiny_net, items):
    """Unlabelled items (label -1) train through the KD term; CE and num_labelled cover the labelled ones."""
    teacher, student = tiny_net(width=6), tiny_net(width=4)
    batch = items(4)
    for i in (1, 2):
        batch[i]["label"] = torch.tensor(-1)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)  # lr 0: the recorded pred is the loss's input
    trainer = DistillationTrainer(
        "cpu", 1, _loader(batch), student, teacher, optimizer, KDLoss(0.5, 2.0), decollate=False
    )
    outputs = []
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.run()
    (out,) = outputs
    labels = torch.stack([b["label"] for b in batch])
    keep = labels >= 0
    expected_ce = 0.5 * nn.functional.cross_entropy(out["pred"][keep], labels[keep])
    torch.testing.assert_close(out["loss_ce"], expected_ce.detach())
    assert int(out["num_labelled"]) == 2 and "num_labelled" not in loss_terms(out)  # a count, not a loss
    assert torch.equal(out["label"], labels)

    # a batch with no labelled item: CE is 0, the student still gets a gradient from the KD term
    for b in batch:
        b["label"] = torch.tensor(-1)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    before = copy.deepcopy(student.state_dict())
    trainer = DistillationTrainer("cpu", 1, _loader(batch), student, teacher, optimizer, KDLoss(0.5, 2.0))
    trainer.run()
    terms = loss_terms(trainer.state.output)
    assert terms["loss_ce"] == 0.0 and terms["loss_kd"] > 0 and int(trainer.state.output[0]["num_labelled"]) == 0
    assert not torch.equal(student.state_dict()["head.weight"], before["head.weight"])
