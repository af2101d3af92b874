"""The glue the bundle configs reference (``medkd3d.bundles``, the ``medkd3d.engines`` handlers and inferer), on real
MONAI/Ignite engines."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedEvaluator
from monai.transforms import Activationsd
from torch import nn

from medkd3d.bundles import BUNDLE_NAMES, ensure_dataset, find_bundle_root
from medkd3d.engines import (
    AtomicCheckpointSaver,
    ClassProbabilityWriter,
    SliceStackInferer,
    ValidationEarlyStopping,
    classification_metrics,
)
from medkd3d.pipeline.report import (
    NO_KD_ROLE,
    ModelResult,
    add_kd_gains,
    bundle_evaluation_split,
    read_predictions,
    write_report,
)
from medkd3d.utils import exception_chain


def _linear(weight: float) -> nn.Module:
    net = nn.Linear(2, 2)
    nn.init.constant_(net.weight, weight)
    nn.init.zeros_(net.bias)
    return net


def _epoch_engine(metric_values: list[float]) -> Engine:
    """An engine that reports ``metric_values[epoch - 1]`` as its key metric after each epoch."""
    engine = Engine(lambda e, b: None)
    engine.state.key_metric_name = "val_auc"

    @engine.on(Events.EPOCH_COMPLETED)
    def _(e: Engine) -> None:
        e.state.metrics["val_auc"] = metric_values[e.state.epoch - 1]

    return engine


def test_atomic_checkpoint_keeps_the_best_model_when_a_save_fails(tmp_path: Path, monkeypatch) -> None:
    net = _linear(1.0)
    saver = AtomicCheckpointSaver(
        save_dir=str(tmp_path), save_dict={"model": net}, save_key_metric=True, key_metric_filename="model.pt"
    )
    engine = _epoch_engine([0.6, 0.9, 0.95])
    saver.attach(engine)

    @engine.on(Events.EPOCH_STARTED)
    def _(e: Engine) -> None:
        nn.init.constant_(net.weight, float(e.state.epoch))

    real_save = torch.save

    def crash_in_third_epoch(obj, f, *args, **kwargs):
        if engine.state.epoch == 3:
            f.write(b"half a checkpoint")
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", crash_in_third_epoch)
    with pytest.raises(OSError, match="disk full"):
        engine.run([0], max_epochs=3)
    # epoch 2 (best so far) is intact; no partial or temporary file is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    torch.testing.assert_close(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], torch.full((2, 2), 2.0))


def test_final_checkpoint_is_saved_on_completion_not_on_failure(tmp_path: Path) -> None:
    def run(net: nn.Module, fail_in_epoch: int | None) -> None:
        engine = Engine(lambda e, b: None)
        AtomicCheckpointSaver(
            save_dir=str(tmp_path), save_dict={"model": net}, save_final=True, final_filename="model.pt"
        ).attach(engine)

        @engine.on(Events.EPOCH_COMPLETED)
        def _(e: Engine) -> None:
            nn.init.constant_(net.weight, float(e.state.epoch))
            if e.state.epoch == fail_in_epoch:
                raise RuntimeError("interrupted")

        engine.run([0], max_epochs=3)

    def saved_weight() -> torch.Tensor:
        return torch.load(tmp_path / "model.pt", weights_only=True)["weight"]

    run(_linear(0.0), fail_in_epoch=None)
    torch.testing.assert_close(saved_weight(), torch.full((2, 2), 3.0))  # the weights after the last epoch
    # a run that fails leaves the complete run's model.pt alone (MONAI would save its epoch-2 weights there)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(_linear(0.0), fail_in_epoch=2)
    torch.testing.assert_close(saved_weight(), torch.full((2, 2), 3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_validation_early_stopping_stops_the_trainer(tmp_path: Path) -> None:
    validator = _epoch_engine([0.7, 0.8, 0.75, 0.79, 0.9, 0.95])
    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0], max_epochs=e.state.epoch))
    ValidationEarlyStopping(validator, patience=2).attach(trainer)
    trainer.run([0], max_epochs=6)
    assert trainer.state.epoch == 4  # no improvement over 0.8 at epochs 3 and 4
    with pytest.raises(ValueError, match="patience"):
        ValidationEarlyStopping(validator, patience=0)


def test_probability_writer_writes_softmax_per_subject(tmp_path: Path) -> None:
    data = [
        {"image": torch.tensor([[1.0, 0.0]]), "label": torch.tensor([1]), "subject": ["s1"]},
        {"image": torch.tensor([[0.0, 2.0], [0.5, 0.5]]), "label": torch.tensor([0, -1]), "subject": ["s2", "s3"]},
    ]
    net = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
    evaluator = SupervisedEvaluator(
        device="cpu", val_data_loader=data, network=net, postprocessing=Activationsd("pred", softmax=True)
    )
    ClassProbabilityWriter(tmp_path, class_names=["LGG", "HGG"]).attach(evaluator)
    evaluator.run()
    with (tmp_path / "predictions.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["subject"] for r in rows] == ["s1", "s2", "s3"]
    assert [r["label"] for r in rows] == ["HGG", "LGG", ""]  # -1: unlabelled
    logits = net(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]])).detach()
    expected = torch.softmax(logits, dim=1)
    got = torch.tensor([[float(r["prob_LGG"]), float(r["prob_HGG"])] for r in rows])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert [r["predicted"] for r in rows] == ["LGG" if p[0] > p[1] else "HGG" for p in expected.tolist()]

    # at a decision threshold just above the lowest P(HGG), every other subject is called HGG
    threshold = float(expected[:, 1].min()) + 1e-4
    ClassProbabilityWriter(
        tmp_path, class_names=["LGG", "HGG"], filename="at_threshold.csv", threshold=threshold
    ).attach(evaluator)
    evaluator.run()
    with (tmp_path / "at_threshold.csv").open(newline="") as stream:
        predicted = [r["predicted"] for r in csv.DictReader(stream)]
    assert predicted == ["HGG" if p[1] >= threshold else "LGG" for p in expected.tolist()]
    assert predicted.count("LGG") == 1

    # extra columns come from the batch, empty for an item without the key
    for batch, sides in zip(data, (["train"], ["val", "val"])):
        batch["side"] = sides
    ClassProbabilityWriter(
        tmp_path, class_names=["LGG", "HGG"], filename="sides.csv", extra_columns=["side", "site"]
    ).attach(evaluator)
    evaluator.run()
    with (tmp_path / "sides.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == ["subject", "prob_LGG", "prob_HGG", "predicted", "label", "side", "site"]
    assert [(r["subject"], r["side"], r["site"]) for r in rows] == [
        ("s1", "train", ""),
        ("s2", "val", ""),
        ("s3", "val", ""),
    ]


def test_slice_stack_inferer_averages_stack_logits() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    stacks = torch.randn(2, 5, 3, 4, 4)
    out = SliceStackInferer()(stacks, net)
    expected = torch.stack([net(stacks[b]).mean(dim=0) for b in range(2)])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(SliceStackInferer()(stacks[:, 0], net), net(stacks[:, 0]))
    with pytest.raises(ValueError, match="num_stacks"):
        SliceStackInferer()(torch.randn(2, 3, 4), net)


def test_ensure_dataset_generates_once_into_place(tmp_path: Path, caplog) -> None:
    target = tmp_path / "brats"
    with caplog.at_level(logging.WARNING, logger="medkd3d.bundles.data"):
        root = ensure_dataset(target, {"n_hgg": 1, "n_lgg": 1, "shape": (24, 24, 20)})
    assert root == target.resolve() and len(list(root.rglob("*_flair.nii.gz"))) == 2
    assert "does not exist: generating a synthetic BraTS dataset" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brats"]  # no staging folder left
    stamp = next(root.rglob("*_t1.nii.gz")).stat().st_mtime_ns
    ensure_dataset(target)  # an existing dataset is used as it is
    assert next(root.rglob("*_t1.nii.gz")).stat().st_mtime_ns == stamp


def test_ensure_dataset_does_not_warn_about_a_folder_nobody_named(tmp_path: Path, caplog) -> None:
    """``medkd3d pipeline --quick`` without --dataset-dir: the default location is generated without a warning
    that "--dataset-dir ... does not exist"."""
    with caplog.at_level(logging.INFO, logger="medkd3d.bundles.data"):
        ensure_dataset(tmp_path / "d", {"n_hgg": 1, "n_lgg": 1, "shape": (24, 24, 20)}, "--dataset-dir", given=False)
    assert "does not exist" not in caplog.text and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "No dataset given: generating the embedded synthetic BraTS default" in caplog.text
    assert "Give --dataset-dir a BraTS folder" in caplog.text


def test_find_bundle_root_from_repo_bundle_and_elsewhere(tmp_path: Path, monkeypatch, bundle_kit) -> None:
    expected = str(bundle_kit.bundles_dir / "brats_teacher_vggvit3d")
    monkeypatch.chdir(bundle_kit.bundles_dir.parent)
    assert find_bundle_root("brats_teacher_vggvit3d") == expected
    monkeypatch.chdir(expected)
    assert find_bundle_root("brats_teacher_vggvit3d") == expected
    monkeypatch.chdir(tmp_path)  # falls back to the bundles next to the medkd3d sources
    assert find_bundle_root("brats_teacher_vggvit3d") == expected
    with pytest.raises(FileNotFoundError, match="--bundle_root"):
        find_bundle_root("no_such_bundle")


def _in_memory_datalist(n_per_class: int = 10) -> dict:
    records = [{"subject": f"{name}_{i:02d}", "label": label} for label, name in enumerate(("LGG", "HGG"))
               for i in range(n_per_class)]  # fmt: skip
    return {"training": records, "class_names": ["LGG", "HGG"]}


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_bundle_configs_select_on_val_and_report_on_held_out_test(bundle: str, bundle_kit) -> None:
    from monai.bundle import ConfigParser

    datalist = _in_memory_datalist()
    split, side = bundle_evaluation_split(bundle_kit.bundles_dir / bundle, {"data": datalist})
    assert side == "test" and len(split["test"]) == 4  # default test_fraction 0.2 of each class
    subjects = {s: {r["subject"] for r in split[s]} for s in ("train", "val", "test")}
    assert not subjects["test"] & (subjects["train"] | subjects["val"])

    configs = bundle_kit.config_files(bundle, "train.json", "evaluate.json")
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update({"bundle_root": str(bundle_kit.bundles_dir / bundle), "data": datalist})
    assert parser["test_fraction"] == 0.2 and parser["split"]["test_fraction"] == "@test_fraction"
    # model selection (the validation evaluator of train.json) sees the validation side, evaluate.json the test side
    assert "@split['val']" in json.dumps(parser.get("validate#dataset"))
    assert {r["subject"] for r in parser.get_parsed_content("dataset#data")} == subjects["test"]

    # the decision threshold is chosen on the validation subjects, or on the (labelled) training ones too
    chosen_on = parser.get_parsed_content("operating_point#dataset#data")
    assert {r["subject"] for r in chosen_on} == subjects["val"] and {r["side"] for r in chosen_on} == {"val"}
    parser.update({"threshold_split": ["train", "val"]})
    student = "kd_mode" in parser
    assert student == ("student" in bundle)
    if student:  # a student reads only the labels it trained on: 2 per class here
        parser.update({"train_per_class": 2, "unlabelled_train": True})
    chosen_on = parser.get_parsed_content("operating_point#dataset#data", lazy=False)
    train = [r["subject"] for r in chosen_on if r["side"] == "train"]
    assert set(train) <= subjects["train"] and len(train) == (4 if student else len(subjects["train"]))
    assert {r["subject"] for r in chosen_on if r["side"] == "val"} == subjects["val"]

    parser.update({"test_fraction": 0.0})
    with pytest.raises(Exception) as error:
        parser.get_parsed_content("dataset#data", lazy=False)
    assert "--test_fraction 0.2" in _chain(error.value)


def _chain(error: BaseException | None) -> str:
    """Every message of an exception chain (MONAI wraps instantiation errors)."""
    return " | ".join(str(e) for e in exception_chain(error))


def _result(name: str, role: str, p_hgg: list[float], labels: list[int], teacher: str | None = None) -> ModelResult:
    probabilities = np.stack([1 - np.asarray(p_hgg), np.asarray(p_hgg)], axis=1)
    return ModelResult(
        bundle=name, role=role, teacher=teacher, network="Net", input_per_subject="1 x [4, 8, 8, 8]",
        metrics=classification_metrics(probabilities, np.asarray(labels), ["LGG", "HGG"]), parameters=100 if teacher
        else 1000, gflops=0.1, latency_ms=1.0, probabilities=probabilities.tolist(), labels=list(labels),
    )  # fmt: skip


def test_report_states_split_chance_baseline_retention_and_flags(tmp_path: Path) -> None:
    labels = [0] * 6 + [1] * 4
    teacher = _result("teacher", "teacher", [0.1, 0.2, 0.3, 0.2, 0.1, 0.6, 0.7, 0.8, 0.9, 0.55], labels)
    constant = _result("student", "student", [0.4] * 10, labels, teacher="teacher")  # predicts LGG for everyone
    baseline = _result("trivial baseline", "baseline", [0.3, 0.4, 0.2, 0.6, 0.1, 0.2, 0.7, 0.8, 0.4, 0.9], labels)
    markdown, table = write_report([teacher, constant], tmp_path, {"epochs": 2}, baseline=baseline)
    text = markdown.read_text()
    assert "- evaluation split: test, n = 10 subjects (6 LGG, 4 HGG)" in text
    assert "- chance level: AUC 0.500, balanced accuracy 0.500, accuracy 0.600" in text
    assert "| trivial baseline | baseline | Net |" in text and "| 10 |" in text
    baseline_auc = 22.5 / 24  # by hand: one HGG ties one LGG, one LGG outranks it
    assert (
        "- student: predicts one class (LGG) for all 10 test subjects; AUC 95% CI includes 0.5; "
        f"AUC below the trivial baseline's ({baseline_auc:.3f}); n < 20"
    ) in text
    # the teacher separates (CI excludes 0.5) and beats the baseline (AUC 23/24)
    assert "- teacher: n < 20 test subjects: numbers are noisy" in text

    with table.open(newline="") as stream:
        rows = {row["bundle"]: row for row in csv.DictReader(stream)}
    assert list(rows) == ["trivial baseline", "teacher", "student"]
    student = rows["student"]
    assert float(student["balanced_accuracy_margin_retention"]) == 0.0  # not 1: the constant student keeps nothing
    assert float(student["auc_ratio"]) == pytest.approx(0.5 / float(rows["teacher"]["auc"]))
    assert float(rows["teacher"]["auc_ci_low"]) > 0.5 and student["n"] == "10"
    assert f"| student | teacher | 0.100 | 1.000 | 1.000 | {0.5 / float(rows['teacher']['auc']):.3f} | 0.000 |" in text


def test_report_shows_the_no_kd_twin_and_the_paired_kd_gain(tmp_path: Path) -> None:
    labels = [0] * 6 + [1] * 4
    teacher = _result("teacher", "teacher", [0.1] * 6 + [0.9] * 4, labels)  # AUC 1, balanced accuracy 1
    # by hand: AUC 23/24 (HGG 0.55 is below LGG 0.6); LGG 0.6 called HGG: balanced accuracy (5/6 + 4/4) / 2 = 11/12
    student = _result("student", "student", [0.1, 0.2, 0.3, 0.2, 0.1, 0.6, 0.7, 0.8, 0.9, 0.55], labels, "teacher")
    # by hand: AUC (4 + 6 + 6 + 5) / 24 = 21/24; two LGG and one HGG wrong: balanced accuracy (4/6 + 3/4) / 2 = 17/24
    twin_p = [0.4, 0.6, 0.3, 0.2, 0.1, 0.7, 0.45, 0.8, 0.9, 0.65]
    twin = _result("student_no_kd", NO_KD_ROLE, twin_p, labels, "teacher")
    twin.latency_ms = float("nan")  # the pipeline does not time a twin (its student's network)
    student.no_kd_twin = "student_no_kd"
    markdown, table = write_report([teacher, student, twin], tmp_path)

    with table.open(newline="") as stream:
        rows = {row["bundle"]: row for row in csv.DictReader(stream)}
    assert list(rows) == ["teacher", "student", "student_no_kd"] and rows["student_no_kd"]["role"] == NO_KD_ROLE
    assert float(rows["student"]["auc"]) == pytest.approx(23 / 24) and float(rows["student_no_kd"]["auc"]) == 21 / 24
    assert float(rows["student"]["kd_auc_gain"]) == pytest.approx(2 / 24)
    assert float(rows["student"]["kd_balanced_accuracy_gain"]) == pytest.approx(11 / 12 - 17 / 24)
    assert rows["student_no_kd"]["kd_auc_gain"] == "" and rows["student"]["no_kd_twin"] == "student_no_kd"
    # the twin keeps its own retention: (17/24 - 0.5) / (1 - 0.5) of the balanced accuracy
    assert float(rows["student_no_kd"]["balanced_accuracy_margin_retention"]) == pytest.approx(5 / 12)
    text = markdown.read_text()
    assert f"| student_no_kd | {NO_KD_ROLE} | Net |" in text and "neither timed nor exported" in text
    assert "| student | teacher | params_ratio | gflops_ratio | speedup | auc_ratio | " in text
    assert "| kd_auc_gain | kd_balanced_accuracy_gain |" in text
    assert f"| student | teacher | 0.100 | 1.000 | 1.000 | {23 / 24:.3f} | {5 / 6:.3f} | 0.083 | 0.208 |" in text
    assert f"| student_no_kd | teacher | 0.100 | 1.000 | n/a | {21 / 24:.3f} | {5 / 12:.3f} | n/a | n/a |" in text

    # a twin tested on other subjects gives no gain, in words
    other = _result("student_no_kd", NO_KD_ROLE, twin_p, labels[::-1], "teacher")
    add_kd_gains([student, other])
    assert all(np.isnan(v) for v in student.kd_gain.values())
    assert "KD gain undefined: student_no_kd was tested on other subjects" in student.flags


def test_report_without_twins_has_no_kd_gain_columns(tmp_path: Path) -> None:
    labels = [0, 0, 1, 1]
    teacher = _result("teacher", "teacher", [0.1, 0.2, 0.8, 0.9], labels)
    student = _result("student", "student", [0.3, 0.6, 0.4, 0.9], labels, "teacher")
    markdown, table = write_report([teacher, student], tmp_path)
    assert "kd_auc_gain" not in markdown.read_text() and "kd_auc_gain" not in table.read_text()
    assert NO_KD_ROLE not in markdown.read_text()


def test_report_reads_the_probability_writers_csv(tmp_path: Path) -> None:
    path = tmp_path / "evaluation_predictions.csv"
    path.write_text("subject,prob_LGG,prob_HGG,predicted,label\na,0.8,0.2,LGG,LGG\nb,0.3,0.7,HGG,HGG\nc,0.5,0.5,LGG,\n")
    probabilities, labels, subjects = read_predictions(path)
    assert probabilities == [[0.8, 0.2], [0.3, 0.7]] and labels == [0, 1] and subjects == ["a", "b"]  # c: no label
