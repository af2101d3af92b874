"""``AuxiliaryFeatureLoss``: an extra training task on a network's stage features, added to any MONAI trainer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from .taps import FeatureTaps, feature_info_taps
from .trainer import _split_loss

__all__ = ["AuxiliaryFeatureLoss"]


class AuxiliaryFeatureLoss:
    """Add ``weight * loss(stage features, batch[target_key])`` to the loss of a MONAI trainer, before its backward.

    MONAI's ``SupervisedTrainer`` (and :class:`~medkd3d.engines.DistillationTrainer`) fire ``LOSS_COMPLETED``
    after computing ``engine.state.output["loss"]`` and back-propagate that entry afterwards, so this handler
    adds its term there: the network, the trainer and the exported model stay as they are. The stage features
    are those of the training forward pass itself, recorded by forward hooks on the modules that the network's
    ``feature_info`` names (:func:`~medkd3d.engines.feature_info_taps`), which exist only while the trainer runs. The
    weighted term is also reported as ``engine.state.output["loss_<name>"]``.

    The optimizer must hold the loss module's parameters (e.g. the heads of
    :class:`~medkd3d.losses.TumourCompartmentLoss`), each once: ``params: {"_target_":
    "medkd3d.bundles.unique_parameters", "modules": ["@network", "@seg_aux_loss"]}`` in a bundle config.

    Args:
        loss: ``loss(features, target) -> total`` or ``(total, components)``; ``features`` is the list of the
            selected stage outputs.
        stages: indices into the network's ``feature_info`` of the stages whose outputs ``loss`` gets.
        target_key: batch key of the target (``"seg"``: the segmentation the training transforms load).
        weight: factor of the term; ``0`` disables the handler.
        name: the term's name in the trainer output (``"loss_" + name``).

    Raises:
        ValueError: if ``stages`` is empty.
    """

    def __init__(
        self, loss: nn.Module, stages: Sequence[int], target_key: str = "seg", weight: float = 1.0, name: str = "seg"
    ) -> None:
        if not stages:
            raise ValueError("AuxiliaryFeatureLoss needs at least one stage index of the network's feature_info")
        self.loss = loss
        self.stages = tuple(int(s) for s in stages)
        self.target_key = target_key
        self.weight = float(weight)
        self.name = name
        self._taps: FeatureTaps | None = None

    def attach(self, engine: Engine) -> None:
        """Install the feature hooks when ``engine`` starts, add the term at every ``LOSS_COMPLETED``."""
        if self.weight == 0:
            return
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self._add_term)
        engine.add_event_handler(Events.COMPLETED, self._stop)

    def _start(self, engine: Engine) -> None:
        self._check_records(engine)
        self._stop(engine)
        self.loss.to(engine.state.device)  # in place: the optimizer keeps the same parameters
        self._taps = feature_info_taps(engine.network, stages=self.stages)

    def _stop(self, engine: Engine) -> None:
        if self._taps is not None:
            self._taps.remove()
            self._taps = None

    def _check_records(self, engine: Engine) -> None:
        """Name the training subjects without a target, before the first batch fails to collate."""
        records = getattr(getattr(engine.data_loader, "dataset", None), "data", None)
        if not isinstance(records, Sequence):
            return
        missing = [
            str(r.get("subject", f"record {i}"))
            for i, r in enumerate(records)
            if isinstance(r, dict) and r.get(self.target_key) is None
        ]
        if missing:
            listed = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(
                f"The auxiliary {self.name!r} loss needs {self.target_key!r} for every training subject, but "
                f"{len(missing)} have none: {listed}. Add the files to the datalist, or turn the loss off "
                f"(bundle config seg_aux_weight=0)."
            )

    def _add_term(self, engine: Engine) -> None:
        if self._taps is None:
            raise RuntimeError("AuxiliaryFeatureLoss: LOSS_COMPLETED before the engine started")
        batch: dict[str, Any] = engine.state.batch
        if self.target_key not in batch:
            raise ValueError(
                f"The auxiliary {self.name!r} loss needs batch[{self.target_key!r}], but the training batch has only "
                f"{sorted(batch)}; load it in the training transforms (volume_transforms(load_seg=True))."
            )
        target = batch[self.target_key].to(engine.state.device)
        total, _ = _split_loss(self.loss(self._taps.pop(), target))
        term = self.weight * total
        engine.state.output[Keys.LOSS] = engine.state.output[Keys.LOSS] + term
        engine.state.output[f"loss_{self.name}"] = term.detach()
