"""The ``medkd3d`` command line (also ``python -m medkd3d``).

Each subpackage that offers commands has a ``cli`` module with a ``register(subparsers)`` function that adds
its sub-commands and binds each to a handler through ``set_defaults(func=...)``. Handlers take the parsed
arguments and return a process exit code. Heavy imports (torch, MONAI) happen inside the handlers so that
``medkd3d --help`` stays fast.

A handler refuses bad input by raising (``ValueError``, ``FileNotFoundError``, ``DataValidationError``,
``ParityError``...). :func:`main` turns such a refusal - also when MONAI wraps it, as in ``RuntimeError: Failed to
instantiate component ...`` of a bundle run - into one ``error: ...`` line and a non-zero exit code; ``--debug``
adds the traceback. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pickle
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from medkd3d import __version__
from medkd3d.utils import exception_chain

#: Modules whose ``register`` adds sub-commands, in the order they appear in ``--help``.
COMMAND_MODULES: tuple[str, ...] = (
    "medkd3d.data.cli",
    "medkd3d.networks.cli",
    "medkd3d.pipeline.cli",
    "medkd3d.export.cli",
    "medkd3d.ablation.cli",
    "medkd3d.explain.cli",
)

_DEBUG_HELP = "show the Python traceback when the command refuses its input (by default: one `error:` line)"

#: Exit code of a refused command (bad input, missing file, failed check).
REFUSED = 1

#: Exceptions that refuse bad input rather than signal a bug: reported as one line without traceback.
_REFUSAL_TYPES: tuple[type[BaseException], ...] = (
    ValueError,  # also DataValidationError, UnsafeArtefactError, json.JSONDecodeError
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    TimeoutError,  # also filelock.Timeout: another run holds the lock
    pickle.UnpicklingError,  # a corrupt or foreign checkpoint
)

#: Refusals matched by qualified name, so that the CLI does not import torch-heavy modules to recognise them.
_REFUSAL_NAMES: frozenset[str] = frozenset(
    {
        "medkd3d.export.parity.ParityError",
        "medkd3d.pipeline.run.ExportParityError",  # the report is written; an export failed its parity check
        "medkd3d.export.backends.BackendUnavailableError",
        "medkd3d.bundles.run.BundleOutOfMemoryError",  # names the batch / spatial size / profile that fit
    }
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
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for command in set(subparsers.choices.values()):  # `medkd3d pipeline ... --debug` works too
        # SUPPRESS: a sub-command without the flag leaves the top-level value alone
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
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
    try:
        return int(args.func(args) or 0)
    except Exception as error:  # refusals become one line, anything else is re-raised
        refusal = find_refusal(error)
        if refusal is None:
            raise
        if args.debug:
            traceback.print_exception(error, file=sys.stderr)
        print(f"error: {refusal_message(refusal)}", file=sys.stderr)
        if not args.debug:
            print("(add --debug for the traceback)", file=sys.stderr)
        return REFUSED


def _is_refusal(error: BaseException) -> bool:
    """Whether ``error`` refuses bad input (see :data:`_REFUSAL_TYPES` and :data:`_REFUSAL_NAMES`).

    Whatever ``torch.load`` raises while reading a file is about that file: a truncated checkpoint ends in a
    ``RuntimeError`` of the zip reader, some garbage in an ``IndexError`` of the weights-only unpickler.
    """
    if isinstance(error, _REFUSAL_TYPES) or _unpickled_file(error) is not None:
        return True
    return any(f"{cls.__module__}.{cls.__qualname__}" in _REFUSAL_NAMES for cls in type(error).__mro__)


def find_refusal(error: BaseException) -> BaseException | None:
    """The refusal behind ``error``, or ``None`` when ``error`` is a bug.

    MONAI's ``ConfigParser`` re-raises an error of a component as ``RuntimeError("Failed to instantiate component
    ...")`` from the original, so the chain of causes is searched; the innermost refusal is returned because it
    carries the specific message (the subject, the file, the fix).

    Args:
        error: the exception a command handler raised.

    Returns:
        The refusing exception, or ``None`` if neither ``error`` nor any of its causes is a refusal.
    """
    refusals = [e for e in exception_chain(error) if _is_refusal(e)]
    return refusals[-1] if refusals else None


def _unpickled_file(error: BaseException) -> str | None:
    """The file ``torch.load`` was reading when ``error`` was raised in it, if it was given a path."""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        code = frame.f_code
        if code.co_name == "load" and Path(code.co_filename).parts[-2:] == ("torch", "serialization.py"):
            candidate = frame.f_locals.get("f")
            if isinstance(candidate, str) or hasattr(candidate, "__fspath__"):
                return str(candidate)
    return None


def refusal_message(error: BaseException) -> str:
    """The one-line (or, for a list of data problems, one-paragraph) message shown for a refusal.

    Args:
        error: a refusal found by :func:`find_refusal`.

    Returns:
        The message, without the ``error:`` prefix.
    """
    file = _unpickled_file(error)
    if file is not None or isinstance(error, pickle.UnpicklingError):
        # torch explains itself over many lines (weights-only advice, miniz internals); the first sentence suffices
        first_line = (str(error).strip().splitlines() or [""])[0].split(". ")[0] or type(error).__name__
        where = f" {file}" if file else ""
        return (
            f"cannot read the file{where}: it is not a PyTorch checkpoint written by medkd3d, or it is truncated or "
            f"corrupt ({first_line}); point to the right file or retrain to recreate it"
        )
    return str(error).strip() or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
