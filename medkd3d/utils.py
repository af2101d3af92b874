"""Small helpers shared by every subpackage (the bottom layer: imports nothing of medkd3d)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "lazy_exports",
    "non_negative_int",
    "positive_int",
]


def _current_umask() -> int:
    umask = os.umask(0)  # reading the umask means setting it; restore it at once
    os.umask(umask)
    return umask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it is renamed to ``path``.

    Readers never see a half-written file under ``path``, and a failure (exception or kill) leaves any previous
    version intact; the temporary file is removed on an exception. The file gets the permissions of a plain
    ``open(path, "w")`` (``0o666`` less the umask), not ``mkstemp``'s private ``0o600``.

    Args:
        path: the destination; its folder is created when missing.

    Yields:
        The temporary path (in the same folder, so ``os.replace`` is an atomic rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, then rename it to ``path`` (see :func:`atomic_path`).

    Args:
        path: destination file; its parent folder is created when missing.
        data: the complete file content.

    Returns:
        The destination path.
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module-level ``__getattr__`` and ``__dir__`` (PEP 562) loading a package's public names on first access.

    Subpackages that import torch or MONAI use it so that ``medkd3d --help`` and the light commands stay fast::

        __getattr__, __dir__ = lazy_exports(__name__, {"run_study": "runner", ...})

    Args:
        package: the package's ``__name__``.
        exports: public name -> submodule of ``package`` that defines it.

    Returns:
        ``(__getattr__, __dir__)`` for the package's namespace.
    """

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__


def positive_int(text: str) -> int:
    """``argparse`` type: an integer of at least 1, with a message naming the bad value otherwise."""
    return _bounded_int(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """``argparse`` type: an integer of at least 0, with a message naming the bad value otherwise."""
    return _bounded_int(text, 0, "a non-negative integer")


def _bounded_int(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value
