"""Teacher soft-target cache: the seed's "soft target generation" step, run once instead of every iteration.

:func:`precompute_soft_targets` runs the frozen teacher(s) over a data loader and stores the raw logits per
subject in a :class:`SoftTargetCache`, saved to disk atomically. The ``DistillationTrainer`` then looks the
logits up by ``batch["subject"]`` instead of running the teacher. Logits (not probabilities) are stored so the
distillation loss still applies its own temperature.

Caching is only valid when the teacher's input for a subject is the same every epoch. :func:`find_random_transforms`
inspects a dataset's MONAI transform chain for random transforms that can reach the teacher's input key; the
trainer refuses cached targets when it finds any.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.transforms import Compose, MapTransform
from monai.transforms.traits import RandomizableTrait
from torch import nn
from tqdm import tqdm

from medkd3d.utils import atomic_path

__all__ = ["SoftTargetCache", "find_random_transforms", "precompute_soft_targets", "teacher_fingerprint"]

logger = logging.getLogger(__name__)

_FORMAT = "medkd3d.soft_targets"
_VERSION = 1


def as_teacher_list(teacher: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module] | None) -> list[nn.Module]:
    """Teachers as a list: one module, a sequence or ``nn.ModuleList``, or a dict/``nn.ModuleDict`` (in its order)."""
    if teacher is None:
        return []
    if isinstance(teacher, nn.Module) and not isinstance(teacher, (nn.ModuleList, nn.ModuleDict)):
        return [teacher]
    return list(teacher.values()) if isinstance(teacher, Mapping | nn.ModuleDict) else list(teacher)


def teacher_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and values): identifies the weights a cache came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class SoftTargetCache:
    """Teacher logits keyed by subject id.

    Args:
        logits: subject id -> logits ``[num_teachers, num_classes]`` (or ``[num_classes]`` for one teacher).
        metadata: free-form description saved with the cache (teacher fingerprints, image key, ...).

    Raises:
        ValueError: if the cache is empty or the entries disagree in shape.
    """

    def __init__(self, logits: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> None:
        if not logits:
            raise ValueError("A SoftTargetCache needs the logits of at least one subject.")
        entries = {  # plain tensors: a MetaTensor would not load with torch.load(weights_only=True)
            str(subject): torch.as_tensor(value, dtype=torch.float32).detach().cpu().as_subclass(torch.Tensor)
            for subject, value in logits.items()
        }
        entries = {subject: value.unsqueeze(0) if value.ndim == 1 else value for subject, value in entries.items()}
        shapes = {tuple(value.shape) for value in entries.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(
                f"Soft targets must all have shape [num_teachers, num_classes], got shapes {sorted(shapes)}."
            )
        self.subjects = list(entries)
        self._index = {subject: i for i, subject in enumerate(self.subjects)}
        self._logits = torch.stack([entries[subject] for subject in self.subjects])
        self.metadata: dict[str, Any] = dict(metadata or {})

    @property
    def num_teachers(self) -> int:
        return self._logits.shape[1]

    @property
    def num_classes(self) -> int:
        return self._logits.shape[2]

    def __len__(self) -> int:
        return len(self.subjects)

    def __contains__(self, subject: object) -> bool:
        return subject in self._index

    def lookup(self, subjects: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Logits ``[B, num_teachers, num_classes]`` of a batch of subjects.

        Raises:
            KeyError: naming the subjects that are not cached (and where the cache came from).
        """
        if isinstance(subjects, str):
            subjects = [subjects]
        missing = [subject for subject in subjects if subject not in self._index]
        if missing:
            source = self.metadata.get("path", "this cache")
            raise KeyError(
                f"No cached teacher logits for subjects {missing[:5]}{' ...' if len(missing) > 5 else ''} in {source} "
                f"({len(self)} subjects cached). Recompute the cache with precompute_soft_targets() over the training "
                "loader you train with."
            )
        rows = torch.as_tensor([self._index[subject] for subject in subjects])
        return self._logits[rows].to(device)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the cache with ``torch.save``, atomically (temporary file in the same folder, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "subjects": self.subjects,
            "logits": self._logits,
            "metadata": {key: value for key, value in self.metadata.items() if key != "path"},
        }
        with atomic_path(path) as tmp:  # also gives the file a plain file's permissions, not mkstemp's 0o600
            torch.save(payload, tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SoftTargetCache:
        """Read a cache written by :meth:`save`.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if the file is not a medkd3d soft-target cache.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Soft-target cache {path} does not exist; create it with precompute_soft_targets()."
            )
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"Cannot read soft-target cache {path}: {e}") from e
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise ValueError(
                f"{path} is not a medkd3d soft-target cache (no format={_FORMAT!r} entry); "
                "create it with precompute_soft_targets(..., path=...)."
            )
        if payload.get("version") != _VERSION:
            raise ValueError(f"Soft-target cache {path} has version {payload.get('version')}, expected {_VERSION}.")
        logits = dict(zip(payload["subjects"], payload["logits"]))
        return cls(logits, metadata={**payload["metadata"], "path": str(path)})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(subjects={len(self)}, teachers={self.num_teachers}, classes={self.num_classes})"


# ---------------------------------------------------------------------------------------------------------------
# Is the teacher input deterministic?
# ---------------------------------------------------------------------------------------------------------------


def _dataset_transforms(dataset: Any) -> list[Any]:
    """The ``transform`` callables a dataset applies, innermost dataset first (Subset/PatchDataset chains)."""
    found: list[Any] = []
    seen: set[int] = set()
    while dataset is not None and id(dataset) not in seen:
        seen.add(id(dataset))
        if getattr(dataset, "transform", None) is not None:
            found.append(dataset.transform)
        dataset = next(
            (
                inner
                for attr in ("dataset", "data")
                if isinstance(inner := getattr(dataset, attr, None), torch.utils.data.Dataset)
            ),
            None,
        )
    return found[::-1]


def _flatten(transform: Any, chosen_at_random: bool = False) -> list[tuple[Any, bool]]:
    """Leaf transforms of nested ``Compose``s, each flagged when a ``OneOf``/``SomeOf``/``RandomOrder`` picks it."""
    if isinstance(transform, Compose):
        picks = type(transform) is not Compose  # the subclasses choose or reorder their members at random
        return [leaf for t in transform.transforms for leaf in _flatten(t, chosen_at_random or picks)]
    return [(transform, chosen_at_random)]


def _mentions(transform: Any, key: str) -> bool:
    """Whether ``key`` is among a transform's ``keys`` or any other string attribute (e.g. CopyItemsd ``names``)."""
    for value in getattr(transform, "__dict__", {}).values():
        if isinstance(value, str) and value == key:
            return True
        if isinstance(value, (tuple, list)) and any(isinstance(v, str) and v == key for v in value):
            return True
    return False


def find_random_transforms(data: Any, key: str) -> list[str]:
    """Random transforms that can change ``data``'s ``key`` entry, so that cached teacher outputs would be stale.

    A random transform counts when it runs before the first transform that mentions ``key`` (it may have changed
    the data ``key`` is copied from, e.g. a random flip of ``"image"`` before a 2.5D pipeline keeps the volume
    as ``"volume"``), acts on ``key`` (``key`` in its ``keys``), mentions ``key`` after it was created, or has
    no ``keys`` (an array transform, which may act on anything). The transform that first mentions ``key``
    without acting on it creates it from its input (``CopyItemsd``, a random slice sampler keeping the volume);
    its input is covered by the first rule. Members of ``OneOf``/``SomeOf``/``RandomOrder`` count as random.

    Args:
        data: a ``DataLoader``, a dataset (``monai.data.Dataset``, ``CacheDataset``, ``Subset`` ...) or a transform.
        key: the dictionary key the teacher reads.

    Returns:
        Descriptions like ``"#3 RandFlipd(keys=('image',))"``; empty when the input is deterministic.
    """
    dataset = data.dataset if isinstance(data, torch.utils.data.DataLoader) else data
    if isinstance(dataset, torch.utils.data.Dataset):
        transforms = _dataset_transforms(dataset)
    else:  # a transform chain, or plain items (a list of dicts) with nothing to inspect
        transforms = [dataset] if callable(dataset) else []
    steps = [leaf for transform in transforms for leaf in _flatten(transform)]
    first_mention = next((i for i, (t, _) in enumerate(steps) if _mentions(t, key)), 0)
    offending = []
    for i, (transform, chosen_at_random) in enumerate(steps):
        if not (chosen_at_random or isinstance(transform, RandomizableTrait)):
            continue
        keys = tuple(getattr(transform, "keys", None) or ())
        acts_on_key = not isinstance(transform, MapTransform) or key in keys
        if i < first_mention or acts_on_key or (i > first_mention and _mentions(transform, key)):
            offending.append(f"#{i} {type(transform).__name__}" + (f"(keys={keys})" if keys else ""))
    return offending


def check_deterministic_teacher_input(data: Any, key: str, allow_random: bool = False) -> None:
    """Raise (or warn, with ``allow_random``) when random transforms reach the teacher's input ``key``.

    Raises:
        ValueError: listing the random transforms and suggesting the fixes.
    """
    offending = find_random_transforms(data, key)
    if not offending:
        return
    message = (
        f"Cached teacher soft targets need a deterministic teacher input, but the training data's transforms "
        f"randomise the teacher input {key!r}: {', '.join(offending)}. The cached logits would belong to "
        "different inputs than the ones the student sees. Run the teacher online (soft_target_cache=None), feed the "
        "teacher a deterministic key (teacher_image_key), or pass allow_random_teacher_input=True if these "
        "transforms do not change what the teacher sees."
    )
    if not allow_random:
        raise ValueError(message)
    logger.warning(message)


# ---------------------------------------------------------------------------------------------------------------
# Precomputation
# ---------------------------------------------------------------------------------------------------------------


def precompute_soft_targets(
    teacher: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
    data_loader: Iterable[Mapping[str, Any]],
    device: torch.device | str = "cpu",
    image_key: str = "image",
    subject_key: str = "subject",
    amp: bool = False,
    path: str | os.PathLike | None = None,
    allow_random_teacher_input: bool = False,
    progress: bool = True,
) -> SoftTargetCache:
    """Run the frozen teacher(s) once over ``data_loader`` and cache their logits per subject.

    A subject seen several times (e.g. several slices of one volume, each carrying the volume as teacher input)
    must give the same logits every time, otherwise the teacher input is not deterministic and caching is wrong.

    Args:
        teacher: one teacher, or a sequence/dict of teachers (stacked in that order).
        data_loader: yields dictionaries with ``image_key`` and ``subject_key``; use the training transforms
            without random augmentation.
        device: where the teacher runs.
        image_key: batch key of the teacher input (``"volume"`` for volume-to-slice distillation).
        subject_key: batch key of the subject id.
        amp: run the teacher under CUDA autocast (ignored on CPU).
        path: when given, the cache is also saved there (atomically).
        allow_random_teacher_input: only warn, instead of raising, when the loader's transforms are random.
        progress: show a progress bar.

    Returns:
        The cache.

    Raises:
        ValueError: for random teacher-input transforms, or a subject whose teacher logits differ between samples.
        KeyError: if a batch lacks ``image_key`` or ``subject_key``.
    """
    teachers = as_teacher_list(teacher)
    check_deterministic_teacher_input(data_loader, image_key, allow_random_teacher_input)
    device = torch.device(device)
    use_amp = amp and device.type == "cuda"
    modes = [t.training for t in teachers]
    for t in teachers:
        t.eval()
    logits: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            for batch in tqdm(data_loader, desc="teacher soft targets", disable=not progress):
                missing = [k for k in (image_key, subject_key) if k not in batch]
                if missing:
                    raise KeyError(f"Batch has no {missing} (keys: {sorted(batch)}); set image_key/subject_key.")
                x = batch[image_key].to(device)
                with torch.autocast("cuda", enabled=use_amp):
                    batch_logits = torch.stack([t(x).float() for t in teachers], dim=1).cpu()
                for subject, value in zip(batch[subject_key], batch_logits):
                    previous = logits.setdefault(str(subject), value)
                    if not torch.allclose(previous, value, rtol=1e-4, atol=1e-5):
                        raise ValueError(
                            f"Subject {subject!r} gave different teacher logits in two samples ({previous.tolist()} vs "
                            f"{value.tolist()}): its teacher input {image_key!r} is not deterministic, so its soft "
                            "targets cannot be cached. Remove random transforms from the teacher input."
                        )
    finally:
        for t, mode in zip(teachers, modes):
            t.train(mode)
    metadata = {
        "image_key": image_key,
        "teacher_fingerprints": [teacher_fingerprint(t) for t in teachers],
        "teacher_classes": [type(t).__name__ for t in teachers],
    }
    cache = SoftTargetCache(logits, metadata)
    if path is not None:
        cache.metadata["path"] = str(cache.save(path))
    logger.info("Cached the soft targets of %d subjects from %d teacher(s).", len(cache), len(teachers))
    return cache
