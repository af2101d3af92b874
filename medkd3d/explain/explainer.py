"""Explain one subject end to end: preprocess, compute the map, bring it back onto the subject's original image grid.

The map is computed where the network works, in the *preprocessed* space (RAS, cropped to the brain, resized,
z-scored; or slice stacks of it for 2.5D networks), normalised to ``[0, 1]`` there (1 = most important), and then
resampled onto the original image grid by MONAI's inverse of the invertible preprocessing transforms
(``monai.transforms.Invertd``: orientation, foreground crop, resampling, resizing, padding). So the saved map has
the shape and affine of the input NIfTI files and overlays them directly in any viewer; voxels outside the brain
crop are 0.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd
from torch import nn

from medkd3d.explain.cam import compute_map, default_target_layer, normalize_map
from medkd3d.explain.slices import place_slice_maps, slice_centres, split_slice_pipeline, with_num_stacks

__all__ = ["ExplainModel", "Explanation", "VolumeExplanation", "explain_subject", "explain_volume"]

logger = logging.getLogger(__name__)


@dataclass
class ExplainModel:
    """A trained classifier with the preprocessing it was trained with.

    Args:
        network: the classifier (logits ``[B, num_classes]``).
        preprocessing: the deterministic inference pipeline of a datalist record (``volume_transforms`` or
            ``slice_stack_transforms(train=False)``).
        class_names: names of the classes, in logit order.
        name: label used in file names and reports (e.g. the bundle name).
        stacks_as_batch: for 2.5D pipelines with several stacks: the network classifies one stack at a time and the
            subject's logits are the mean over stacks (``SliceStackInferer``). ``False`` means a multi-slice
            network that takes all stacks ``[B, S, C, H, W]`` at once. Single-stack pipelines ignore it.
    """

    network: nn.Module
    preprocessing: Compose
    class_names: list[str] = field(default_factory=lambda: ["LGG", "HGG"])
    name: str = "model"
    stacks_as_batch: bool = False


@dataclass
class Explanation:
    """One subject's explanation, on the original image grid of its input files.

    Attributes:
        subject: subject id.
        model: :attr:`ExplainModel.name`.
        method: ``"gradcam"``, ``"scorecam"`` or ``"occlusion"``.
        layer: the CAM layer (``None`` for occlusion).
        target_class: the explained class index.
        probabilities: the subject-level class probabilities.
        map: ``[X, Y, Z]`` float32 in ``[0, 1]``, 1 = most important, on the grid of ``image_files``.
        coverage: ``[X, Y, Z]`` bool, where the map is defined: the part of the image the network saw (the brain's
            bounding box), for 2.5D models only the explained slices of it.
        affine: 4x4 voxel-to-world matrix of the input files.
        image_files: the four modality files (T1, T1ce, T2, FLAIR).
        class_names: class names, in logit order.
        slice_axis: slicing axis of a 2.5D model in the preprocessed volume (``None`` for 3D).
        slice_centres: explained slice centres in the preprocessed volume (``None`` for 3D).
        preprocessed_shape: spatial shape the network's input was cut from.
    """

    subject: str
    model: str
    method: str
    layer: str | None
    target_class: int
    probabilities: list[float]
    map: np.ndarray
    coverage: np.ndarray
    affine: np.ndarray
    image_files: list[str]
    class_names: list[str]
    slice_axis: int | None = None
    slice_centres: list[int] | None = None
    preprocessed_shape: tuple[int, ...] = ()

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (everything but the arrays)."""
        return {
            "subject": self.subject,
            "model": self.model,
            "method": self.method,
            "layer": self.layer,
            "target_class": self.target_class,
            "target_class_name": self.class_names[self.target_class]
            if self.target_class < len(self.class_names)
            else None,
            "probabilities": dict(zip(self.class_names, self.probabilities)),
            "predicted_class_name": self.class_names[int(np.argmax(self.probabilities))],
            "space": "original image grid (inverse of the preprocessing)",
            "shape": list(self.map.shape),
            "image_files": list(self.image_files),
            "preprocessed_shape": list(self.preprocessed_shape),
            "slice_axis": self.slice_axis,
            "slice_centres": self.slice_centres,
            "coverage_fraction": float(self.coverage.mean()),
            "values": "[0, 1], 1 = most important; 0 where no map exists (see coverage)",
        }


def _preprocess(preprocessing: Compose, record: Mapping[str, Any]) -> dict[str, Any]:
    subject = record.get("subject", "?")
    try:
        return preprocessing(dict(record))
    except Exception as err:
        raise RuntimeError(
            f"subject {subject!r}: preprocessing the files {record.get('image')} failed ({err}); check them with "
            "`medkd3d check-data` and that they are T1, T1ce, T2, FLAIR NIfTI volumes of the same grid"
        ) from err


def _input_affine(record: Mapping[str, Any], shape: Sequence[int]) -> np.ndarray:
    """Affine of the first modality file, checked against the inverted map's shape."""
    first = record["image"][0]
    header = nib.load(first)
    if tuple(header.shape[:3]) != tuple(shape):
        raise RuntimeError(
            f"subject {record.get('subject', '?')!r}: the map inverted to the original grid has shape {tuple(shape)} "
            f"but {first} has shape {tuple(header.shape[:3])}; the preprocessing contains a transform MONAI cannot "
            "invert - use the medkd3d.data pipelines"
        )
    return header.affine


def _to_original_grid(
    prefix: Compose, volume: MetaTensor, channels: torch.Tensor, record: Mapping[str, Any]
) -> torch.Tensor:
    """Resample preprocessed-space ``[N, X, Y, Z]`` maps onto the input files' grid with MONAI's inverse."""
    cam = MetaTensor(
        channels.detach().float().cpu(), meta=dict(volume.meta), applied_operations=list(volume.applied_operations)
    )
    try:
        data = Invertd(keys="cam", transform=prefix, orig_keys="image", nearest_interp=False)(
            {"image": volume, "cam": cam}
        )
    except Exception as err:
        raise RuntimeError(
            f"subject {record.get('subject', '?')!r}: cannot invert the preprocessing to put the map back on the grid "
            f"of {record['image'][0]} ({err})"
        ) from err
    return torch.as_tensor(data["cam"]).as_subclass(torch.Tensor)


@dataclass
class VolumeExplanation:
    """An explanation in the preprocessed space (what :func:`explain_volume` returns).

    Attributes:
        map: ``[X, Y, Z]`` float32 tensor in ``[0, 1]``, 1 = most important.
        coverage: ``[X, Y, Z]`` bool tensor, where the map is defined.
        target_class: the explained class.
        probabilities: subject-level class probabilities.
        layer: the CAM layer (``None`` for occlusion).
        slice_axis: slicing axis of a 2.5D model (``None`` for 3D).
        slice_centres: explained slice centres (``None`` for 3D).
    """

    map: torch.Tensor
    coverage: torch.Tensor
    target_class: int
    probabilities: list[float]
    layer: str | None
    slice_axis: int | None = None
    slice_centres: list[int] | None = None


def explain_volume(
    model: ExplainModel,
    volume: torch.Tensor,
    method: str = "gradcam",
    target_class: int | None = None,
    layer: str | None = None,
    num_stacks: int | None = None,
    batch_size: int = 16,
    mask_size: int | Sequence[int] = 16,
    overlap: float = 0.5,
    device: str | torch.device = "cpu",
    progress: bool = False,
    subject: str = "?",
) -> VolumeExplanation:
    """Explain a model's prediction for one preprocessed ``[C, X, Y, Z]`` volume, in that volume's space.

    3D networks are explained on the volume. 2.5D networks are explained on the slice stacks that the slice
    selection of ``model.preprocessing`` takes from it (``num_stacks`` overrides their number, e.g. to cover more
    of the volume): single-stack networks stack by stack, each stack's map explaining ``target_class`` from that
    stack; multi-slice networks on all stacks at once. Per-stack maps are placed on the slices their stacks were
    cut from (see :mod:`medkd3d.explain.slices`) and normalised together, so their values are comparable across
    slices.

    Args:
        model: the network and its preprocessing (only the slice selection and what follows it are applied).
        volume: the preprocessed volume.
        method: ``"gradcam"``, ``"scorecam"`` or ``"occlusion"``.
        target_class: class to explain; ``None`` explains the predicted class.
        layer: CAM layer (module path); ``None`` picks :func:`~medkd3d.explain.cam.default_target_layer`.
        num_stacks: number of slice stacks for 2.5D models (``None``: the pipeline's).
        batch_size: inputs per forward pass (Score-CAM masks, occlusion windows).
        mask_size: occlusion window (voxels per axis).
        overlap: occlusion window overlap.
        device: where the network runs (it is moved there and left in eval mode).
        progress: progress bar for occlusion.
        subject: subject id for messages.

    Returns:
        The :class:`VolumeExplanation`.

    Raises:
        ValueError: for a target class outside the model's classes, or an unsuitable layer.
    """
    network = model.network.to(device).eval()
    _, slicer, suffix = split_slice_pipeline(model.preprocessing)
    spatial = tuple(volume.shape[1:])
    plain_volume = torch.as_tensor(volume).as_subclass(torch.Tensor)
    centres: list[int] | None = None
    stacked = stacks_as_batch = False
    if slicer is None:
        x = plain_volume[None].to(device)
    else:
        stacked = slicer.num_stacks is not None and not model.stacks_as_batch
        stacks_as_batch = not stacked
        if num_stacks is not None:
            slicer = with_num_stacks(slicer, num_stacks)
        sliced = suffix(slicer({"image": plain_volume, "subject": subject}))
        stacks = torch.as_tensor(sliced["image"]).as_subclass(torch.Tensor)
        stacks = stacks[None] if stacks.ndim == 3 else stacks  # [S, C, H, W]
        centres = slice_centres(sliced["slice_index"], spatial[slicer.axis])
        x = (stacks[None] if stacked else stacks).to(device)

    with torch.no_grad():
        logits = network(x)
    # a single-stack network's subject-level logits are the mean over stacks, as SliceStackInferer computes them
    probabilities = (logits.mean(dim=0) if stacks_as_batch else logits[0]).softmax(dim=0).cpu()
    num_classes = probabilities.numel()
    if target_class is None:
        target_class = int(probabilities.argmax())
    elif not 0 <= target_class < num_classes:
        raise ValueError(
            f"subject {subject!r}: target class {target_class} does not exist; {model.name} has {num_classes} classes "
            f"({', '.join(model.class_names)}), so use 0..{num_classes - 1}"
        )
    if method == "occlusion":
        layer = None
    elif layer is None:
        layer = default_target_layer(network, x, spatial_dims=3 if slicer is None else 2)
    classes = torch.full((x.shape[0],), target_class, dtype=torch.long, device=x.device)
    raw = compute_map(
        method, network, x, classes, layer=layer, stacked=stacked, batch_size=batch_size, mask_size=mask_size,
        overlap=overlap, progress=progress,
    ).cpu()  # fmt: skip
    if slicer is None:
        cam, coverage = raw[0], torch.ones(spatial, dtype=torch.bool)
    else:
        maps = raw.reshape(-1, *raw.shape[-2:])
        cam, coverage = place_slice_maps(maps, centres, slicer.axis, spatial, slicer.num_slices)
    logger.info(
        "%s: %s of %s for class %s (p=%.3f)%s", subject, method, model.name, target_class,
        float(probabilities[target_class]), f" at layer {layer}" if layer else "",
    )  # fmt: skip
    return VolumeExplanation(
        map=normalize_map(cam[None], coverage[None])[0],
        coverage=coverage,
        target_class=target_class,
        probabilities=[float(p) for p in probabilities],
        layer=layer,
        slice_axis=None if slicer is None else slicer.axis,
        slice_centres=centres,
    )


def explain_subject(
    model: ExplainModel,
    record: Mapping[str, Any],
    method: str = "gradcam",
    target_class: int | None = None,
    layer: str | None = None,
    **kwargs: Any,
) -> Explanation:
    """Explain a model's prediction for one subject, on the grid of the subject's input files.

    The record is preprocessed with the 3D part of ``model.preprocessing``, explained by :func:`explain_volume`,
    and the map and its coverage are resampled onto the input grid by MONAI's inverse of the preprocessing.

    Args:
        model: the network and its preprocessing.
        record: a datalist record (``subject``, ``image`` = [T1, T1ce, T2, FLAIR] paths).
        method: ``"gradcam"``, ``"scorecam"`` or ``"occlusion"``.
        target_class: class to explain; ``None`` explains the predicted class.
        layer: CAM layer (module path); ``None`` picks the default.
        kwargs: further arguments of :func:`explain_volume` (``num_stacks``, ``batch_size``, ``mask_size``,
            ``overlap``, ``device``, ``progress``).

    Returns:
        The :class:`Explanation`.

    Raises:
        ValueError: for a target class outside the model's classes, or an unsuitable layer.
        RuntimeError: if the subject's files cannot be preprocessed or the map cannot be inverted.
    """
    subject = str(record.get("subject", "?"))
    prefix, _, _ = split_slice_pipeline(model.preprocessing)
    volume: MetaTensor = _preprocess(prefix, record)["image"]
    result = explain_volume(model, volume, method, target_class, layer, subject=subject, **kwargs)
    inverted = _to_original_grid(prefix, volume, torch.stack([result.map, result.coverage.float()]), record)
    original_map = inverted[0].clamp(0, 1).numpy().astype(np.float32)
    return Explanation(
        subject=subject,
        model=model.name,
        method=method,
        layer=result.layer,
        target_class=result.target_class,
        probabilities=result.probabilities,
        map=original_map,
        coverage=inverted[1].numpy() > 0.5,
        affine=_input_affine(record, original_map.shape),
        image_files=[str(p) for p in record["image"]],
        class_names=list(model.class_names),
        slice_axis=result.slice_axis,
        slice_centres=result.slice_centres,
        preprocessed_shape=tuple(volume.shape[1:]),
    )
