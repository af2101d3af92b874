"""The ``medkd3d`` command line (also ``python -m medkd3d``).

Each subpackage that offers commands has a ``cli`` module with a ``register(subparsers)`` function that adds
its sub-commands and binds each to a handler through ``set_defaults(func=...)``. Handlers take the parsed
arguments and return a process exit code. Heavy imports (torch, MONAI) happen inside the handlers so that
``medkd3d --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from medkd3d import __version__

#: Modules whose ``register`` adds sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "medkd3d.data.cli",
    "medkd3d.data.splits",
    "medkd3d.networks.cli",
    "medkd3d.workflows.pipeline",
    "medkd3d.export.cli",
    "medkd3d.ablation.cli",
    "medkd3d.explain.cli",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered sub-command.

    Returns:
        The argument parser of the ``medkd3d`` command.
    """
    parser = argparse.ArgumentParser(
        prog="medkd3d",
        description="Knowledge distillation of 3D teachers into 3D and 2.5D students for volumetric medical imaging.",
    )
    parser.add_argument("--version", action="version", version=f"medkd3d {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``medkd3d`` command.

    Args:
        argv: command-line arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The process exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
