"""Model registry in the style of timm: ``create_model(name, **kwargs)`` and ``list_models()``.

Model files register a factory with :func:`register_model`. The model families are imported on the first
look-up (:data:`MODEL_FAMILY_MODULES`), so importing the registry, and ``medkd3d --help``, stays light. Each registration also records a tiny
configuration (constructor overrides and an input shape) that builds and runs in milliseconds; the test
suite uses it to check every registered model against the network contract without knowing the models.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ModelEntry", "create_model", "feature_stages", "get_model_entry", "list_models", "register_model"]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model.

    Args:
        name: registry name, e.g. ``"efficientnet3d_b0"``.
        factory: callable building the model from keyword arguments.
        tiny_kwargs: constructor overrides that make the model tiny (for tests and smoke runs).
        tiny_input_shape: input shape without the batch dimension that the tiny model accepts.
        default_input_shape: input shape without the batch dimension at the bundles' default size.
        role: ``"teacher"`` or ``"student"``.
    """

    name: str
    factory: Callable[..., nn.Module]
    tiny_kwargs: dict[str, Any] = field(default_factory=dict)
    tiny_input_shape: tuple[int, ...] = ()
    default_input_shape: tuple[int, ...] = ()
    role: str = "student"


_REGISTRY: dict[str, ModelEntry] = {}

#: Modules whose import registers a model family, in the order of ``list_models`` ties.
MODEL_FAMILY_MODULES: tuple[str, ...] = (
    "medkd3d.networks.vgg3d",
    "medkd3d.networks.vit3d",
    "medkd3d.networks.vggvit3d",
    "medkd3d.networks.hdkd",
    "medkd3d.networks.efficientnet3d",
    "medkd3d.networks.efficientnet25d",
    "medkd3d.networks.resnet3d",
)


def _import_model_families() -> None:
    """Import every model family once so that its ``register_model`` decorators have run."""
    for module_name in MODEL_FAMILY_MODULES:
        importlib.import_module(module_name)


def register_model(
    name: str,
    *,
    tiny_kwargs: dict[str, Any] | None = None,
    tiny_input_shape: tuple[int, ...],
    default_input_shape: tuple[int, ...],
    role: str = "student",
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model factory under ``name``.

    Args:
        name: registry name; must be unique.
        tiny_kwargs: constructor overrides for a tiny instance.
        tiny_input_shape: input shape (no batch dimension) of the tiny instance.
        default_input_shape: input shape (no batch dimension) at the default bundle size.
        role: ``"teacher"`` or ``"student"``.

    Returns:
        The decorator, which returns the factory unchanged.

    Raises:
        ValueError: if ``name`` is already registered or ``role`` is unknown.
    """
    if role not in ("teacher", "student"):
        raise ValueError(f"role must be 'teacher' or 'student', got {role!r}.")

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"A model named {name!r} is already registered.")
        _REGISTRY[name] = ModelEntry(
            name=name,
            factory=factory,
            tiny_kwargs=dict(tiny_kwargs or {}),
            tiny_input_shape=tuple(tiny_input_shape),
            default_input_shape=tuple(default_input_shape),
            role=role,
        )
        return factory

    return decorator


def list_models(pattern: str = "*", role: str | None = None) -> list[str]:
    """Names of the registered models, sorted.

    Args:
        pattern: shell-style filter, e.g. ``"efficientnet3d_*"``.
        role: keep only ``"teacher"`` or ``"student"`` models when given.

    Returns:
        The matching model names.
    """
    _import_model_families()
    return sorted(
        name
        for name, entry in _REGISTRY.items()
        if fnmatch.fnmatch(name, pattern) and (role is None or entry.role == role)
    )


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``.

    Raises:
        KeyError: if no model of that name is registered; the message lists the known names.
    """
    _import_model_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"Unknown model {name!r}. Registered models: {', '.join(list_models())}.") from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name (see :func:`list_models`).
        kwargs: constructor arguments, e.g. ``in_channels=4, num_classes=2``.

    Returns:
        The model, in training mode.

    Raises:
        KeyError: if ``name`` is not registered.
    """
    model = get_model_entry(name).factory(**kwargs)
    # the resolved build arguments, so a training run can record in its checkpoints what it built and a loader
    # can compare them with what it builds (medkd3d.bundles.checkpoint_config)
    model.model_args = {"name": name, **kwargs}
    return model


def feature_stages(model: nn.Module, stages: Sequence[int]) -> list[dict[str, Any]]:
    """The ``feature_info`` entries (``num_chs``, ``reduction``, ``module``) of the given stages of a zoo model.

    Args:
        model: a model following the network contract (unwrapped).
        stages: indices into its ``feature_info``.

    Returns:
        The entries, in ``stages`` order.

    Raises:
        ValueError: if ``stages`` is empty or names a stage the model does not have.
    """
    info = getattr(model, "feature_info", None) or []
    if not stages or any(not 0 <= int(s) < len(info) for s in stages):
        raise ValueError(
            f"stages {list(stages)} are not indices of the {len(info)} feature_info entries of {type(model).__name__}."
        )
    return [info[int(s)] for s in stages]
