"""Transform pipelines for 3D volumes, 2.5D slice stacks and 2D slices of multi-modal brain MRI.

Every builder returns a :class:`monai.transforms.Compose` over records of a medkd3d datalist
(``{"subject", "image": [t1, t1ce, t2, flair], "seg", "label", ...}``) and shares one deterministic
preprocessing prefix (:func:`preprocess_transforms`):

1. drop ``None`` fields (``"seg": null``, ``"label": null``), load the four modalities as the channels of one
   image in datalist order (T1, T1ce, T2, FLAIR) with the selected reader, and optionally the segmentation
   as ``[1, X, Y, Z]`` uint8;
2. crop to the brain foreground (voxels nonzero in any modality) - before anything else, so every later step,
   the interpolations included, only touches the brain's bounding box;
3. orient to RAS and convert to float32;
4. optionally resample to ``pixdim``;
5. bring the volume to ``spatial_size`` (see ``resize``);
6. z-score every channel over its nonzero (brain) voxels;
7. make the label an int64 tensor.

The random training augmentations come strictly after this prefix, so MONAI's ``CacheDataset`` and
``PersistentDataset`` (which cache up to the first randomizable transform) store exactly the preprocessed
volume and redraw the augmentations every epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import ImageReader
from monai.transforms import (
    Compose,
    CropForegroundd,
    DeleteItemsd,
    EnsureTyped,
    LoadImaged,
    Orientationd,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    ResizeWithPadOrCropd,
    Spacingd,
    Transform,
)

from medkd3d.data.discovery import MODALITIES
from medkd3d.data.intensity import NormalizeNonzerod
from medkd3d.data.readers import DEFAULT_READER, resolve_reader
from medkd3d.data.transforms import (
    DETERMINISTIC_SAMPLINGS,
    RANDOM_SAMPLINGS,
    DropNoned,
    RandSliceStackd,
    SliceStackd,
    brain_mask,
)

__all__ = [
    "RESIZE_MODES",
    "intensity_augmentations",
    "network_input_shape",
    "preprocess_transforms",
    "slice_stack_transforms",
    "slice_transforms",
    "spatial_augmentations",
    "volume_transforms",
]

#: How :func:`preprocess_transforms` brings the cropped brain to ``spatial_size``.
RESIZE_MODES = ("fit", "stretch", "pad_crop")


def preprocess_transforms(
    spatial_size: Sequence[int] = (128, 128, 128),
    reader: str | type[ImageReader] | ImageReader = DEFAULT_READER,
    pixdim: Sequence[float] | None = None,
    resize: str = "fit",
    load_seg: bool = False,
    image_key: str = "image",
    seg_key: str = "seg",
    label_key: str = "label",
) -> list[Transform]:
    """The deterministic preprocessing prefix shared by every pipeline (no random transform inside).

    Args:
        spatial_size: output ``(X, Y, Z)`` of the preprocessed volume.
        reader: MONAI reader for the NIfTI files: ``"FastNibabelReader"`` (default; MONAI's ``NibabelReader``
            reading ``.nii.gz`` in one ISA-L or zlib decompression, bit-identical arrays and metadata, see
            :mod:`medkd3d.data.readers`), ``"NibabelReader"`` or ``"ITKReader"`` (or a reader class/instance);
            all give the same array after RAS orientation.
        pixdim: target voxel spacing in mm for resampling (``Spacingd``); ``None`` keeps the native spacing
            (BraTS is already 1 mm isotropic).
        resize: how the cropped brain reaches ``spatial_size``:
            ``"fit"`` (default) scales it, keeping its aspect ratio, until its longest side equals
            ``max(spatial_size)``, then zero-pads the other sides (and centre-crops any side longer than its
            target, which only happens for non-cubic sizes) - the whole brain stays in view, undistorted;
            ``"stretch"`` scales every axis independently to ``spatial_size`` (fills the volume, distorts);
            ``"pad_crop"`` keeps the native resolution and zero-pads or centre-crops each side (no
            interpolation, but may cut off brain when the crop is smaller than the brain).
        load_seg: also load ``seg_key`` as ``[1, X, Y, Z]`` uint8 with nearest-neighbour interpolation; records
            whose segmentation is ``None`` pass without one.
        image_key: key of the list of modality paths.
        seg_key: key of the segmentation path.
        label_key: key of the integer class index (left out of records where it is ``None``).

    Returns:
        The list of transforms, ready for ``Compose``.

    Raises:
        ValueError: for an unknown ``resize`` mode.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    spatial_size = tuple(int(s) for s in spatial_size)
    reader = resolve_reader(reader)
    keys = [image_key, seg_key] if load_seg else [image_key]
    modes = ["trilinear", "nearest"][: len(keys)]
    transforms: list[Transform] = [
        DropNoned(keys=(seg_key, label_key, "class_name")),
        # A list of files is read as the channels of one image, in list order (T1, T1ce, T2, FLAIR). The
        # stored type (int16 for BraTS) is kept until the crop: the full-size steps move half the bytes.
        LoadImaged(image_key, reader=reader, dtype=None, image_only=True, ensure_channel_first=True),
    ]
    if load_seg:
        transforms.append(
            LoadImaged(
                seg_key,
                reader=reader,
                dtype=np.uint8,
                image_only=True,
                ensure_channel_first=True,
                allow_missing_keys=True,
            )
        )
    transforms += [
        # Cropping commutes with the axis flips/permutations of the reorientation; cropping first means the
        # full-size volume is traversed only to find the brain.
        CropForegroundd(
            keys,
            source_key=image_key,
            select_fn=brain_mask,
            allow_smaller=True,
            start_coord_key=None,
            end_coord_key=None,
            allow_missing_keys=True,
        ),
        Orientationd(keys, axcodes="RAS", labels=None, allow_missing_keys=True),
        EnsureTyped(image_key, dtype=torch.float32),
    ]
    if pixdim is not None:
        transforms.append(
            Spacingd(
                keys,
                pixdim=pixdim,
                mode=["bilinear", "nearest"][: len(keys)],
                dtype=np.float32,
                allow_missing_keys=True,
            )
        )
    if resize == "fit":
        transforms += [
            Resized(keys, spatial_size=max(spatial_size), size_mode="longest", mode=modes, allow_missing_keys=True),
            ResizeWithPadOrCropd(keys, spatial_size=spatial_size, allow_missing_keys=True),
        ]
    elif resize == "stretch":
        transforms.append(Resized(keys, spatial_size=spatial_size, mode=modes, allow_missing_keys=True))
    else:
        transforms.append(ResizeWithPadOrCropd(keys, spatial_size=spatial_size, allow_missing_keys=True))
    transforms += [
        # Last, so the statistics ignore the zero padding and interpolation cannot smear them. The output of
        # NormalizeIntensityd(nonzero=True, channel_wise=True), bit for bit, at a fraction of its cost.
        NormalizeNonzerod(image_key),
        EnsureTyped(label_key, dtype=torch.int64, track_meta=False, allow_missing_keys=True),
    ]
    if load_seg:
        # resampling made it float; uint8 keeps a cached segmentation at a quarter of the memory
        transforms.append(EnsureTyped(seg_key, dtype=torch.uint8, allow_missing_keys=True))
    return transforms


def spatial_augmentations(keys: Sequence[str], modes: Sequence[str] = ("bilinear", "nearest")) -> list[Transform]:
    """Random flips along each axis (p=0.5 each) and a small random affine (p=0.5: ±10° rotation, ±10% scale).

    Args:
        keys: the image key, then optionally the segmentation key (absent keys are skipped).
        modes: interpolation per key of ``keys``.

    Returns:
        The list of random spatial transforms, sharing one random draw across ``keys``.
    """
    keys = list(keys)
    modes = list(modes)[: len(keys)]
    return [
        *(RandFlipd(keys, prob=0.5, spatial_axis=axis, allow_missing_keys=True) for axis in range(3)),
        RandAffined(
            keys,
            prob=0.5,
            rotate_range=(np.deg2rad(10.0),) * 3,
            scale_range=(0.1,) * 3,
            mode=modes,
            padding_mode="zeros",
            allow_missing_keys=True,
        ),
    ]


def intensity_augmentations(keys: Sequence[str]) -> list[Transform]:
    """Random intensity scaling (factor in 1 ± 0.1) and shift (± 0.1 of the z-scored intensity).

    They come after slice selection, because they make the background nonzero. One random draw is applied to
    all ``keys``, so a kept ``"volume"`` gets the same intensities as its slices.
    """
    keys = list(keys)
    return [
        RandScaleIntensityd(keys, factors=0.1, prob=1.0, allow_missing_keys=True),
        RandShiftIntensityd(keys, offsets=0.1, prob=1.0, allow_missing_keys=True),
    ]


def volume_transforms(
    spatial_size: Sequence[int] = (128, 128, 128),
    train: bool = False,
    reader: str | type[ImageReader] | ImageReader = DEFAULT_READER,
    pixdim: Sequence[float] | None = None,
    resize: str = "fit",
    load_seg: bool = False,
) -> Compose:
    """3D pipeline: a record becomes ``{"image": [4, X, Y, Z] float32, "label": int64, "subject": str, ...}``.

    Args:
        spatial_size: output ``(X, Y, Z)``.
        train: append the random augmentations (flips, small affine, intensity scale/shift).
        reader: ``"FastNibabelReader"`` (default), ``"NibabelReader"`` or ``"ITKReader"``.
        pixdim: optional resampling spacing in mm.
        resize: ``"fit"``, ``"stretch"`` or ``"pad_crop"``, see :func:`preprocess_transforms`.
        load_seg: also output ``"seg"``: ``[1, X, Y, Z]`` uint8 BraTS labels, given the same spatial transforms
            (nearest-neighbour) as the image.

    Returns:
        The composed pipeline; its deterministic prefix is :func:`preprocess_transforms`.
    """
    transforms = preprocess_transforms(spatial_size, reader, pixdim, resize, load_seg)
    if train:
        # an unloaded "seg" is still the file path of the record: only augment it once it is an image
        transforms += spatial_augmentations(["image", "seg"] if load_seg else ["image"])
        transforms += intensity_augmentations(["image"])
        if load_seg:
            transforms.append(EnsureTyped("seg", dtype=torch.uint8, allow_missing_keys=True))
    return Compose(transforms)


def slice_stack_transforms(
    spatial_size: Sequence[int] = (128, 128, 128),
    num_slices: int = 3,
    axis: int = 2,
    num_stacks: int | None = None,
    sampling: str | None = None,
    train: bool = False,
    keep_volume: bool = False,
    reader: str | type[ImageReader] | ImageReader = DEFAULT_READER,
    pixdim: Sequence[float] | None = None,
    resize: str = "fit",
) -> Compose:
    """2.5D pipeline: the 3D preprocessing, then ``num_slices`` adjacent slices stacked as ``4*K`` channels.

    The image becomes ``[4*K, H, W]`` (or ``[S, 4*K, H, W]`` with ``num_stacks=S``), channel ``m*K + k``
    being modality ``m`` of slice ``k``; ``H, W`` are the two axes of ``spatial_size`` other than ``axis``.
    ``"slice_index"`` holds the centre(s) as fractions of the depth, and ``keep_volume=True`` adds the
    ``[4, X, Y, Z]`` volume the slices came from as ``"volume"`` (for a 3D teacher).

    Slice selection (``sampling``): the random ``"random_foreground"`` (default when ``train``: one centre drawn
    in each of ``S`` equal bins of the brain's extent), ``"tumour"`` (slices showing tumour in the segmentation,
    which is then loaded and dropped after sampling; subjects without one fall back to brain slices) and
    ``"uniform"``; or the deterministic, segmentation-free ``"foreground"`` (default for inference: the
    midpoints of the same ``S`` bins), ``"largest_area"`` and ``"even"``. The two defaults give training and
    evaluation the same stack distribution - jittered in training, fixed in evaluation - and neither needs a
    segmentation. See :class:`SliceStackd` and :class:`RandSliceStackd`.

    With ``train=True``, flips and the small affine act on the 3D volume (and segmentation) before the slices
    are chosen, and the intensity augmentations on the slices (and the kept volume) after.

    Args:
        spatial_size: ``(X, Y, Z)`` of the preprocessed volume.
        num_slices: ``K`` adjacent slices per stack.
        axis: spatial axis to slice along (2 = axial, as the volume is in RAS).
        num_stacks: ``None`` for one stack, ``S`` for ``S`` stacks.
        sampling: slice selection, see above; ``None`` picks ``"random_foreground"`` when ``train`` else
            ``"foreground"``.
        train: add the random augmentations.
        keep_volume: keep the preprocessed (and augmented) 3D volume under ``"volume"``.
        reader: ``"FastNibabelReader"`` (default), ``"NibabelReader"`` or ``"ITKReader"``.
        pixdim: optional resampling spacing in mm.
        resize: ``"fit"``, ``"stretch"`` or ``"pad_crop"``, see :func:`preprocess_transforms`.

    Returns:
        The composed pipeline.

    Raises:
        ValueError: for an unknown sampling or invalid slice arguments.
    """
    if sampling is None:
        # the segmentation-free pair: the random stacks are a jittered version of the evaluation stacks
        sampling = "random_foreground" if train else "foreground"
    if sampling not in DETERMINISTIC_SAMPLINGS + RANDOM_SAMPLINGS:
        raise ValueError(
            f"unknown sampling {sampling!r}: random ones are {RANDOM_SAMPLINGS}, "
            f"segmentation-free deterministic ones are {DETERMINISTIC_SAMPLINGS}"
        )
    load_seg = sampling == "tumour"
    volume_key = "volume" if keep_volume else None
    if sampling in RANDOM_SAMPLINGS:
        select = RandSliceStackd("image", num_slices, axis, num_stacks, sampling, seg_key="seg", volume_key=volume_key)
    else:
        select = SliceStackd("image", num_slices, axis, num_stacks, sampling, volume_key=volume_key)
    transforms = preprocess_transforms(spatial_size, reader, pixdim, resize, load_seg)
    if train:
        transforms += spatial_augmentations(["image", "seg"] if load_seg else ["image"])
    transforms.append(select)
    if load_seg:
        transforms.append(DeleteItemsd("seg"))
    if train:
        transforms += intensity_augmentations(["image", "volume"])
    return Compose(transforms)


def slice_transforms(spatial_size: Sequence[int] = (128, 128, 128), **kwargs) -> Compose:
    """2D single-slice pipeline (for slice-vs-volume ablations): :func:`slice_stack_transforms` with ``K = 1``.

    The image is ``[4, H, W]`` (or ``[S, 4, H, W]`` with ``num_stacks=S``); every other argument of
    :func:`slice_stack_transforms` is accepted.
    """
    if kwargs.pop("num_slices", 1) != 1:
        raise ValueError("slice_transforms takes one slice; use slice_stack_transforms for num_slices > 1")
    return slice_stack_transforms(spatial_size, num_slices=1, **kwargs)


def network_input_shape(
    spatial_size: Sequence[int],
    num_slices: int | None = None,
    slice_axis: int = 2,
    num_stacks: int | None = None,
    stacks_as_batch: bool = False,
    channels: int = len(MODALITIES),
) -> tuple[tuple[int, ...], int]:
    """The shape of one network input (no batch axis) that these pipelines make, and the inputs per subject.

    The one place that derives a model's input from its preprocessing settings (the bundles' ``spatial_size``,
    ``num_slices``, ``slice_axis``, ``num_stacks``), so reports, exports and benchmarks agree with the pipelines:

    - a volume (``num_slices=None``, :func:`volume_transforms`): ``[C, X, Y, Z]``, one per subject;
    - one slice stack (:func:`slice_stack_transforms`, ``num_stacks=None``): ``[C*K, H, W]``, one per subject,
      ``H, W`` being the axes of ``spatial_size`` other than ``slice_axis``;
    - ``S`` stacks: ``[S, C*K, H, W]`` once per subject for a network that reads a subject's stacks together (the
      multiple-instance 2.5D student), or ``[C*K, H, W]`` ``S`` times when the inferer feeds the stacks as a batch
      (``stacks_as_batch``, :class:`~medkd3d.engines.SliceStackInferer` with a single-stack network).

    Args:
        spatial_size: ``(X, Y, Z)`` of the preprocessed volume.
        num_slices: ``K`` adjacent slices per stack; ``None`` for a volume network.
        slice_axis: spatial axis the stacks are sliced along (2.5D only).
        num_stacks: stacks per subject ``S``; ``None`` for one stack (2.5D only).
        stacks_as_batch: the subject's ``S`` stacks are a batch of single-stack inputs.
        channels: image channels ``C`` (the four modalities).

    Returns:
        ``(input_shape, inputs_per_subject)``, e.g. ``((4, 128, 128, 128), 1)`` or ``((12, 128, 128), 8)``.

    Raises:
        ValueError: for a ``spatial_size`` that is not 3D, a ``slice_axis`` outside ``0..2`` or a count below 1.
    """
    size = tuple(int(n) for n in spatial_size)
    if len(size) != 3:
        raise ValueError(f"spatial_size must be (X, Y, Z), got {tuple(spatial_size)}")
    counts = {"channels": channels, "num_slices": num_slices, "num_stacks": num_stacks}
    too_small = {name: value for name, value in counts.items() if value is not None and int(value) < 1}
    if too_small:
        raise ValueError(f"{too_small} must be at least 1")
    if num_slices is None:
        return (int(channels), *size), 1
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be a spatial axis 0, 1 or 2 of (X, Y, Z), got {slice_axis}")
    stack = (int(channels) * int(num_slices), *(n for axis, n in enumerate(size) if axis != slice_axis))
    if num_stacks is None:
        return stack, 1
    if stacks_as_batch:
        return stack, int(num_stacks)
    return (int(num_stacks), *stack), 1
