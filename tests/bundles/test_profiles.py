"""Bundle profiles (``configs/profiles/*.json``): valid overlays of ``train.json``, a student and its teacher share
the input size under every profile, and every teacher stays larger than its students."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.bundle import ConfigParser
from torch import nn

from medkd3d.bundles import bundle_command, list_profiles, profile_configs, read_profiles, tiny_overrides
from medkd3d.networks import get_model_entry
from medkd3d.pipeline.run import MODELS

BUNDLES_DIR = Path(__file__).resolve().parents[2] / "bundles"
PROFILES = ("quick", "cpu", "gpu")
#: ``None``: train.json alone, the default recipe.
RECIPES = (None, *PROFILES)
STUDENTS = [(m.bundle, m.teacher) for m in MODELS if m.teacher]


def _parser(bundle: str, profile: str | None, overrides: dict[str, Any] | None = None) -> ConfigParser:
    root = BUNDLES_DIR / bundle
    configs = ["train.json", *profile_configs(root, [profile] if profile else [])]
    parser = ConfigParser()
    parser.read_config([str(root / "configs" / c) for c in configs])
    parser.update({"bundle_root": str(root), **(overrides or {})})
    return parser


@contextmanager
def _no_init() -> Iterator[None]:
    """Skip weight initialisation: only shapes and sizes matter here, and the default teacher has 160M weights."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


_BUILT: dict[tuple[str, str | None, str], tuple[str, dict[str, tuple[int, ...]], int]] = {}


def _network(bundle: str, profile: str | None, net_id: str = "network_def") -> tuple[str, dict, int]:
    """``(repr, weight shapes, parameter count)`` of the network ``net_id`` of ``bundle``'s train.json under
    ``profile``; built once per session and not kept (the default teacher alone is 640 MB)."""
    key = (bundle, profile, net_id)
    if key not in _BUILT:
        with _no_init(), torch.no_grad():
            network = _parser(bundle, profile).get_parsed_content(net_id)
        shapes = {k: tuple(v.shape) for k, v in network.state_dict().items()}
        _BUILT[key] = (repr(network), shapes, sum(p.numel() for p in network.parameters()))
    return _BUILT[key]


@pytest.mark.parametrize("bundle", [m.bundle for m in MODELS])
def test_every_bundle_ships_the_profiles_as_valid_overlays(bundle: str) -> None:
    root = BUNDLES_DIR / bundle
    assert set(PROFILES) <= set(list_profiles(root))
    train = _parser(bundle, None)
    for profile in list_profiles(root):
        content = json.loads((root / "configs" / "profiles" / f"{profile}.json").read_text())
        assert content and read_profiles(root, [profile]) == content
        for config_id in content:
            # each key names a config id whose parent exists in train.json: a typo would silently add an unused key
            parent = config_id.rsplit("#", 1)[0] if "#" in config_id else config_id
            assert parent in train, f"{bundle} profile {profile}: {config_id} is not an id of train.json"
            assert not isinstance(content[config_id], dict), "set nested ids (network_def#x), not whole sections"


@pytest.mark.parametrize("profile", RECIPES)
@pytest.mark.parametrize("bundle", [m.bundle for m in MODELS])
def test_every_recipe_validates_its_last_epoch(bundle: str, profile: str | None) -> None:
    # the final model's validation metrics are logged, and model_selection "best" can keep it
    parser = _parser(bundle, profile)
    assert parser.get_parsed_content("epochs") % parser.get_parsed_content("val_interval") == 0


def test_profiles_combine_in_order_and_overrides_win(monkeypatch) -> None:
    bundle = "brats_teacher_vggvit3d"
    root = BUNDLES_DIR / bundle
    quick_epochs = json.loads((root / "configs" / "profiles" / "quick.json").read_text())["epochs"]
    assert quick_epochs != _parser(bundle, None).get_parsed_content("epochs")  # so the merge below is visible
    quick = _parser(bundle, "quick")
    assert quick.get_parsed_content("epochs") == quick_epochs and quick.get_parsed_content("spatial_size") == [32] * 3
    assert quick["network_def"]["vit_layers"] == 4 and quick["network_def"]["name"] == "vggvit3d"  # merged, kept
    both = read_profiles(root, ["cpu", "quick"])  # later wins on shared ids, the rest combines
    assert both["network_def#vit_layers"] == 4 and both["amp"] is False and both["epochs"] == quick_epochs
    assert _parser(bundle, "quick", {"epochs": 7}).get_parsed_content("epochs") == 7
    with pytest.raises(ValueError, match=r"no profile 'fast'; its profiles are \['cpu', 'gpu', 'quick'\]"):
        profile_configs(root, ["fast"])
    monkeypatch.chdir(BUNDLES_DIR.parent)
    assert bundle_command(root, ["train.json", "profiles/quick.json"]) == (
        f"python -m monai.bundle run --config_file \"['bundles/{bundle}/configs/train.json',"
        f"'bundles/{bundle}/configs/profiles/quick.json']\""
    )


@pytest.mark.parametrize("profile", RECIPES)
@pytest.mark.parametrize(("student", "teacher"), STUDENTS)
def test_student_and_teacher_share_the_input_size_under_every_profile(
    student: str, teacher: str, profile: str | None
) -> None:
    if profile is not None:
        assert profile in list_profiles(BUNDLES_DIR / teacher), f"{teacher} lacks the profile {profile} of {student}"
    # the student builds its teacher from the teacher checkpoint's record (tests/bundles/test_teacher_pairing.py),
    # which refuses a student volume size other than the one the teacher was trained at
    assert _parser(student, profile).get_parsed_content("spatial_size") == _parser(teacher, profile).get_parsed_content(
        "spatial_size"
    )
    assert "teacher_def" not in _parser(student, profile)  # no copy of the teacher to drift from it


@pytest.mark.parametrize("profile", RECIPES)
@pytest.mark.parametrize(("student", "teacher"), STUDENTS)
def test_every_teacher_is_larger_than_its_students(student: str, teacher: str, profile: str | None) -> None:
    teacher_size = _network(teacher, profile)[2]
    student_size = _network(student, profile)[2]
    assert teacher_size > student_size, (
        f"profile {profile or 'train.json'}: teacher {teacher} has {teacher_size:,} parameters, fewer than its "
        f"student {student} ({student_size:,})"
    )


@pytest.mark.parametrize("profile", RECIPES)
@pytest.mark.parametrize("bundle", [m.bundle for m in MODELS])
def test_tiny_overrides_follow_the_network_a_profile_selects(bundle: str, profile: str | None) -> None:
    """``ablate --tiny --profile quick`` shrinks the network the profile builds (the 3D student's quick ResNet-10
    takes no ``depth_multiplier``), so every bundle x profile builds a tiny network."""
    profiles = [profile] if profile else []
    overrides = tiny_overrides(BUNDLES_DIR / bundle, 32, profiles)
    parser = _parser(bundle, profile, {**overrides, "class_names": ["LGG", "HGG"]})
    name = parser.get("network_def#name")
    expected = {f"network_def#{k}" for k in get_model_entry(name).tiny_kwargs if k != "img_size"}
    assert expected <= overrides.keys() and overrides["spatial_size"] == [32, 32, 32]
    network = parser.get_parsed_content("network_def")  # the failure this guards against: an unknown argument
    assert sum(p.numel() for p in network.parameters()) < 1_000_000
