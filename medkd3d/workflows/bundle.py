"""Locate the medkd3d bundles and run their configs through MONAI's bundle API."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["BUNDLE_NAMES", "bundle_command", "find_bundle_root", "run_bundle_config"]

logger = logging.getLogger(__name__)

#: The bundles shipped with medkd3d, teacher first (students load its checkpoint).
BUNDLE_NAMES: tuple[str, ...] = (
    "brats_teacher_vggvit3d",
    "brats_student_effnet3d",
    "brats_student_effnet25d",
    "brats_hdkd_teacher3d",
    "brats_hdkd_student3d",
)


def find_bundle_root(name: str) -> str:
    """Directory of the bundle ``name``, so configs work whichever directory they are run from.

    MONAI bundles conventionally use ``"bundle_root": "."`` and are run from inside the bundle. Ours are also
    run from the repository root (``--config_file bundles/<name>/configs/train.json``), so the root is looked
    up in this order: the working directory when it is the bundle itself, ``./bundles/<name>``, then the
    ``bundles/`` folder next to the installed medkd3d sources. ``--bundle_root DIR`` always overrides this.

    Args:
        name: bundle directory name, e.g. ``"brats_teacher_vggvit3d"``.

    Returns:
        The bundle directory as an absolute path string (a string, as MONAI configs concatenate paths).

    Raises:
        FileNotFoundError: if the bundle is in none of these places.
    """
    cwd = Path.cwd()
    candidates = [cwd, cwd / "bundles" / name, Path(__file__).resolve().parents[2] / "bundles" / name]
    for candidate in candidates:
        if candidate.name == name and (candidate / "configs" / "metadata.json").is_file():
            return str(candidate.resolve())
    raise FileNotFoundError(
        f"Cannot find the bundle {name!r} (looked in {', '.join(str(c) for c in candidates)}). "
        f"Run from the repository root or from inside the bundle, or pass --bundle_root /path/to/{name}."
    )


def bundle_command(bundle_root: str | os.PathLike, config: str = "train.json") -> str:
    """The ``python -m monai.bundle run`` command line of one config of a bundle, for messages.

    The path is relative to the working directory when the bundle lies below it (``bundles/<name>/...`` from the
    repository root), absolute otherwise, so the command can be pasted as it is.
    """
    config_file = Path(bundle_root).resolve() / "configs" / config
    if config_file.is_relative_to(Path.cwd()):
        config_file = config_file.relative_to(Path.cwd())
    return f"python -m monai.bundle run --config_file {config_file}"


def run_bundle_config(
    bundle_root: str | os.PathLike,
    configs: str | Sequence[str],
    workflow_type: str | None = "train",
    logging_file: str | bool = False,
    tracking: str | dict | None = None,
    **overrides: Any,
) -> Any:
    """Run one config of a bundle with MONAI's ``ConfigWorkflow`` (the engine of ``python -m monai.bundle run``).

    Args:
        bundle_root: the bundle directory.
        configs: config file name(s) in ``configs/``, merged in order, e.g. ``["train.json", "evaluate.json"]``.
        workflow_type: ``"train"`` or ``"infer"`` (checked against MONAI's bundle properties), or ``None``.
        logging_file: path of a ``logging.conf``; ``False`` (default) keeps the caller's logging set-up.
        tracking: ``"mlflow"`` (or a settings file/dict) to enable MONAI's experiment tracking.
        overrides: config ids and values, e.g. ``{"epochs": 2, "dataset_dir": "/data/brats"}``; ``bundle_root``
            is set to ``bundle_root`` unless given.

    Returns:
        The values of the config's ``run`` expressions.

    Raises:
        ValueError: if the bundle lacks a required property of ``workflow_type``.
    """
    from monai.bundle import ConfigWorkflow

    config_dir = Path(bundle_root) / "configs"
    config_files = [str(config_dir / c) for c in ([configs] if isinstance(configs, str) else configs)]
    overrides.setdefault("bundle_root", str(bundle_root))
    workflow = ConfigWorkflow(
        config_file=config_files,
        meta_file=str(config_dir / "metadata.json"),
        logging_file=logging_file,
        workflow_type=workflow_type,
        tracking=tracking,
        **overrides,
    )
    workflow.initialize()
    missing = workflow.check_properties()
    if missing:
        raise ValueError(f"Bundle {bundle_root} ({', '.join(config_files)}) lacks the properties {missing}.")
    logger.info("Running %s", " + ".join(config_files))
    try:
        return workflow.run()
    finally:
        workflow.finalize()
