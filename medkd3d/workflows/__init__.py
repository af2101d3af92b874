"""Deprecated alias of the modules that were ``medkd3d.workflows``; it will be removed in the next release.

``medkd3d.workflows`` mixed bundle glue, Ignite handlers, an inferer, a command and a report, under a name that
collides with MONAI's ``Workflow`` / ``ConfigWorkflow``. Each piece now lives where its name says:

============================================  ===============================================================
old                                           new
============================================  ===============================================================
``medkd3d.workflows.bundle``                  :mod:`medkd3d.bundles.run` (finding bundles: :mod:`medkd3d.bundles.io`)
``medkd3d.workflows.data``                    :mod:`medkd3d.bundles.data`
``medkd3d.workflows.teacher``                 :mod:`medkd3d.bundles.teacher` (``require_checkpoint``: :mod:`medkd3d.bundles.io`)
``medkd3d.workflows.training``                :mod:`medkd3d.bundles.training`
``medkd3d.workflows.export``                  :mod:`medkd3d.export.bundle`
``medkd3d.workflows.handlers``                :mod:`medkd3d.engines.handlers`
``medkd3d.workflows.inferers``                :mod:`medkd3d.engines.inferers`
``medkd3d.workflows.pipeline`` / ``report``   :mod:`medkd3d.pipeline.run` / :mod:`medkd3d.pipeline.report`
``medkd3d.workflows.cli``                     :mod:`medkd3d.pipeline.cli`
============================================  ===============================================================

so a bundle config reads ``"_target_": "medkd3d.bundles.prepare_dataset"``, ``"medkd3d.bundles.split_side"``,
``"medkd3d.engines.MetricsStatsHandler"``, ``"medkd3d.export.prepare_for_export"``. Configs and code written against
the old names keep working for one release: every old public name (``medkd3d.workflows.prepare_dataset``) and every
name of an old submodule (``medkd3d.workflows.data.split_side``, also through ``import`` and MONAI's ``_target_``)
is forwarded to its new home with a :class:`FutureWarning` that names the new path. Nothing here is imported
until it is used, so importing this package stays as light as before.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

#: Old submodule -> the modules now defining its names, searched in order (``bundle`` also re-exported the bundle
#: finders of :mod:`medkd3d.bundles.io`, ``teacher`` the configs' ``require_checkpoint``).
MOVED_MODULES: dict[str, tuple[str, ...]] = {
    "bundle": ("medkd3d.bundles.run", "medkd3d.bundles.io"),
    "cli": ("medkd3d.pipeline.cli",),
    "data": ("medkd3d.bundles.data",),
    "export": ("medkd3d.export.bundle",),
    "handlers": ("medkd3d.engines.handlers",),
    "inferers": ("medkd3d.engines.inferers",),
    "pipeline": ("medkd3d.pipeline.run",),
    "report": ("medkd3d.pipeline.report",),
    "teacher": ("medkd3d.bundles.teacher", "medkd3d.bundles.io"),
    "training": ("medkd3d.bundles.training",),
}

#: Old public name of ``medkd3d.workflows`` -> the package that exports it now.
MOVED_NAMES: dict[str, str] = {
    **dict.fromkeys(
        [
            "BUNDLE_NAMES",
            "SYNTHETIC_DEFAULT",
            "bundle_command",
            "ensure_dataset",
            "find_bundle_root",
            "inference_records",
            "load_teacher",
            "prepare_dataset",
            "require_checkpoint",
            "require_teacher_checkpoint",
            "run_bundle_config",
            "split_dataset",
        ],
        "medkd3d.bundles",
    ),
    **dict.fromkeys(
        [
            "AtomicCheckpointSaver",
            "ClassProbabilityWriter",
            "ClassificationMetricsWriter",
            "MetricsStatsHandler",
            "SliceStackInferer",
            "TrainingCheckpoint",
            "ValidationEarlyStopping",
        ],
        "medkd3d.engines",
    ),
    **dict.fromkeys(["load_bundle_network", "prepare_for_export"], "medkd3d.export"),
}

__all__ = sorted(MOVED_NAMES)


def _public_path(module_name: str, name: str) -> str:
    """The path to tell users: the package's public name (``medkd3d.bundles.split_side``) where it exports it."""
    package = module_name.rpartition(".")[0]
    if name in getattr(importlib.import_module(package), "__all__", ()):
        return f"{package}.{name}"
    return f"{module_name}.{name}"


def _forward(old: str, modules: Sequence[str], name: str) -> Any:
    """``name`` from the first of ``modules`` that defines it, with a :class:`FutureWarning` naming it.

    Raises:
        AttributeError: if none of ``modules`` defines ``name``.
    """
    for module_name in modules:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            new = _public_path(module_name, name)
            # stacklevel 3: the code that named the old path, past this helper and the module ``__getattr__``
            warnings.warn(
                f"{old}.{name} is deprecated and will be removed in the next release; use {new}.",
                FutureWarning,
                stacklevel=3,
            )
            return getattr(module, name)
    raise AttributeError(f"module {old!r} has no attribute {name!r}")


class _MovedModule(ModuleType):
    """An old submodule (``medkd3d.workflows.data``) whose attributes forward to their new home."""

    def __init__(self, name: str, modules: tuple[str, ...]) -> None:
        super().__init__(name, f"Deprecated alias of {', '.join(modules)}.")
        self._medkd3d_moved_to = modules

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # ``__path__``, ``__file__``...: a plain module has none, keep import's answers
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        return _forward(self.__name__, self._medkd3d_moved_to, name)

    def __dir__(self) -> list[str]:
        names = {name for module in self._medkd3d_moved_to for name in importlib.import_module(module).__all__}
        return sorted({*super().__dir__(), *names})


def _install_moved_modules() -> None:
    """Register the old submodules so ``import medkd3d.workflows.data`` and MONAI's ``_target_`` lookup find them."""
    for short, modules in MOVED_MODULES.items():
        full = f"{__name__}.{short}"
        module = sys.modules.get(full)
        if not isinstance(module, _MovedModule):
            module = sys.modules[full] = _MovedModule(full, modules)
        globals()[short] = module


def __getattr__(name: str) -> Any:
    if name not in MOVED_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _forward(__name__, (MOVED_NAMES[name],), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *MOVED_NAMES})


_install_moved_modules()
