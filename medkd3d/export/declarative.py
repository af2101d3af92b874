"""Preprocessing and inferer of an exported model as declarative data, never as code.

An exported artefact (``model.onnx``, ``model.ts``, the ``inference.json`` beside an engine) is *data*: whoever
runs ``medkd3d infer`` on a downloaded model must not run code its author planted. So an artefact does not carry
the bundle's MONAI config (whose ``$`` expressions :class:`monai.bundle.ConfigParser` evaluates and whose
``_target_`` imports anything): it carries the resolved pipeline as plain JSON,

.. code-block:: json

    {"format": "medkd3d-inference/1",
     "class_names": ["LGG", "HGG"],
     "preprocessing": [{"transform": "medkd3d.data.volume_transforms",
                        "args": {"spatial_size": [128, 128, 128], "train": false}}],
     "inferer": {"transform": "SimpleInferer", "args": {}},
     "network_def": {"name": "efficientnet3d_b0"}}

and reading it only ever instantiates a transform from an allow-list (:data:`TRANSFORMS`, :data:`INFERERS`)
whose every argument is checked against that transform's schema (names, types, enumerated strings). A ``$``,
``@`` or ``%`` string, a ``_target_`` (or any ``_x_``) key, an unknown transform or argument is an
:class:`UnsafeArtefactError` naming the artefact; nothing is imported or evaluated before the whole document
has passed. Strings are never used as import paths (MONAI's ``LoadImaged(reader="pkg.mod.Class")`` would
import one), which is why even ``reader`` is an enumeration here.

The export side (:func:`declare_component`) resolves the trusted bundle config once, with MONAI's parser, into
this form; the exporter's parity check then runs the declared pipeline, so what is checked is what is deployed.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DOCUMENT_FORMAT",
    "INFERERS",
    "TRANSFORMS",
    "UnsafeArtefactError",
    "build_inferer",
    "build_preprocessing",
    "declare_component",
    "validate_document",
]

#: Value of the ``format`` entry of a declarative inference document.
DOCUMENT_FORMAT = "medkd3d-inference/1"
#: String prefixes MONAI's config parser treats as expressions (``$``), references (``@``) and macros (``%``).
_CODE_PREFIXES: tuple[str, ...] = ("$", "@", "%")
#: Readers MONAI's ``LoadImaged`` resolves by name; medkd3d's pipelines also take their own (``FastNibabelReader``).
_READERS = ("NibabelReader", "ITKReader")
_PIPELINE_READERS = ("FastNibabelReader", *_READERS)  # medkd3d.data.readers.READERS, without importing the data stack
_RESIZE_MODES = ("fit", "stretch", "pad_crop")
_SAMPLINGS = ("foreground", "largest_area", "even", "tumour", "random_foreground", "uniform")
_INTERPOLATIONS = ("nearest", "nearest-exact", "linear", "bilinear", "bicubic", "trilinear", "area")
_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")


class UnsafeArtefactError(ValueError):
    """An artefact's inference document is not plain, allow-listed data (it is refused, nothing is run)."""


# ------------------------------------------------------------------------------------------- value checks
#: An argument check: raises ``ValueError`` with a short reason when the value does not fit.
Check = Callable[[Any], None]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _boolean(value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")


def _integer(low: int = 0, high: int | None = None) -> Check:
    def check(value: Any) -> None:
        if not _is_int(value) or value < low or (high is not None and value > high):
            raise ValueError(f"expected an integer in [{low}, {'inf' if high is None else high}]")

    return check


def _number(value: Any) -> None:
    if not _is_number(value):
        raise ValueError("expected a finite number")


def _sequence(item: Check, length: int | None = None) -> Check:
    def check(value: Any) -> None:
        if not isinstance(value, list) or (length is not None and len(value) != length) or not value:
            raise ValueError(f"expected a list of {length or 'one or more'} values")
        for element in value:
            item(element)

    return check


def _choice(*options: Any) -> Check:
    def check(value: Any) -> None:
        if not any(type(value) is type(option) and value == option for option in options):
            raise ValueError(f"expected one of {', '.join(map(repr, options))}")

    return check


def _optional(inner: Check) -> Check:
    def check(value: Any) -> None:
        if value is not None:
            inner(value)

    return check


def _one_of(*checks: Check) -> Check:
    def check(value: Any) -> None:
        reasons = []
        for candidate in checks:
            try:
                candidate(value)
                return
            except ValueError as error:
                reasons.append(str(error))
        raise ValueError(" or ".join(reasons))

    return check


_KEY_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def _key(value: Any) -> None:
    if not isinstance(value, str) or not _KEY_PATTERN.match(value):
        raise ValueError("expected a record key (letters, digits, '_')")


_keys = _one_of(_key, _sequence(_key))
_size = _sequence(_integer(1, 4096))
_size_or_edge = _one_of(_integer(1, 4096), _size)
_modes = _one_of(_choice(*_INTERPOLATIONS), _sequence(_choice(*_INTERPOLATIONS)))


def _orientation(value: Any) -> None:
    # three letters naming three different axes, e.g. "RAS", "LPS"
    axes = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    if not (isinstance(value, str) and len(value) == 3 and all(c in axes for c in value)):
        raise ValueError("expected three axis codes such as 'RAS'")
    if len({axes[c] for c in value}) != 3:
        raise ValueError("expected three different axes such as 'RAS'")


# ------------------------------------------------------------------------------------------- allow-lists
@dataclass(frozen=True)
class Allowed:
    """One allow-listed transform or inferer.

    Args:
        location: ``"module:attribute"`` of the callable.
        args: argument name -> check; no other argument is accepted.
        required: arguments that must be given.
        aliases: other ``_target_`` spellings of bundle configs that mean this entry.
    """

    location: str
    args: Mapping[str, Check]
    required: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default=())

    def load(self) -> Callable[..., Any]:
        module, attribute = self.location.split(":")
        return getattr(importlib.import_module(module), attribute)


_COMMON_PIPELINE_ARGS: dict[str, Check] = {
    "spatial_size": _size,
    "train": _boolean,
    "reader": _choice(*_PIPELINE_READERS),
    "pixdim": _optional(_sequence(_number)),
    "resize": _choice(*_RESIZE_MODES),
}
_SLICE_ARGS: dict[str, Check] = {
    **_COMMON_PIPELINE_ARGS,
    "axis": _integer(0, 2),
    "num_stacks": _optional(_integer(1, 1024)),
    "sampling": _optional(_choice(*_SAMPLINGS)),
    "keep_volume": _boolean,
}
_MONAI_MAPPED: dict[str, Check] = {"keys": _keys, "allow_missing_keys": _boolean}

#: Preprocessing transforms an artefact may name, with the arguments each accepts.
TRANSFORMS: dict[str, Allowed] = {
    "medkd3d.data.volume_transforms": Allowed(
        "medkd3d.data.pipelines:volume_transforms",
        {**_COMMON_PIPELINE_ARGS, "load_seg": _boolean},
        aliases=("medkd3d.data.pipelines.volume_transforms",),
    ),
    "medkd3d.data.slice_stack_transforms": Allowed(
        "medkd3d.data.pipelines:slice_stack_transforms",
        {**_SLICE_ARGS, "num_slices": _integer(1, 64)},
        aliases=("medkd3d.data.pipelines.slice_stack_transforms",),
    ),
    "medkd3d.data.slice_transforms": Allowed(
        "medkd3d.data.pipelines:slice_transforms", _SLICE_ARGS, aliases=("medkd3d.data.pipelines.slice_transforms",)
    ),
    "LoadImaged": Allowed(
        "monai.transforms:LoadImaged",
        {**_MONAI_MAPPED, "reader": _choice(*_READERS), "image_only": _boolean, "ensure_channel_first": _boolean},
        required=("keys",),
    ),
    "EnsureChannelFirstd": Allowed("monai.transforms:EnsureChannelFirstd", _MONAI_MAPPED, required=("keys",)),
    "Orientationd": Allowed(
        "monai.transforms:Orientationd", {**_MONAI_MAPPED, "axcodes": _orientation}, required=("keys",)
    ),
    "Resized": Allowed(
        "monai.transforms:Resized",
        {**_MONAI_MAPPED, "spatial_size": _size_or_edge, "size_mode": _choice("all", "longest"), "mode": _modes},
        required=("keys", "spatial_size"),
    ),
    "ResizeWithPadOrCropd": Allowed(
        "monai.transforms:ResizeWithPadOrCropd", {**_MONAI_MAPPED, "spatial_size": _size}, required=("keys",)
    ),
    "SpatialPadd": Allowed("monai.transforms:SpatialPadd", {**_MONAI_MAPPED, "spatial_size": _size}, ("keys",)),
    "CenterSpatialCropd": Allowed(
        "monai.transforms:CenterSpatialCropd", {**_MONAI_MAPPED, "roi_size": _size}, required=("keys",)
    ),
    "NormalizeIntensityd": Allowed(
        "monai.transforms:NormalizeIntensityd",
        {**_MONAI_MAPPED, "nonzero": _boolean, "channel_wise": _boolean},
        required=("keys",),
    ),
    "ScaleIntensityd": Allowed(
        "monai.transforms:ScaleIntensityd", {**_MONAI_MAPPED, "minv": _number, "maxv": _number}, ("keys",)
    ),
    "EnsureTyped": Allowed(
        "monai.transforms:EnsureTyped",
        {**_MONAI_MAPPED, "dtype": _choice(*_DTYPES), "track_meta": _boolean},
        required=("keys",),
    ),
}
#: Inferers an artefact may name.
INFERERS: dict[str, Allowed] = {
    "SimpleInferer": Allowed("monai.inferers:SimpleInferer", {}, aliases=("monai.inferers.SimpleInferer",)),
    "medkd3d.engines.SliceStackInferer": Allowed(
        "medkd3d.engines.inferers:SliceStackInferer",
        {"spatial_dims": _integer(1, 3), "aggregate": _choice("logits", "probabilities")},
        # its names in the former medkd3d.workflows: artefacts exported under them still load
        aliases=(
            "medkd3d.engines.inferers.SliceStackInferer",
            "medkd3d.workflows.SliceStackInferer",
            "medkd3d.workflows.inferers.SliceStackInferer",
        ),
    ),
}
#: Entries of the document; ``network_def`` only names the registered network (``{"name": ...}``), for reports.
_ALLOWED_KEYS = {"format", "class_names", "preprocessing", "inferer", "network_def"}


def _canonical(target: str, registry: Mapping[str, Allowed]) -> str | None:
    """The allow-list name a bundle ``_target_`` spells, or ``None``."""
    for name, entry in registry.items():
        module, attribute = entry.location.split(":")
        if target in (name, attribute if module.startswith("monai.") else name, f"{module}.{attribute}",
                      *entry.aliases):  # fmt: skip
            return name
    return None


# ------------------------------------------------------------------------------------------- validation
def _plain(value: Any, where: str, source: str) -> None:
    """Refuse anything but JSON values free of MONAI expressions, references, macros and special keys."""
    if value is None or isinstance(value, bool) or _is_int(value):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnsafeArtefactError(f"{source}: {where} is {value!r}; only finite numbers are allowed.")
        return
    if isinstance(value, str):
        if value.lstrip().startswith(_CODE_PREFIXES):
            raise UnsafeArtefactError(
                f"{source}: {where} is {value!r}, a MONAI expression/reference ('$', '@', '%'). An exported model "
                "carries plain values only and medkd3d never evaluates them: refusing this artefact. Re-export it "
                "with `medkd3d export`, and only run models from sources you trust."
            )
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _plain(item, f"{where}[{index}]", source)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if (
                not isinstance(key, str)
                or (key.startswith("_") and key.endswith("_"))
                or key.startswith(_CODE_PREFIXES)
            ):
                raise UnsafeArtefactError(
                    f"{source}: {where} has the key {key!r} (MONAI's '_target_'-style keys instantiate or run code). "
                    "An exported model carries plain values only: refusing this artefact. Re-export it with "
                    "`medkd3d export`, and only run models from sources you trust."
                )
            _plain(item, f"{where}.{key}", source)
        return
    raise UnsafeArtefactError(f"{source}: {where} holds a {type(value).__name__}, not a JSON value.")


def _validate_step(step: Any, where: str, registry: Mapping[str, Allowed], kind: str, source: str) -> None:
    if not isinstance(step, dict) or "transform" not in step or set(step) - {"transform", "args"}:
        raise UnsafeArtefactError(
            f'{source}: {where} must be {{"transform": name, "args": {{...}}}}, got {str(step)[:120]!r}.'
        )
    name, args = step["transform"], step.get("args", {})
    if name not in registry:
        raise UnsafeArtefactError(
            f"{source}: {where} names the {kind} {name!r}, which is not allowed in an exported model (allowed: "
            f"{', '.join(sorted(registry))}). Refusing this artefact."
        )
    if not isinstance(args, dict):
        raise UnsafeArtefactError(f"{source}: {where}.args must be an object of argument values.")
    entry = registry[name]
    for arg, value in args.items():
        if arg not in entry.args:
            raise UnsafeArtefactError(
                f"{source}: {where}: {name} takes no argument {arg!r} in an exported model (allowed: "
                f"{', '.join(sorted(entry.args)) or 'none'})."
            )
        try:
            entry.args[arg](value)
        except ValueError as error:
            raise UnsafeArtefactError(f"{source}: {where}: {name}({arg}={value!r}): {error}.") from None
    missing = [arg for arg in entry.required if arg not in args]
    if missing:
        raise UnsafeArtefactError(f"{source}: {where}: {name} needs {', '.join(missing)}.")


def validate_document(document: Any, source: str) -> dict[str, Any]:
    """Check a declarative inference document completely, before anything is built from it.

    Args:
        document: the parsed JSON of ``inference.json`` (file, ONNX metadata or TorchScript extra file).
        source: the artefact, named in errors.

    Returns:
        ``document`` unchanged.

    Raises:
        UnsafeArtefactError: for anything but the plain, allow-listed form documented in this module.
    """
    if not isinstance(document, dict):
        raise UnsafeArtefactError(f"{source}: inference.json must be a JSON object.")
    _plain(document, "inference.json", source)  # first: a '$' anywhere is refused as such
    if document.get("format") != DOCUMENT_FORMAT:
        raise UnsafeArtefactError(
            f"{source}: inference.json is not a medkd3d declarative inference document (format "
            f"{document.get('format')!r}, expected {DOCUMENT_FORMAT!r}). Models exported by older medkd3d versions "
            "carried a MONAI config, which medkd3d no longer evaluates: re-export the model with `medkd3d export`."
        )
    unknown = sorted(set(document) - _ALLOWED_KEYS)
    if unknown:
        raise UnsafeArtefactError(f"{source}: inference.json has unknown entries {unknown}.")
    names = document.get("class_names")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise UnsafeArtefactError(f"{source}: inference.json 'class_names' must be a non-empty list of strings.")
    network = document.get("network_def", {})
    if not (isinstance(network, dict) and set(network) <= {"name"} and isinstance(network.get("name", ""), str)):
        raise UnsafeArtefactError(f"{source}: inference.json 'network_def' may only hold the network's 'name'.")
    steps = document.get("preprocessing")
    if not isinstance(steps, list) or not steps:
        raise UnsafeArtefactError(f"{source}: inference.json 'preprocessing' must be a non-empty list of steps.")
    for index, step in enumerate(steps):
        _validate_step(step, f"inference.json preprocessing[{index}]", TRANSFORMS, "transform", source)
    _validate_step(document.get("inferer"), "inference.json inferer", INFERERS, "inferer", source)
    return document


# ------------------------------------------------------------------------------------------- building
def build_preprocessing(steps: Sequence[Mapping[str, Any]]) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
    """Compose the validated preprocessing steps (see :func:`validate_document`) into one transform."""
    from monai.transforms import Compose

    transforms = [TRANSFORMS[s["transform"]].load()(**dict(s.get("args", {}))) for s in steps]
    return transforms[0] if len(transforms) == 1 else Compose(transforms)


def build_inferer(step: Mapping[str, Any]) -> Callable[..., Any]:
    """The validated inferer step (see :func:`validate_document`) instantiated."""
    return INFERERS[step["transform"]].load()(**dict(step.get("args", {})))


# ------------------------------------------------------------------------------------------- export side
def _to_json(value: Any, where: str) -> Any:
    """A resolved config value as JSON (tuples become lists, numpy scalars numbers)."""
    if isinstance(value, (list, tuple)):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _to_json(v, f"{where}.{k}") for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return value.item()
    raise ValueError(
        f"{where} resolves to a {type(value).__name__}; an exported model can carry plain values only "
        "(numbers, strings, booleans, lists)."
    )


def declare_component(parser: Any, config_id: str, kind: str = "transform") -> list[dict[str, Any]]:
    """Resolve a bundle config component into declarative steps (run at export time, on the trusted bundle).

    Args:
        parser: the bundle's :class:`monai.bundle.ConfigParser` (overrides applied).
        config_id: ``"preprocessing"`` or ``"inferer"``; a reference (``"@id"``) is followed, a ``Compose``
            flattened into its transforms.
        kind: ``"transform"`` (checked against :data:`TRANSFORMS`) or ``"inferer"`` (:data:`INFERERS`).

    Returns:
        The steps ``[{"transform": name, "args": {...}}, ...]`` (one for an inferer).

    Raises:
        ValueError: if the component uses a transform outside the allow-list or a value that is not plain data.
    """
    registry = TRANSFORMS if kind == "transform" else INFERERS
    raw = parser.get(config_id)
    if isinstance(raw, str) and raw.startswith("@"):
        return declare_component(parser, raw[1:], kind)
    if not isinstance(raw, Mapping) or "_target_" not in raw:
        raise ValueError(f"The bundle's {config_id!r} is not a component with a '_target_'; it cannot be exported.")
    target = str(raw["_target_"])
    if kind == "transform" and target in ("Compose", "monai.transforms.Compose"):
        return [
            step
            for index in range(len(raw.get("transforms", [])))
            for step in declare_component(parser, f"{config_id}#transforms#{index}", kind)
        ]
    name = _canonical(target, registry)
    if name is None:
        raise ValueError(
            f"The bundle's {config_id!r} uses {target!r}, which an exported model cannot carry: it must be one of "
            f"{', '.join(sorted(registry))} (see medkd3d.export.declarative), so that reading an artefact never "
            "runs code."
        )
    args = {
        key: _to_json(parser.get_parsed_content(f"{config_id}#{key}"), f"{config_id}#{key}")
        for key in raw
        if not (key.startswith("_") and key.endswith("_"))
    }
    step = {"transform": name, "args": args}
    _validate_step(step, config_id, registry, kind, "the bundle config")
    return [step]
