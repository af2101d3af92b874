"""Small helpers shared by every subpackage (the bottom layer: imports nothing of medkd3d)."""

from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import os
import re
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "FolderInUseError",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "exception_chain",
    "lazy_exports",
    "lock_folder",
    "non_negative_int",
    "pid_alive",
    "positive_int",
    "remove_stale_temp_files",
    "unlock_folder",
    "usable_cpus",
]

logger = logging.getLogger(__name__)

#: Lock file (held with ``filelock``) and holder description of a folder locked by :func:`lock_folder`.
LOCK_NAME = ".medkd3d.lock"
LOCK_OWNER_NAME = ".medkd3d.lock.owner"

# Strong references to the held locks: filelock keeps its per-path singletons weakly, and a collected lock is
# released, so a caller dropping the returned object must not unlock the folder.
_HELD_LOCKS: dict[Path, Any] = {}


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
    remove_stale_temp_files(path)
    # the writer's pid in the name lets a later writer of the same target tell a killed write from a running one
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pid_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` exists on this machine (a process of another user counts as alive).

    Args:
        pid: the process id.

    Returns:
        ``False`` only when no such process exists.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence and permission check only
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists (another user's) or we cannot tell: never delete a file it may be writing
    return True


def _stale_temp_patterns(target: Path) -> list[re.Pattern[str]]:
    """Names of the temporary files writers of ``target`` leave when killed; group ``pid`` is the writer's pid.

    For a folder, the names of any target's temporary files in it.
    """
    if target.is_dir():
        return [
            re.compile(r"\..+\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp"),
            re.compile(r"\..+\.partial-(?P<pid>\d+)(\.[^.]+)?"),
        ]
    name, stem, suffix = (re.escape(part) for part in (target.name, target.stem, target.suffix))
    return [
        re.compile(rf"\.{name}\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp"),  # atomic_path
        re.compile(rf"\.{stem}\.partial-(?P<pid>\d+){suffix}"),  # medkd3d.export artefacts (model.partial-1.ts)
        re.compile(rf"\.{name}\.partial-(?P<pid>\d+)"),  # TensorRT timing caches and other whole-name partials
    ]


def remove_stale_temp_files(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writers of ``target`` left beside it.

    Only files whose name carries the pid of a process that no longer runs are removed (see
    :func:`pid_alive`), so a concurrent writer's file in progress is never touched. Pids are those of this
    machine: on a folder shared between machines a file of a dead writer elsewhere may survive (it is harmless).

    Args:
        target: the file a writer replaces atomically, e.g. ``models/model.pt`` or ``export/model.ts``; or a
            folder, to clean up after the writers of every file in it.

    Returns:
        The removed files.
    """
    target = Path(target)
    folder = target if target.is_dir() else target.parent
    if not folder.is_dir():
        return []
    patterns = _stale_temp_patterns(target)
    removed = []
    for candidate in folder.iterdir():
        match = next((m for p in patterns if (m := p.fullmatch(candidate.name))), None)
        if match is None or pid_alive(int(match["pid"])) or not candidate.is_file():
            continue
        try:
            candidate.unlink()
        except FileNotFoundError:  # another process cleaned it up at the same time
            continue
        removed.append(candidate)
        logger.info("Removed %s, left by an interrupted write of %s.", candidate, target)
    return removed


class FolderInUseError(RuntimeError):
    """Raised by :func:`lock_folder` when another process holds the folder."""


def lock_folder(folder: str | os.PathLike, purpose: str = "training") -> Any:
    """Lock ``folder`` for this process, so that two runs never write the same checkpoints at once.

    The lock is an OS file lock on ``<folder>/.medkd3d.lock`` (the ``filelock`` package): the operating system
    drops it when the holder dies, so a killed run never leaves the folder locked. The holder's pid, host,
    start time and purpose are written to ``<folder>/.medkd3d.lock.owner`` for the message other runs get. The
    lock is re-entrant within one process (a pipeline's or a test's repeated runs), and is released by
    :func:`unlock_folder` or when the process ends (dropping the returned object does not release it).

    Args:
        folder: the folder (created when missing).
        purpose: what the holder does, for the message, e.g. ``"training brats_teacher_vggvit3d"``.

    Returns:
        The held ``filelock.FileLock``.

    Raises:
        FolderInUseError: naming the folder and, where it can be read, the holder.
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # one lock object per path and process: a second FileLock on the same file would lock against ourselves
    lock = FileLock(folder / LOCK_NAME, is_singleton=True, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FolderInUseError(
            f"{folder} is in use by another run ({_lock_holder(folder)}); two runs writing the same checkpoint "
            "folder would overwrite each other's best model. Wait for that run to finish, stop it, or give this "
            "run another folder (e.g. ckpt_dir=... / --out-dir ...)."
        ) from None
    _HELD_LOCKS[folder.resolve()] = lock
    if lock.lock_counter == 1:
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(
            folder / LOCK_OWNER_NAME, f"pid {os.getpid()} on {socket.gethostname()}, {purpose}, since {started}\n"
        )
    return lock


def unlock_folder(folder: str | os.PathLike) -> None:
    """Release this process's lock of ``folder`` taken by :func:`lock_folder` (however often it was taken)."""
    folder = Path(folder)
    lock = _HELD_LOCKS.pop(folder.resolve(), None)
    if lock is not None and lock.is_locked:
        (folder / LOCK_OWNER_NAME).unlink(missing_ok=True)
        lock.release(force=True)


def _lock_holder(folder: Path) -> str:
    try:
        return (folder / LOCK_OWNER_NAME).read_text(encoding="utf-8").strip() or "holder unknown"
    except OSError:
        return "holder unknown"


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


def exception_chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the exceptions it was raised from or while handling, outermost first, each once - the chain
    a traceback shows (a context suppressed by ``raise ... from None`` is left out).

    MONAI re-raises a component's or a transform's error as a ``RuntimeError`` from the original, so what a
    command refuses (or an out-of-memory error) is found by walking this chain.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one (``taskset``, a container's cpuset),
    else ``os.cpu_count()``; at least 1.

    ``os.cpu_count()`` counts the machine's CPUs even when the process is pinned to a few, so sharing threads out by
    it oversubscribes a pinned job.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
