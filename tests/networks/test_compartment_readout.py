"""The compartment readout: its fitted regression, its decoder over two stages, both teachers and the HDKD student with
it, the shared auxiliary head or decoder, the handler that fits it at the end of training (and gives a student its
teacher's head), and its exports."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from medkd3d.bundles import unique_parameters
from medkd3d.engines import FitCompartmentReadout
from medkd3d.losses import TumourCompartmentLoss
from medkd3d.networks.hdkd import HDKDStudent, HDKDTeacher
from medkd3d.networks.readout import CompartmentDecoder, CompartmentReadout, readout_stages
from medkd3d.networks.registry import get_model_entry
from medkd3d.networks.vggvit3d import VGGViT3D

TINY = {"channels": (8, 16, 16), "depths": (1, 1, 1), "stem_channels": 8}
TINY_VGGVIT = {**get_model_entry("vggvit3d").tiny_kwargs, "img_size": 16}
TINY_DFLT = {"patch_size": 1, "embed_dim": 16, "transformer_depth": 1, "num_heads": 2}
NETWORKS = {
    "hdkd": lambda **kwargs: HDKDTeacher(**TINY, **kwargs),
    "vggvit": lambda **kwargs: VGGViT3D(**TINY_VGGVIT, **kwargs),
    "hdkd_student": lambda **kwargs: HDKDStudent(**TINY, **TINY_DFLT, **kwargs),
}
TEACHERS = ["hdkd", "vggvit"]


def test_fit_folds_the_standardised_regression_into_the_linear_layer(readout_volumes) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    volumes, labels = readout_volumes
    readout = CompartmentReadout(in_channels=4)
    assert not readout.fitted
    readout.fit(volumes, labels)
    assert readout.fitted
    regression = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=5000))
    expected = regression.fit(volumes.double().numpy(), labels.numpy()).predict_proba(volumes.double().numpy())[:, 1]
    probabilities = torch.softmax(readout.classifier(volumes), dim=1)[:, 1]
    np.testing.assert_allclose(probabilities.numpy(), expected, atol=1e-5)
    assert not any(p.requires_grad for p in readout.classifier.parameters())  # never moved by the optimizer


def test_fit_needs_two_classes(readout_volumes) -> None:
    volumes, _ = readout_volumes
    with pytest.raises(ValueError, match="both classes"):
        CompartmentReadout(in_channels=4).fit(volumes, torch.zeros(len(volumes)))
    with pytest.raises(ValueError, match="needs 2 classes"):
        CompartmentReadout(in_channels=4, num_classes=3).fit(*readout_volumes)


def test_log_volumes_are_the_mean_predicted_shares() -> None:
    readout = CompartmentReadout(in_channels=2, eps=1e-4)
    feature = torch.randn(2, 2, 3, 3, 3)
    shares = torch.sigmoid(readout.head(feature)).mean(dim=(2, 3, 4))
    torch.testing.assert_close(readout.log_volumes([feature]), torch.log(shares + 1e-4))


@pytest.mark.parametrize("spatial_dims", [3, 2])
def test_decoder_predicts_at_the_fine_resolution_from_both_maps(spatial_dims: int) -> None:
    torch.manual_seed(0)
    decoder = CompartmentDecoder(fine_channels=4, coarse_channels=6, compartments=3, width=5, spatial_dims=spatial_dims)
    fine = torch.randn(2, 4, *[8] * spatial_dims, requires_grad=True)
    coarse = torch.randn(2, 6, *[4] * spatial_dims, requires_grad=True)
    logits = decoder(fine, coarse)
    assert logits.shape == (2, 3, *[8] * spatial_dims)
    logits[0, 0].sum().backward()
    assert fine.grad.abs().sum() > 0 and coarse.grad.abs().sum() > 0  # both maps reach the logits
    assert fine.grad[1].abs().sum() == 0  # subjects stay apart: instance norm, not batch norm


def test_readout_stages_normalises_one_stage_or_a_pair() -> None:
    assert readout_stages(None) == ()
    assert readout_stages(2) == (2,)
    assert readout_stages([0, 1]) == (0, 1)
    with pytest.raises(ValueError, match="one stage or a pair"):
        readout_stages([0, 1, 2])


@pytest.mark.parametrize(
    "kind, stage", [("hdkd", 0), ("vggvit", 2), ("hdkd_student", 0), ("hdkd", (0, 1)), ("vggvit", (1, 2))]
)
def test_network_uses_its_classifier_until_the_readout_is_fitted(
    kind: str, stage: int | tuple[int, int], readout_volumes
) -> None:
    torch.manual_seed(0)
    teacher = NETWORKS[kind](readout_stage=stage).eval()
    x = torch.randn(2, 4, 16, 16, 16)
    plain = NETWORKS[kind]()
    plain.load_state_dict({k: v for k, v in teacher.state_dict().items() if not k.startswith("readout.")})
    calls: list[int] = []
    teacher.readout.predictor.register_forward_hook(lambda *_: calls.append(1))
    torch.testing.assert_close(teacher(x), plain.eval()(x))
    assert not calls  # unfitted, the eager network does not compute its readout

    teacher.readout.fit(*readout_volumes)
    features = teacher.forward_features(x)
    torch.testing.assert_close(teacher(x), teacher.readout([features[s] for s in readout_stages(stage)]))


def test_readout_stage_must_be_a_stage_of_the_network() -> None:
    with pytest.raises(ValueError, match="readout_stage 4 is not one of the 4 stages"):  # the stem, three stages
        HDKDTeacher(**TINY, readout_stage=4)
    with pytest.raises(ValueError, match="readout_stage 4 is not one of the 4 stages"):
        HDKDTeacher(**TINY, readout_stage=[0, 4])
    with pytest.raises(ValueError, match="stage 2 \\(reduction 8\\) is not finer than stage 1 \\(reduction 4\\)"):
        HDKDTeacher(**TINY, readout_stage=[2, 1])
    with pytest.raises(ValueError, match="readout_stage 5 must be a VGG stage in \\[0, 4\\]"):
        VGGViT3D(**TINY_VGGVIT, readout_stage=5)  # 5 is the ViT's token map, not a VGG stage


@pytest.mark.parametrize("kind", TEACHERS)
def test_the_auxiliary_loss_supervises_the_readouts_own_head(kind: str) -> None:
    teacher = NETWORKS[kind](readout_stage=1)
    loss = TumourCompartmentLoss.for_network(teacher, stages=[0, 1])
    assert loss.heads[1] is teacher.readout.head and loss.heads[0] is not teacher.readout.head
    parameters = unique_parameters([teacher, loss])
    assert len(parameters) == len({id(p) for p in parameters})
    assert len(parameters) == len(list(teacher.parameters())) + len(list(loss.heads[0].parameters()))
    with pytest.raises(ValueError, match="reads stage 1, which the auxiliary task does not supervise"):
        TumourCompartmentLoss.for_network(teacher, [0])


def test_the_auxiliary_loss_trains_the_readouts_decoder_beside_the_stage_heads() -> None:
    torch.manual_seed(0)
    teacher = HDKDTeacher(**TINY, readout_stage=(0, 1))
    loss = TumourCompartmentLoss.for_network(teacher, stages=[0, 1])
    assert teacher.readout.head is None and teacher.readout.predictor is teacher.readout.decoder
    assert loss.decoder is teacher.readout.decoder
    parameters = unique_parameters([teacher, loss])
    assert len(parameters) == len({id(p) for p in parameters})
    assert len(parameters) == len(list(teacher.parameters())) + len(list(loss.heads.parameters()))

    features = teacher.forward_features(torch.randn(2, 4, 16, 16, 16))[:2]
    seg = torch.zeros(2, 1, 16, 16, 16)
    seg[:, :, 4:12, 4:12, 4:12] = 2.0
    seg[:, :, 6:10, 6:10, 6:10] = 4.0
    masks = torch.cat([(seg == label).float() for label in (1, 2, 4)], dim=1)

    def term(logits: torch.Tensor) -> torch.Tensor:  # BCE on the pooled fractions + batch soft Dice, by hand
        target = torch.nn.functional.adaptive_avg_pool3d(masks, logits.shape[2:])
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * target).sum((0, 2, 3, 4)) + 1e-3) / (p.sum((0, 2, 3, 4)) + target.sum((0, 2, 3, 4)) + 1e-3)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + dice.mean()

    decoded = teacher.readout.decoder(*features)
    assert decoded.shape[2:] == features[0].shape[2:]  # at the fine stage's resolution
    expected = (term(loss.heads[0](features[0])) + term(loss.heads[1](features[1])) + term(decoded)) / 3
    torch.testing.assert_close(loss(features, seg)[0], expected)
    with pytest.raises(ValueError, match="reads stage 1, which the auxiliary task does not supervise"):
        TumourCompartmentLoss.for_network(teacher, [0, 2])


def test_handler_fits_on_the_training_subjects_at_the_last_epoch() -> None:
    torch.manual_seed(0)
    teacher = HDKDTeacher(**TINY, readout_stage=0)
    images = {f"s{i}": torch.randn(4, 16, 16, 16) + (i % 2) for i in range(8)}
    records = [{"image": name, "label": i % 2} for i, name in enumerate(images)] + [{"image": "s0", "label": -1}]
    seen: list[str] = []

    def transform(record: dict) -> dict:
        seen.append(record["image"])
        return {"image": images[record["image"]]}

    handler = FitCompartmentReadout(teacher, records, transform)
    epochs: list[bool] = []
    engine = Engine(lambda engine, batch: None)
    handler.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: epochs.append(bool(teacher.readout.fitted)))
    engine.run([0], max_epochs=3)
    assert epochs == [False, False, True]  # fitted once, after the last epoch's other handlers could still run
    assert seen == list(images)  # every labelled training subject once; the unlabelled one skipped
    assert teacher.training  # the mode it had

    with pytest.raises(ValueError, match="no compartment readout"):
        FitCompartmentReadout(HDKDTeacher(**TINY), records, transform)


@pytest.mark.parametrize("stage", [1, (0, 1)])
def test_student_adopts_its_teachers_head_frozen_and_fits_its_own_regression(
    stage: int | tuple[int, int], readout_volumes
) -> None:
    torch.manual_seed(0)
    teacher = HDKDTeacher(**TINY, readout_stage=stage)
    teacher.readout.fit(*readout_volumes)
    student = HDKDStudent(**TINY, **TINY_DFLT, readout_stage=stage)
    # no loss reaches the student's readout: none of it may wait for a gradient (DistributedDataParallel)
    assert not any(p.requires_grad for p in student.readout.parameters())
    images = {f"s{i}": torch.randn(4, 16, 16, 16) + (i % 2) for i in range(8)}
    records = [{"image": name, "label": i % 2} for i, name in enumerate(images)]
    handler = FitCompartmentReadout(student, records, lambda r: {"image": images[r["image"]]}, head_from=teacher)
    heads: list[bool] = []
    engine = Engine(lambda engine, batch: None)
    handler.attach(engine)
    engine.add_event_handler(
        Events.STARTED,
        lambda: heads.append(
            all(
                torch.equal(a, b)
                for a, b in zip(student.readout.predictor.parameters(), teacher.readout.predictor.parameters())
            )
        ),
    )
    engine.run([0], max_epochs=2)
    assert heads == [True]  # adopted before the first iteration
    assert not any(p.requires_grad for p in student.readout.predictor.parameters())
    assert bool(student.readout.fitted)
    assert not torch.equal(student.readout.classifier.weight, teacher.readout.classifier.weight)  # its own fit
    x = torch.randn(2, 4, 16, 16, 16)
    student.eval()
    features = student.forward_features(x)
    torch.testing.assert_close(student(x), student.readout([features[s] for s in readout_stages(stage)]))


def test_student_needs_a_teacher_with_a_fitted_readout_on_its_stage(readout_volumes) -> None:
    student = HDKDStudent(**TINY, **TINY_DFLT, readout_stage=1)
    fitted_elsewhere = HDKDTeacher(**TINY, readout_stage=2)
    fitted_elsewhere.readout.fit(*readout_volumes)
    for teacher in (HDKDTeacher(**TINY), HDKDTeacher(**TINY, readout_stage=1), fitted_elsewhere):
        with pytest.raises(ValueError, match="has no fitted readout on that stage"):
            FitCompartmentReadout(student, [], lambda r: r, head_from=teacher)
    with pytest.raises(ValueError, match="stages the two readouts read differ in width"):
        student.readout.adopt_head(fitted_elsewhere.readout)  # stage 2 is 16 wide, stage 1 8
    decoding = HDKDTeacher(**TINY, readout_stage=(0, 1))
    decoding.readout.fit(*readout_volumes)
    with pytest.raises(ValueError, match="has no fitted readout on that stage"):
        FitCompartmentReadout(student, [], lambda r: r, head_from=decoding)
    with pytest.raises(ValueError, match="one reads a decoder and the other a single stage"):
        student.readout.adopt_head(decoding.readout)


@pytest.mark.parametrize("kind, stage", [*((kind, 0) for kind in NETWORKS), ("hdkd", (0, 1)), ("hdkd_student", (0, 1))])
def test_fitted_readout_survives_tracing_scripting_and_onnx(
    kind: str, stage: int | tuple[int, int], readout_volumes
) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    teacher = NETWORKS[kind](readout_stage=stage).eval()
    teacher.readout.fit(*readout_volumes)
    x = torch.randn(2, 4, 16, 16, 16)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing and the TorchScript-based ONNX exporter are deprecated upstream
        expected = teacher(x)
        traced = torch.jit.trace(teacher, x, check_trace=False)
        torch.testing.assert_close(traced(torch.flip(x, [0])), teacher(torch.flip(x, [0])))
        torch.testing.assert_close(torch.jit.script(teacher)(x), expected)
        torch.onnx.export(teacher, (x,), buffer, input_names=["image"], output_names=["logits"], dynamo=False)
    session = onnxruntime.InferenceSession(buffer.getvalue())
    np.testing.assert_allclose(session.run(None, {"image": x.numpy()})[0], expected.numpy(), atol=1e-4)
