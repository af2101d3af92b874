"""Subjects and network inputs for parity checks, INT8 calibration and ``medkd3d infer``.

A bundle's network does not always see the preprocessed image the way it comes out of the preprocessing: the
``inferer`` may reshape it (:class:`~medkd3d.engines.SliceStackInferer` sends the ``S`` slice stacks of a subject
to a single-stack network as a batch of ``S``), or pass it whole (``SimpleInferer``: the 2.5D bundle's
multiple-instance network takes a subject's ``[S, 4*K, H, W]`` stacks as one input). :func:`network_inputs`
therefore runs the bundle's own inferer with a recording stand-in for the network, so parity and calibration use
exactly the tensors the deployed network receives, whatever their shape.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "CalibrationBatches",
    "NetworkInputRecorder",
    "load_records",
    "network_inputs",
    "preprocess_image",
    "synthetic_records",
]

logger = logging.getLogger(__name__)


def load_records(source: str | os.PathLike) -> list[dict[str, Any]]:
    """The subjects of a datalist JSON file or of a BraTS-style folder (labelled or not).

    Args:
        source: a datalist JSON (``medkd3d datalist`` output) or a dataset folder, discovered with
            :func:`medkd3d.data.discover_brats`.

    Returns:
        The ``training`` then ``testing`` records, with absolute paths.

    Raises:
        FileNotFoundError: if ``source`` does not exist.
        ValueError: if it holds no subject.
    """
    from medkd3d.data import read_datalist

    datalist = read_datalist(source)
    records = [*datalist.get("training", []), *datalist.get("testing", [])]
    if not records:
        raise ValueError(
            f"{source} holds no subject; check the path (`medkd3d check-data {source}` lists the problems)."
        )
    return records


def synthetic_records(
    directory: str | os.PathLike, shape: Sequence[int] = (64, 64, 48), seed: int = 0
) -> list[dict[str, Any]]:
    """Two synthetic subjects (one HGG, one LGG) for parity checks when no real data is at hand.

    Args:
        directory: where the NIfTI files go.
        shape: volume shape; the bundle's preprocessing resizes it to the network's input size.
        seed: generator seed.

    Returns:
        Their datalist records.
    """
    from medkd3d.data import generate_synthetic_brats

    root = generate_synthetic_brats(directory, layout="brats2019", n_hgg=1, n_lgg=1, shape=tuple(shape), seed=seed)
    return load_records(root)


def preprocess_image(
    record: Mapping[str, Any], preprocessing: Callable[[Mapping[str, Any]], Mapping[str, Any]]
) -> torch.Tensor:
    """The preprocessed ``"image"`` of one datalist record, as a float32 tensor without the batch dimension.

    Raises:
        RuntimeError: naming the subject and its first file when preprocessing fails.
    """
    try:
        return torch.as_tensor(preprocessing(dict(record))["image"]).float()
    except Exception as error:
        first = (record.get("image") or ["?"])[0]
        raise RuntimeError(
            f"Subject {record.get('subject')!r} ({first}): the bundle preprocessing failed: {error}. "
            "Check the files with `medkd3d check-data`."
        ) from error


class NetworkInputRecorder:
    """Stand-in network that records the batches an inferer feeds it and returns zero logits.

    Args:
        num_classes: width of the returned logits (inferers may reshape them).
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.batches: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.batches.append(x.detach().cpu())
        return torch.zeros(x.shape[0], self.num_classes, dtype=x.dtype)


def network_inputs(
    record: Mapping[str, Any],
    preprocessing: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    inferer: Callable[..., Any],
    num_classes: int,
) -> np.ndarray:
    """The network input(s) the bundle's inferer produces for one subject, as one float32 batch.

    Args:
        record: a datalist record.
        preprocessing: the bundle's inference preprocessing.
        inferer: the bundle's inferer.
        num_classes: number of classes of the network.

    Returns:
        ``[N, *input_shape]`` float32: ``N = 1`` for a network that takes a whole subject (a 3D volume
        ``[4, X, Y, Z]``, or the 2.5D bundle's ``[S, 4*K, H, W]`` stacks), ``N = S`` for a single-stack 2.5D network
        run by :class:`~medkd3d.engines.SliceStackInferer` (input ``[4*K, H, W]``).

    Raises:
        RuntimeError: naming the subject and the first file when preprocessing fails.
    """
    image = preprocess_image(record, preprocessing)
    recorder = NetworkInputRecorder(num_classes)
    with torch.no_grad():
        inferer(image.unsqueeze(0), recorder)
    return torch.cat(recorder.batches).numpy().astype(np.float32, copy=False)


class CalibrationBatches:
    """Fixed-size batches of preprocessed network inputs, for TensorRT INT8 calibration.

    It needs neither TensorRT nor a GPU: the calibrator (:func:`medkd3d.export.tensorrt.make_entropy_calibrator`)
    only copies what this iterator yields to the device. Subjects are read lazily, one at a time; their
    network inputs are concatenated (a 2.5D subject gives several) and cut into batches of ``batch_size``;
    a last incomplete batch is dropped, as TensorRT calibrates with one batch shape.

    Args:
        records: datalist records (see :func:`load_records`).
        preprocessing: the bundle's inference preprocessing.
        inferer: the bundle's inferer.
        num_classes: number of classes of the network.
        batch_size: samples per batch (the ``opt`` batch of the engine's optimisation profile).
        max_batches: stop after this many batches (``None``: use every subject).
    """

    def __init__(
        self,
        records: Sequence[Mapping[str, Any]],
        preprocessing: Callable[[Mapping[str, Any]], Mapping[str, Any]],
        inferer: Callable[..., Any],
        num_classes: int,
        batch_size: int = 1,
        max_batches: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        if not records:
            raise ValueError(
                "INT8 calibration needs at least one subject; pass --calib-data with a non-empty datalist."
            )
        self.records = list(records)
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.max_batches = max_batches

    @classmethod
    def from_datalist(
        cls, source: str | os.PathLike, deployment: Any, batch_size: int = 1, max_batches: int | None = None
    ) -> CalibrationBatches:
        """Batches from a datalist JSON or a dataset folder with the preprocessing of a deployment config.

        Args:
            source: datalist JSON or dataset folder.
            deployment: a :class:`~medkd3d.export.deployment.DeploymentConfig`.
            batch_size: samples per batch.
            max_batches: optional limit.
        """
        return cls(
            load_records(source), deployment.build_preprocessing(), deployment.build_inferer(),
            len(deployment.class_names), batch_size, max_batches,
        )  # fmt: skip

    def __iter__(self) -> Iterator[np.ndarray]:
        pending: list[np.ndarray] = []
        count = 0
        emitted = 0
        for record in self.records:
            for sample in network_inputs(record, self.preprocessing, self.inferer, self.num_classes):
                pending.append(sample)
                count += 1
                if len(pending) == self.batch_size:
                    yield np.ascontiguousarray(np.stack(pending))
                    pending = []
                    emitted += 1
                    if self.max_batches is not None and emitted >= self.max_batches:
                        return
        if emitted == 0:
            raise ValueError(
                f"INT8 calibration got {count} network inputs from {len(self.records)} subjects, fewer than one batch "
                f"of {self.batch_size}; add subjects to the calibration datalist or lower the batch size."
            )
        if pending:
            logger.info(
                "Calibration: dropped the last %d inputs (an incomplete batch of %d).", len(pending), self.batch_size
            )
