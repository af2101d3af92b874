"""Every ``medkd3d`` sub-command is defined in the ``cli`` module of its subpackage."""

from __future__ import annotations

import argparse

from medkd3d.cli import COMMAND_MODULES, build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_is_registered_and_handled_by_a_cli_module() -> None:
    assert all(name.endswith(".cli") for name in COMMAND_MODULES)
    commands = _subcommands()
    assert {"synth", "datalist", "check-data", "split", "models", "pipeline", "ablate", "explain"} <= set(commands)
    for name, command in commands.items():
        handler = command.get_default("func")
        assert handler.__module__.endswith(".cli"), f"medkd3d {name} is handled in {handler.__module__}"


def test_split_is_a_data_command() -> None:
    import medkd3d.data.splits as splits

    assert not hasattr(splits, "register")  # the library module carries no command-line code
    assert _subcommands()["split"].get_default("func").__module__ == "medkd3d.data.cli"
