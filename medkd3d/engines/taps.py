"""Feature taps: intermediate outputs of any model, captured during the forward pass that makes the logits.

Two ways to get features, both running the network exactly once:

- :class:`FeatureTaps` (torchdistill style) registers forward hooks on submodules named by their module path
  (``"features.denseblock2"`` of a MONAI ``DenseNet121``), so any ``nn.Module`` can be a teacher or a student.
- :func:`returning_features` makes a medkd3d zoo model return ``(logits, forward_features(x))`` from its
  ``forward_features``/``forward_head`` pair; :func:`forward_with_features` is the one-call form.

Both look through ``DistributedDataParallel``/``DataParallel``/``torch.compile`` wrappers, so module paths are
the paths of the user's model, not of its wrapper.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from medkd3d.networks import feature_stages

__all__ = [
    "FeatureTaps",
    "feature_info_taps",
    "forward_with_features",
    "has_two_heads",
    "returning_features",
    "unwrap_model",
]

#: Value of ``*_feature_taps`` arguments selecting the zoo models' ``forward_features`` instead of hooks.
FORWARD_FEATURES = "forward_features"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's model inside ``DistributedDataParallel``, ``DataParallel`` and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def has_two_heads(model: nn.Module) -> bool:
    """Whether ``model`` is a two-head (class token + distillation token) student exposing ``forward_heads``."""
    return callable(getattr(unwrap_model(model), "forward_heads", None))


class FeatureTaps:
    """Capture the outputs of submodules, named by module path, with forward hooks.

    The hooks only record what the modules return while the network runs its ordinary forward pass, so taps
    never re-run part of the network. A module that returns a tuple or list (e.g. a transformer block that
    also returns attention) is recorded as its first element. A module called several times in one forward
    pass is recorded as its last call.

    Example::

        with FeatureTaps(densenet, ["features.denseblock2", "features.denseblock4"]) as taps:
            logits = densenet(x)
            block2, block4 = taps.features

    Args:
        model: any ``nn.Module``; wrappers (DDP, DataParallel, ``torch.compile``) are looked through.
        module_paths: dotted paths as in ``model.named_modules()``; the features come back in this order.
        detach: record detached tensors (for a frozen teacher, saves keeping its graph around).

    Raises:
        ValueError: if ``module_paths`` is empty or names a module the model does not have.
    """

    def __init__(self, model: nn.Module, module_paths: Sequence[str], detach: bool = False) -> None:
        if isinstance(module_paths, str):
            module_paths = (module_paths,)
        self.module_paths = tuple(module_paths)
        if not self.module_paths:
            raise ValueError("FeatureTaps needs at least one module path, e.g. ['features.denseblock2'].")
        inner = unwrap_model(model)
        modules = dict(inner.named_modules())
        for path in self.module_paths:
            if path not in modules:
                close = difflib.get_close_matches(path, modules, n=5)
                hint = f" Did you mean one of {close}?" if close else " List the paths with model.named_modules()."
                raise ValueError(f"{type(inner).__name__} has no submodule {path!r} to tap.{hint}")
        self.detach = detach
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[path].register_forward_hook(self._recorder(path)) for path in self.module_paths]

    def _recorder(self, path: str):
        def record(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            self._outputs[path] = output.detach() if self.detach else output

        return record

    @property
    def features(self) -> list[torch.Tensor]:
        """The tapped outputs of the last forward pass, in ``module_paths`` order.

        Raises:
            RuntimeError: if a tapped module did not run since the last :meth:`clear`.
        """
        missing = [path for path in self.module_paths if path not in self._outputs]
        if missing:
            raise RuntimeError(
                f"Tapped modules {missing} produced no output: run the model's forward pass first, and check that "
                "these modules are used by forward()."
            )
        return [self._outputs[path] for path in self.module_paths]

    def pop(self) -> list[torch.Tensor]:
        """The tapped features, then forget them (so no stale feature survives into the next pass)."""
        features = self.features
        self.clear()
        return features

    def clear(self) -> None:
        """Forget the recorded features."""
        self._outputs.clear()

    def remove(self) -> None:
        """Remove every hook and forget the recorded features; calling it twice is harmless."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear()

    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return bool(self._handles)

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self.module_paths)}, active={self.active})"


@contextmanager
def returning_features(model: nn.Module, features: bool = True, two_heads: bool = False) -> Iterator[nn.Module]:
    """Within the block, calling ``model`` returns the outputs distillation needs, from one forward pass.

    The zoo contract gives ``forward(x) == forward_head(forward_features(x))``; with ``features`` ``model(x)``
    returns ``(logits, features)`` computed as ``features = forward_features(x); logits = forward_head(features)``.
    With ``two_heads`` it returns the pair ``forward_heads(x)`` (class-token and distillation-token logits)
    instead of their mean; a two-head student's stage features then come from :func:`feature_info_taps`.
    The call still goes through ``model.__call__``, so a ``DistributedDataParallel`` wrapper synchronises
    gradients as usual (calling ``model.module.forward_features`` directly would silently skip that).

    Args:
        model: a zoo model, possibly wrapped in DDP/DataParallel.
        features: return ``(logits, features)``.
        two_heads: return the two heads' logits as a pair.

    Yields:
        ``model`` itself.

    Raises:
        ValueError: if both or neither of ``features`` and ``two_heads`` are set.
        TypeError: if the model lacks ``forward_features``/``forward_head``/``forward_heads`` as required.
    """
    if features == two_heads:
        raise ValueError("returning_features: set exactly one of features and two_heads.")
    inner = unwrap_model(model)
    required = ["forward_features", "forward_head"] if features else ["forward_heads"]
    missing = [name for name in required if not callable(getattr(inner, name, None))]
    if missing:
        raise TypeError(
            f"{type(inner).__name__} has no {', '.join(missing)}: use module paths as feature taps for models "
            "outside the medkd3d zoo (e.g. student_feature_taps=['features.denseblock2'])."
        )

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if two_heads:
            return inner.forward_heads(x, *args, **kwargs)
        stage_features = inner.forward_features(x, *args, **kwargs)
        return inner.forward_head(stage_features), stage_features

    had_own_forward = "forward" in vars(inner)
    own_forward = vars(inner).get("forward")
    inner.forward = forward  # an instance attribute shadows the class's forward for nn.Module.__call__
    try:
        yield model
    finally:
        if had_own_forward:
            inner.forward = own_forward
        else:
            del inner.forward


def feature_info_taps(model: nn.Module, detach: bool = False, stages: Sequence[int] | None = None) -> FeatureTaps:
    """Hooks on the modules that ``feature_info`` names, the stage outputs ``forward_features`` returns.

    This is timm's hook-based feature extraction; the trainer uses it for two-head students, whose training
    forward (``forward_heads``) has no ``(logits, features)`` form, and
    :class:`~medkd3d.engines.AuxiliaryFeatureLoss` for the stages its task supervises.

    Args:
        model: a model with ``feature_info`` (possibly DDP-wrapped).
        detach: record detached features.
        stages: indices into ``feature_info`` of the stages to tap, in this order (default: every stage).

    Raises:
        TypeError: if the model has no ``feature_info`` with ``"module"`` entries.
        ValueError: if ``stages`` is empty or names a stage the model does not have.
    """
    inner = unwrap_model(model)
    info = getattr(inner, "feature_info", None)
    if not info or not all(isinstance(stage, dict) and "module" in stage for stage in info):
        raise TypeError(
            f"{type(inner).__name__} has no feature_info with 'module' paths; pass the module paths to tap instead."
        )
    chosen = info if stages is None else feature_stages(inner, stages)
    return FeatureTaps(model, [stage["module"] for stage in chosen], detach=detach)


def forward_with_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(logits, features)`` of a zoo model from one pass of ``forward_features`` then ``forward_head``.

    Args:
        model: a model following the medkd3d network contract (possibly DDP-wrapped).
        x: the input batch.

    Returns:
        The logits ``[B, num_classes]`` and the list of stage features.
    """
    with returning_features(model):
        return model(x)
