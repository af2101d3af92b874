"""``FitCompartmentReadout``: fit a network's compartment readout on the training subjects when training ends."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from medkd3d.networks.readout import readout_stages

from .baseline import has_label
from .batch import plain_tensor
from .taps import unwrap_model

__all__ = ["FitCompartmentReadout"]

logger = logging.getLogger(__name__)


class FitCompartmentReadout:
    """After the last training epoch, fit ``network.readout`` (:class:`~medkd3d.networks.readout.CompartmentReadout`).

    The readout's classifier is a logistic regression on the log-volumes of the tumour compartments that the
    network predicts; it is fitted on the training subjects only, each preprocessed without augmentation, with
    the trained network in eval mode. It runs at the last ``EPOCH_COMPLETED`` (or the epoch an early stop ends
    on), so that the final checkpoint, saved at ``COMPLETED``, holds the fitted readout; validation subjects
    then choose the decision threshold as for any model, and test subjects are never read.

    A student has no segmentation to train a compartment head with. Given ``head_from``, its teacher, the handler
    copies the head of the teacher's fitted readout into the student's when training starts and freezes it; the
    student's feature distillation makes its stage map match the teacher's, so the teacher's head reads the
    student's compartments (SimKD's reuse of the teacher's classifier, on the compartment head).

    Args:
        network: the trained network (possibly DDP-wrapped) with ``readout`` and ``readout_stage``.
        records: the training records (``image`` paths and ``label``; unlabelled ones are skipped).
        transform: the deterministic preprocessing of a record (the bundle's ``validate#preprocessing``).
        image_key: the transformed record's image key.
        head_from: a teacher with a fitted readout on the same stage, whose head the network's readout adopts.

    Raises:
        ValueError: if the network has no readout, or ``head_from`` has no fitted readout on the same stage.
    """

    def __init__(
        self,
        network: nn.Module,
        records: Sequence[Mapping[str, Any]],
        transform: Callable[[dict[str, Any]], Mapping[str, Any]],
        image_key: str = "image",
        head_from: nn.Module | None = None,
    ) -> None:
        model = unwrap_model(network)
        if getattr(model, "readout", None) is None:
            raise ValueError(
                f"{type(model).__name__} has no compartment readout to fit; build it with "
                "readout_stage set (bundle config readout_stage), or leave this handler out."
            )
        if head_from is not None:
            teacher = unwrap_model(head_from)
            readout = getattr(teacher, "readout", None)
            same_stages = readout_stages(teacher.readout_stage) == readout_stages(model.readout_stage)
            if readout is None or not bool(readout.fitted) or not same_stages:
                raise ValueError(
                    f"The student's compartment readout on stage {model.readout_stage} adopts its teacher's head, "
                    f"but the teacher ({type(teacher).__name__}) has no fitted readout on that stage: train the "
                    "teacher with the same readout_stage and model_selection 'final', or set the student's "
                    "readout_stage to null."
                )
        self.network = network
        self.records = [r for r in records if has_label(r)]
        self.transform = transform
        self.image_key = image_key
        self.head_from = head_from

    def attach(self, engine: Engine) -> None:
        """Adopt the teacher's head (if any) when training starts; fit at the end of the epoch that ends it."""
        if self.head_from is not None:
            engine.add_event_handler(Events.STARTED, self.adopt_head)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._fit_if_last)

    def adopt_head(self) -> None:
        """Copy the teacher's compartment head into the network's readout and freeze it."""
        unwrap_model(self.network).readout.adopt_head(unwrap_model(self.head_from).readout)

    def _fit_if_last(self, engine: Engine) -> None:
        if engine.state.epoch >= engine.state.max_epochs or engine.should_terminate:
            self.fit()

    @torch.no_grad()
    def fit(self) -> None:
        """Predict each training subject's log-volumes (on the network's device) and fit the readout on them."""
        model = unwrap_model(self.network)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        volumes, labels = [], []
        for record in self.records:
            image = torch.as_tensor(plain_tensor(self.transform(dict(record))[self.image_key]))
            features = model.forward_features(image[None].to(device))
            maps = [features[stage] for stage in readout_stages(model.readout_stage)]
            volumes.append(model.readout.log_volumes(maps).cpu())
            labels.append(int(record["label"]))
        model.readout.fit(torch.cat(volumes), torch.tensor(labels))
        model.train(was_training)
        logger.info("Fitted the compartment readout on %d training subjects.", len(labels))
