"""Locate the medkd3d bundles, their profiles, and run their configs through MONAI's bundle API.

A *profile* is a plain MONAI config overlay in ``configs/profiles/<name>.json`` (``quick``, ``cpu``, ``gpu``):
config ids and values (``"epochs": 2``, ``"network_def#vit_layers": 4``) merged after ``train.json`` exactly as
``python -m monai.bundle run --config_file "['configs/train.json','configs/profiles/quick.json']"`` merges them.
Profiles combine in order; later files and command-line overrides win.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from medkd3d.utils import exception_chain

__all__ = [
    "BUNDLE_NAMES",
    "PROFILES_DIR",
    "BundleOutOfMemoryError",
    "bundle_command",
    "bundle_logging_file",
    "find_bundle_root",
    "is_out_of_memory",
    "list_profiles",
    "profile_configs",
    "read_profiles",
    "run_bundle_config",
]

logger = logging.getLogger(__name__)

#: The bundles shipped with medkd3d, teacher first (students load its checkpoint).
BUNDLE_NAMES: tuple[str, ...] = (
    "brats_teacher_vggvit3d",
    "brats_student_effnet3d",
    "brats_student_effnet25d",
    "brats_hdkd_teacher3d",
    "brats_hdkd_student3d",
)


def _is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file()


def _bundle_of(path: str | os.PathLike) -> Path | None:
    """The bundle a config file or config folder belongs to (``<bundle>/configs[/profiles]/...``), if any."""
    folder = Path(path).resolve()
    if not folder.is_dir():  # a config file: look from its folder
        folder = folder.parent
    for candidate in (folder, *folder.parents[:2]):
        if _is_bundle(candidate):
            return candidate
    return None


def _called_from_config(frame: FrameType | None) -> bool:
    """Whether ``frame`` (the caller of :func:`find_bundle_root`) is MONAI evaluating a config: a ``_target_``
    instantiated by ``monai.utils.module.instantiate`` or a ``$`` expression evaluated by ``monai.bundle``."""
    if frame is None:
        return False
    if frame.f_globals.get("__name__", "").startswith("monai."):
        return True
    parent = frame.f_back
    in_expression = frame.f_code.co_filename == "<string>" and parent is not None
    return in_expression and parent.f_globals.get("__name__", "").startswith("monai.bundle")


def _running_config_files(frame: FrameType | None) -> list[str] | None:
    """The config (and metadata) files of the MONAI bundle workflow or command on the stack, nearest first.

    ``ConfigWorkflow`` (``python -m monai.bundle run``, :func:`run_bundle_config`) keeps its config folder in
    ``config_root_path`` and its ``meta_file``; the other ``monai.bundle`` commands (``ckpt_export``,
    ``verify_net_in_out``, ``onnx_export``, ``trt_export``) hold their parsed ``config_file_`` argument. ``None``
    when no such frame is found (a plain ``ConfigParser``).
    """
    from monai.bundle import ConfigWorkflow
    from monai.utils import ensure_tuple

    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("monai.bundle"):
            owner = frame.f_locals.get("self")
            if isinstance(owner, ConfigWorkflow):  # isinstance: MONAI's config objects answer any getattr
                return [str(owner.config_root_path), *(str(m) for m in ensure_tuple(owner.meta_file or ()))]
            files = frame.f_locals.get("config_file_")
            if files:
                return [str(f) for f in ensure_tuple(files)]
        frame = frame.f_back
    return None


def find_bundle_root(name: str) -> str:
    """Directory of the bundle ``name``, so configs work whichever directory they are run from.

    MONAI bundles conventionally use ``"bundle_root": "."`` and are run from inside the bundle. Ours are also
    run from the repository root (``--config_file bundles/<name>/configs/train.json``) and from anywhere else, so
    the root is found as follows. ``--bundle_root DIR`` always overrides this.

    - **From a bundle config** (the ``bundle_root`` of every ``configs/*.json``): a bundle resolves only itself,
      the bundle folder holding the config files MONAI is running (``python -m monai.bundle run`` / ``ckpt_export``
      / ... ``--config_file <bundle>/configs/train.json``), so a copied bundle reads and writes its own
      ``models/`` and ``eval/`` wherever the command is started. When MONAI's command is not on the stack (a plain
      ``ConfigParser`` without a ``bundle_root`` override) the working directory must be the bundle or hold it in
      ``bundles/<name>``. The bundles installed with medkd3d are never used for a config.
    - **From Python** (the pipeline, the ablation runner, examples): the working directory when it is the bundle,
      ``./bundles/<name>``, then the ``bundles/`` folder next to the installed medkd3d sources.

    Args:
        name: bundle directory name, e.g. ``"brats_teacher_vggvit3d"``.

    Returns:
        The bundle directory as an absolute path string (a string, as MONAI configs concatenate paths).

    Raises:
        FileNotFoundError: if the config being run is not inside a bundle, its bundle is not ``name`` (a config
            naming another bundle), or the bundle is in none of the places searched.
    """
    caller = sys._getframe(1)
    cwd = Path.cwd()
    if _called_from_config(caller):
        files = _running_config_files(caller)
        if files is not None:
            bundles = [b for b in (_bundle_of(f) for f in files) if b is not None]
            if not bundles:
                raise FileNotFoundError(
                    f"Cannot tell the bundle_root of bundle {name!r}: the config files {files} are not inside a "
                    f"bundle (<bundle>/configs/*.json next to configs/metadata.json). Run the bundle's own configs, "
                    f"or pass --bundle_root /path/to/{name}."
                )
            if bundles[0].name != name:
                raise FileNotFoundError(
                    f"The config run from {bundles[0]} sets bundle_root to the bundle {name!r}, but a bundle resolves "
                    f"only itself: rename the folder to {name}, fix the config's bundle_root name, or pass "
                    f"--bundle_root {bundles[0]}."
                )
            return str(bundles[0])
        candidates = [cwd, cwd / "bundles" / name]
    else:
        candidates = [cwd, cwd / "bundles" / name, Path(__file__).resolve().parents[2] / "bundles" / name]
    for candidate in candidates:
        if candidate.name == name and _is_bundle(candidate):
            return str(candidate.resolve())
    raise FileNotFoundError(
        f"Cannot find the bundle {name!r} (looked in {', '.join(str(c) for c in candidates)}). "
        f"Run from the repository root or from inside the bundle, or pass --bundle_root /path/to/{name}."
    )


#: Folder of the profiles inside a bundle's ``configs/``.
PROFILES_DIR = "profiles"


def list_profiles(bundle_root: str | os.PathLike) -> list[str]:
    """Names of a bundle's profiles (``configs/profiles/<name>.json``), sorted; empty when it has none."""
    folder = Path(bundle_root) / "configs" / PROFILES_DIR
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def profile_configs(bundle_root: str | os.PathLike, profiles: Sequence[str]) -> list[str]:
    """Config file names (relative to ``configs/``) of the named profiles, in the given order.

    Args:
        bundle_root: the bundle directory.
        profiles: profile names, e.g. ``["quick"]`` or ``["cpu", "quick"]``.

    Returns:
        ``["profiles/<name>.json", ...]``, ready for :func:`run_bundle_config`'s ``configs``.

    Raises:
        ValueError: for a profile the bundle does not have, listing the ones it has.
    """
    available = list_profiles(bundle_root)
    unknown = [p for p in profiles if p not in available]
    if unknown:
        raise ValueError(
            f"Bundle {Path(bundle_root).name} has no profile {unknown[0]!r}; its profiles are {available} "
            f"(files in {Path(bundle_root) / 'configs' / PROFILES_DIR})."
        )
    return [f"{PROFILES_DIR}/{p}.json" for p in profiles]


def read_profiles(bundle_root: str | os.PathLike, profiles: Sequence[str]) -> dict[str, Any]:
    """The merged content of the named profiles as ``{config id: value}``, later profiles winning.

    Useful where a profile must reach a config it is not merged into, e.g. the ``network_def#...`` and size
    overrides of ``inference.json`` or an export of a model trained under a profile.

    Args:
        bundle_root: the bundle directory.
        profiles: profile names, in merge order.

    Returns:
        Config ids (as written in the profiles, e.g. ``"network_def#vit_layers"``) and their values.

    Raises:
        ValueError: for a profile the bundle does not have.
    """
    from monai.bundle.utils import merge_kv

    merged: dict[str, Any] = {}
    for name in profile_configs(bundle_root, profiles):
        content = json.loads((Path(bundle_root) / "configs" / name).read_text(encoding="utf-8"))
        for key, value in content.items():
            merge_kv(merged, key, value)
    return merged


def bundle_command(bundle_root: str | os.PathLike, config: str | Sequence[str] = "train.json") -> str:
    """The ``python -m monai.bundle run`` command line of config(s) of a bundle, for messages.

    Paths are relative to the working directory when the bundle lies below it (``bundles/<name>/...`` from the
    repository root), absolute otherwise, so the command can be pasted as it is. Several configs (e.g.
    ``["train.json", "profiles/quick.json"]``) are written as MONAI's list syntax.
    """
    files = []
    for name in [config] if isinstance(config, str) else config:
        config_file = Path(bundle_root).resolve() / "configs" / name
        if config_file.is_relative_to(Path.cwd()):
            config_file = config_file.relative_to(Path.cwd())
        files.append(str(config_file))
    if len(files) == 1:
        return f"python -m monai.bundle run --config_file {files[0]}"
    return f'python -m monai.bundle run --config_file "[{",".join(repr(f) for f in files)}]"'


class BundleOutOfMemoryError(MemoryError):
    """A bundle run ran out of CPU or GPU memory; the message names the settings that make it fit."""


#: What the allocators say when they run out: PyTorch's CPU allocator (``DefaultCPUAllocator: can't allocate
#: memory``, ``not enough memory`` on Windows), CUDA / MPS (``CUDA out of memory``, ``CUDA error: out of memory``,
#: ``MPS backend out of memory``), cuDNN / cuBLAS (``CUDNN_STATUS_ALLOC_FAILED``, ``CUBLAS_STATUS_ALLOC_FAILED``), and
#: a data-loading worker killed by the kernel's out-of-memory killer (``DataLoader worker ... killed by signal: Killed``).
_OOM_PATTERN = re.compile(
    r"out of memory|can't allocate memory|cannot allocate memory|not enough memory|STATUS_ALLOC_FAILED"
    r"|killed by signal: Killed",
    re.IGNORECASE,
)


def is_out_of_memory(error: BaseException) -> BaseException | None:
    """The out-of-memory error behind ``error``, if any.

    MONAI re-raises a transform's error as ``RuntimeError("applying transform ...")`` and a config component's as
    ``RuntimeError("Failed to instantiate component ...")``, so the chain of causes is searched.

    Args:
        error: any exception of a bundle run.

    Returns:
        The innermost ``MemoryError``, ``torch.OutOfMemoryError``, ``ENOMEM`` ``OSError`` or ``RuntimeError`` with an
        allocator's out-of-memory message; ``None`` if ``error`` is not about memory.
    """
    found = None
    for cause in exception_chain(error):
        if isinstance(cause, BundleOutOfMemoryError):
            return None  # already explained by an inner run
        if isinstance(cause, MemoryError) or type(cause).__name__ == "OutOfMemoryError":
            found = cause
        elif isinstance(cause, OSError) and cause.errno == errno.ENOMEM:
            found = cause
        elif isinstance(cause, RuntimeError) and _OOM_PATTERN.search(str(cause)):
            found = cause
    return found


def _setting(workflow: Any, key: str) -> Any:
    """The resolved value of config id ``key`` of an initialised workflow, or ``None`` when it cannot tell."""
    try:
        return workflow.parser.get_parsed_content(key) if key in workflow.parser else None
    except Exception:  # an expression that fails to resolve: just leave the value out of the message
        return None


def _out_of_memory_message(oom: BaseException, workflow: Any, config_files: Sequence[str], bundle_root: Path) -> str:
    """What ran out of memory, with the settings of the run and the ways to make it fit."""
    text = " ".join(str(oom).split()) or type(oom).__name__
    gpu = type(oom).__name__ == "OutOfMemoryError" or re.search(r"CUDA|CUDNN|CUBLAS|MPS", text) is not None
    now = {key: _setting(workflow, key) for key in ("batch_size", "spatial_size")} if workflow is not None else {}
    settings = ", ".join(f"{key}={json.dumps(value)}" for key, value in now.items() if value is not None)
    return (
        f"Out of {'GPU' if gpu else 'CPU'} memory running {' + '.join(Path(c).name for c in config_files)} of bundle "
        f"{Path(bundle_root).name}{f' ({settings})' if settings else ''}: {text[:300]}. "
        "Make the run smaller: a smaller batch (--override batch_size=1), smaller volumes "
        '(--override "spatial_size=[96,96,96]" or --spatial-size 96), fewer data-loading workers '
        "(--override num_workers=0), or a lighter profile (--profile cpu, or --profile quick for a smoke run)"
        f"{'; on a GPU, mixed precision (--override amp=true) also halves activation memory' if gpu else ''}."
    )


#: Warnings of MONAI's ``ConfigWorkflow`` about defaults that :func:`run_bundle_config` always sets explicitly (the
#: metadata and logging files): printed on every run, they would only teach users to ignore warnings.
_DEFAULT_WARNINGS: tuple[str, ...] = ("Logging file is set to False", "Not all config files are in")


class _DropMessages(logging.Filter):
    """Drops the records whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


@contextmanager
def _without_default_warnings() -> Iterator[None]:
    """Silence :data:`_DEFAULT_WARNINGS` of ``monai.bundle.workflows`` (and only those) while a workflow is built."""
    monai_logger = logging.getLogger("monai.bundle.workflows")
    drop = _DropMessages(_DEFAULT_WARNINGS)
    monai_logger.addFilter(drop)
    try:
        yield
    finally:
        monai_logger.removeFilter(drop)


def bundle_logging_file(config_dir: str | os.PathLike, logging_file: str | bool | None = None) -> str | bool:
    """The ``logging_file`` to give MONAI's ``ConfigWorkflow`` for a run of the configs in ``config_dir``.

    Args:
        config_dir: the bundle's ``configs`` folder.
        logging_file: a path (returned as is), ``False`` (keep the caller's logging set-up), or ``None``: keep the
            caller's set-up when the root logger has handlers, else the bundle's ``logging.conf`` (when it exists).

    Returns:
        A path of a logging config to apply, or ``False`` to leave logging alone.
    """
    if logging_file is not None:
        return logging_file
    default = Path(config_dir) / "logging.conf"
    # applying the bundle's file would replace the handlers (stream, format) the caller chose
    if logging.getLogger().handlers or not default.is_file():
        return False
    return str(default)


def run_bundle_config(
    bundle_root: str | os.PathLike,
    configs: str | Sequence[str],
    workflow_type: str | None = "train",
    logging_file: str | bool | None = None,
    tracking: str | dict | None = None,
    profiles: Sequence[str] = (),
    **overrides: Any,
) -> Any:
    """Run config(s) of a bundle with MONAI's ``ConfigWorkflow`` (the engine of ``python -m monai.bundle run``).

    Args:
        bundle_root: the bundle directory.
        configs: config file name(s) in ``configs/`` (or paths), merged in order, e.g.
            ``["train.json", "evaluate.json"]`` or ``["train.json", "profiles/quick.json"]``.
        workflow_type: ``"train"`` or ``"infer"`` (checked against MONAI's bundle properties), or ``None``.
        logging_file: path of a ``logging.conf`` to apply; ``False`` keeps the caller's logging set-up; ``None``
            (default) keeps it when the process has one (the ``medkd3d`` command, ``logging.basicConfig``) and
            otherwise applies the bundle's ``configs/logging.conf``, as ``python -m monai.bundle run`` does.
        tracking: ``"mlflow"`` (or a settings file/dict) to enable MONAI's experiment tracking.
        profiles: names of the bundle's profiles (``configs/profiles/<name>.json``), merged in order after
            ``configs``; ``overrides`` still win over them.
        overrides: config ids and values, e.g. ``{"epochs": 2, "dataset_dir": "/data/brats"}``; ``bundle_root``
            is set to ``bundle_root`` unless given.

    Returns:
        The values of the config's ``run`` expressions.

    Raises:
        ValueError: if the bundle lacks a required property of ``workflow_type`` or a named profile.
        BundleOutOfMemoryError: if the run runs out of CPU or GPU memory (from the original error), with the
            batch size, spatial size or profile that make it fit.
    """
    from monai.bundle import ConfigWorkflow

    config_dir = Path(bundle_root) / "configs"
    names = [configs] if isinstance(configs, str) else list(configs)
    config_files = [str(config_dir / c) for c in [*names, *profile_configs(bundle_root, profiles)]]
    overrides.setdefault("bundle_root", str(bundle_root))
    workflow = None
    try:
        with _without_default_warnings():
            workflow = ConfigWorkflow(
                config_file=config_files,
                meta_file=str(config_dir / "metadata.json"),
                logging_file=bundle_logging_file(config_dir, logging_file),
                workflow_type=workflow_type,
                tracking=tracking,
                **overrides,
            )
        workflow.initialize()  # may already allocate: networks, cached datasets
        missing = workflow.check_properties()
        if missing:
            raise ValueError(f"Bundle {bundle_root} ({', '.join(config_files)}) lacks the properties {missing}.")
        logger.info("Running %s", " + ".join(config_files))
        try:
            return workflow.run()
        finally:
            workflow.finalize()
    except Exception as error:
        # an allocator's message names neither the run nor the fix; say both (the original stays the cause)
        oom = is_out_of_memory(error)
        if oom is None:
            raise
        raise BundleOutOfMemoryError(_out_of_memory_message(oom, workflow, config_files, Path(bundle_root))) from error
