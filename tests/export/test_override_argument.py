"""``--override KEY=VALUE``: one argparse type for ``medkd3d export`` and ``medkd3d explain``."""

from __future__ import annotations

import argparse

import pytest

from medkd3d.explain import cli as explain_cli
from medkd3d.export import cli as export_cli
from medkd3d.export.cli import parse_override


def test_values_are_json_or_plain_strings() -> None:
    assert parse_override("spatial_size=[64,64,64]") == ("spatial_size", [64, 64, 64])
    assert parse_override("network_def#dropout=0.5") == ("network_def#dropout", 0.5)
    assert parse_override("network_def#backbone=efficientnet_b0") == ("network_def#backbone", "efficientnet_b0")
    assert parse_override("expr=$@a == 1") == ("expr", "$@a == 1")  # only the first "=" splits
    for bad in ("spatial_size", "=3"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"expected KEY=VALUE .* got"):
            parse_override(bad)


def test_export_and_explain_parse_overrides_alike(capsys) -> None:
    parser = argparse.ArgumentParser(prog="medkd3d")
    commands = parser.add_subparsers(dest="command")
    export_cli.register(commands)
    explain_cli.register(commands)
    overrides = ["--override", "spatial_size=[8,8,8]", "--override", "network_def#name=vgg3d"]
    expected = [("spatial_size", [8, 8, 8]), ("network_def#name", "vgg3d")]

    exported = parser.parse_args(["export", "--bundle", "b", "--out", "o", *overrides])
    explained = parser.parse_args(["explain", "--bundle", "b", "--out", "o", *overrides, "--teacher-override", "k=1"])
    assert exported.override == explained.override == expected and explained.teacher_override == [("k", 1)]

    for command in ("export", "explain"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--bundle", "b", "--out", "o", "--override", "spatial_size"])
        assert "expected KEY=VALUE (e.g. spatial_size=[64,64,64]), got 'spatial_size'" in capsys.readouterr().err
