"""Run the medkd3d bundles' configs through MONAI's bundle API (:func:`run_bundle_config`).

Finding a bundle and its profiles is :mod:`medkd3d.bundles.io`'s job (:func:`~medkd3d.bundles.find_bundle_root`,
:func:`~medkd3d.bundles.list_profiles`, :func:`~medkd3d.bundles.profile_configs`, ...); this module runs what it
finds, and says which settings make a run fit when it runs out of memory (:class:`BundleOutOfMemoryError`).

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medkd3d.bundles.io import profile_configs
from medkd3d.utils import exception_chain

__all__ = ["BundleOutOfMemoryError", "bundle_logging_file", "evaluate_bundle", "is_out_of_memory", "run_bundle_config"]

logger = logging.getLogger(__name__)


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


def evaluate_bundle(
    bundle_root: str | os.PathLike,
    logging_file: str | bool | None = None,
    profiles: Sequence[str] = (),
    **overrides: Any,
) -> Any:
    """Evaluate a trained bundle: ``train.json`` + ``evaluate.json`` (and ``profiles``), MONAI's ``infer`` workflow.

    Args:
        bundle_root: the bundle directory.
        logging_file: see :func:`run_bundle_config`.
        profiles: the profiles the run was trained with.
        overrides: the run's config overrides (``ckpt_dir``, ``output_dir``, ``split``...).

    Returns:
        The values of the config's ``run`` expressions.

    Raises:
        ValueError, BundleOutOfMemoryError: see :func:`run_bundle_config`.
    """
    return run_bundle_config(
        bundle_root, ["train.json", "evaluate.json"], workflow_type="infer", logging_file=logging_file,
        profiles=profiles, **overrides,
    )  # fmt: skip
