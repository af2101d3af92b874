"""Teacher soft-target cache: precompute, save/load, look up, and refuse random teacher inputs."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, CopyItemsd, Identityd, OneOf, RandFlipd, RandGaussianNoise, RandGaussianNoised

from medkd3d.data.pipelines import slice_stack_transforms, volume_transforms
from medkd3d.engines import DistillationTrainer, SoftTargetCache, find_random_transforms, precompute_soft_targets
from medkd3d.losses.kd import KDLoss


def _loader(items, transform=None, batch_size=4):
    return DataLoader(Dataset(items, transform=transform), batch_size=batch_size, shuffle=False)


def test_precompute_save_load_and_lookup(tiny_net, items, tmp_path):
    teacher, data = tiny_net(width=6), items(6)
    path = tmp_path / "cache" / "teacher_logits.pt"
    cache = precompute_soft_targets(teacher, _loader(data), path=path, progress=False)
    assert teacher.training  # the teacher's mode is restored
    assert sorted(p.name for p in path.parent.iterdir()) == ["teacher_logits.pt"]  # no temporary file left

    loaded = SoftTargetCache.load(path)
    assert len(loaded) == 6 and loaded.num_teachers == 1 and loaded.num_classes == 2
    assert loaded.metadata["image_key"] == "image" and loaded.metadata["path"] == str(path)
    with torch.no_grad():
        expected = teacher.eval()(torch.stack([data[4]["image"], data[1]["image"]]))
    torch.testing.assert_close(loaded.lookup(["sub-004", "sub-001"])[:, 0], expected)
    torch.testing.assert_close(cache.lookup(["sub-004"]), loaded.lookup(["sub-004"]))
    with pytest.raises(KeyError, match=r"sub-999.*teacher_logits\.pt"):
        loaded.lookup(["sub-000", "sub-999"])


def test_cache_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        SoftTargetCache.load(tmp_path / "missing.pt")
    other = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match=r"weights\.pt is not a medkd3d soft-target cache"):
        SoftTargetCache.load(other)


def test_subject_with_changing_teacher_input_cannot_be_cached(tiny_net, items):
    first, second = items(2)
    second["subject"] = first["subject"]  # two samples of one subject with different teacher inputs
    with pytest.raises(ValueError, match=r"sub-000.*not deterministic"):
        precompute_soft_targets(tiny_net(), _loader([first, second]), progress=False)


def test_cached_training_matches_online_training(tiny_net, items):
    teacher, student, data = tiny_net(width=6), tiny_net(width=4), items(8)
    cache = precompute_soft_targets(teacher, _loader(data), progress=False)
    trained = {}
    for mode in ("online", "cached"):
        model = copy.deepcopy(student)
        DistillationTrainer(
            "cpu", 2, _loader(data), model, teacher, torch.optim.SGD(model.parameters(), lr=0.1), KDLoss(0.7, 3.0),
            soft_target_cache=cache if mode == "cached" else None,
        ).run()  # fmt: skip
        trained[mode] = model.state_dict()
    assert not torch.equal(trained["online"]["head.weight"], student.state_dict()["head.weight"])
    for name, value in trained["online"].items():
        torch.testing.assert_close(trained["cached"][name], value, rtol=1e-5, atol=1e-6)


def test_cache_without_teacher_module(tiny_net, items, tmp_path):
    data = items(4)
    path = tmp_path / "logits.pt"
    precompute_soft_targets(tiny_net(width=6), _loader(data), path=path, progress=False)
    student = tiny_net()
    trainer = DistillationTrainer(
        "cpu", 1, _loader(data), student, None, torch.optim.SGD(student.parameters(), lr=0.1), KDLoss(),
        soft_target_cache=path,
    )  # fmt: skip
    trainer.run()
    assert trainer.state.output[0]["loss_kd"] > 0


def test_cache_of_other_teacher_weights_or_with_teacher_features_is_refused(tiny_net, items):
    teacher, student, data = tiny_net(width=6), tiny_net(), items(4)
    cache = precompute_soft_targets(teacher, _loader(data), progress=False)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    retrained = tiny_net(width=6)  # same architecture, other weights
    with pytest.raises(ValueError, match="different teacher weights"):
        DistillationTrainer("cpu", 1, _loader(data), student, retrained, optimizer, KDLoss(), soft_target_cache=cache)
    with pytest.raises(ValueError, match="teacher_feature_taps need it"):
        DistillationTrainer(
            "cpu", 1, _loader(data), student, teacher, optimizer, KDLoss(), soft_target_cache=cache,
            feature_loss=torch.nn.MSELoss(), student_feature_taps=["stage"], teacher_feature_taps=["stage"],
        )  # fmt: skip


def test_cached_targets_with_random_teacher_input_are_refused(tiny_net, items, caplog):
    teacher, student, data = tiny_net(), tiny_net(), items(4)
    cache = precompute_soft_targets(teacher, _loader(data), progress=False)
    noisy = _loader(data, Compose([Identityd(keys="image"), RandGaussianNoised(keys="image", prob=1.0)]))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"randomise the teacher input 'image': #1 RandGaussianNoised"):
        DistillationTrainer("cpu", 1, noisy, student, teacher, optimizer, KDLoss(), soft_target_cache=cache)
    with pytest.raises(ValueError, match="RandGaussianNoised"):  # precomputing from random inputs is refused too
        precompute_soft_targets(teacher, noisy, progress=False)
    with caplog.at_level(logging.WARNING, logger="medkd3d.engines.soft_targets"):
        DistillationTrainer(
            "cpu", 1, noisy, student, teacher, optimizer, KDLoss(), soft_target_cache=cache,
            allow_random_teacher_input=True,
        ).run()  # fmt: skip
    assert "RandGaussianNoised" in caplog.text


@pytest.mark.parametrize(
    ("transform", "key", "expected"),
    [
        (Compose([Identityd(keys="image")]), "image", []),
        # the volume is copied before the slice augmentation: the teacher input stays deterministic
        (Compose([CopyItemsd(keys="image", names="volume"), RandFlipd(keys="image", prob=1.0)]), "volume", []),
        # a random flip before the copy reaches the volume too
        (Compose([RandFlipd(keys="image"), CopyItemsd(keys="image", names="volume")]), "volume", ["RandFlipd"]),
        (Compose([Identityd(keys="image"), Compose([RandFlipd(keys=["image", "seg"])])]), "image", ["RandFlipd"]),
        (Compose([OneOf([Identityd(keys="image"), Identityd(keys="label")])]), "image", ["Identityd"]),
        (Compose([Identityd(keys="image"), RandGaussianNoise()]), "image", ["RandGaussianNoise"]),
        (Compose([Identityd(keys="image"), RandFlipd(keys="seg")]), "image", []),
        # medkd3d 2.5D pipelines: a random slice sampler keeps the (deterministic) volume it samples from ...
        (slice_stack_transforms((16, 16, 12), sampling="random_foreground", keep_volume=True), "volume", []),
        # ... but training augmentations change the volume (flips before, intensity after the slice selection)
        (
            slice_stack_transforms((16, 16, 12), sampling="random_foreground", keep_volume=True, train=True),
            "volume",
            [
                "RandFlipd",
                "RandFlipd",
                "RandFlipd",
                "RandAffined",
                "RandScaleIntensityd",
                "RandShiftIntensityd",
            ],
        ),
        (volume_transforms((16, 16, 12)), "image", []),
    ],
)
def test_find_random_transforms(transform, key, expected):
    found = find_random_transforms(Dataset([], transform=transform), key)
    assert [f.split(" ")[1].split("(")[0] for f in found] == expected  # "#<position> <name>(keys=...)"


def test_multi_teacher_cache_matches_online_multi_teacher_training(tiny_net, items):
    from medkd3d.losses import MultiTeacherKDLoss

    teachers = torch.nn.ModuleDict({"wide": tiny_net(width=6), "narrow": tiny_net(width=2)})
    student, data = tiny_net(), items(8)
    cache = precompute_soft_targets(teachers, _loader(data), progress=False)
    assert cache.num_teachers == 2
    trained = {}
    for mode in ("online", "cached"):
        model = copy.deepcopy(student)
        DistillationTrainer(
            "cpu", 1, _loader(data), model, teachers, torch.optim.SGD(model.parameters(), lr=0.1),
            MultiTeacherKDLoss(teacher_weights=[0.7, 0.3], alpha=0.5, temperature=2.0),
            soft_target_cache=cache if mode == "cached" else None,
        ).run()  # fmt: skip
        trained[mode] = model.state_dict()
    assert not torch.equal(trained["online"]["head.weight"], student.state_dict()["head.weight"])
    for name, value in trained["online"].items():
        torch.testing.assert_close(trained["cached"][name], value, rtol=1e-5, atol=1e-6)
