"""Finding, parsing and loading medkd3d's MONAI bundles and their checkpoints: the one low-level owner.

Everything that reads a bundle goes through this module - ``medkd3d export`` / ``infer`` / ``explain``, the bundle
configs' own teacher loading (:func:`medkd3d.bundles.load_teacher`), ``medkd3d pipeline`` and the ablation
runner - so a bundle is found, its configs parsed, its checkpoint located, checked and loaded, and the
configuration a checkpoint records read, in one way with one set of error messages:

- finding: :func:`find_bundle_root` (also the ``bundle_root`` of every bundle config), :func:`teacher_of` (the
  teacher bundle a student's ``train.json`` names), :func:`list_profiles`, :func:`read_profiles`;
- parsing: :func:`bundle_parser` (``configs/*.json`` + profiles + overrides, :class:`monai.bundle.ConfigParser`);
- checkpoints: :func:`require_checkpoint` (the one existence check), :func:`load_weights` (strict loading),
  :func:`run_config` / :func:`attach_config` / :func:`read_checkpoint_config` (the training configuration a
  checkpoint records) and :func:`check_checkpoint_config`;
- :func:`build_bundle_network`: a bundle's network built as its checkpoint was trained, with its weights.

At import it loads nothing else of medkd3d but :mod:`medkd3d.utils` (:func:`tiny_overrides` reads the network
registry when called), so every subpackage may use it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where weights are read: finding a bundle (``medkd3d --help``) needs none
    import torch
    from torch import nn

__all__ = [
    "BUNDLE_NAMES",
    "CONFIG_KEY",
    "PROFILES_DIR",
    "BundleNetwork",
    "attach_config",
    "build_bundle_network",
    "bundle_command",
    "bundle_parser",
    "check_checkpoint_config",
    "checkpoint_config",
    "class_names_of",
    "compare_checkpoint_config",
    "default_checkpoint",
    "find_bundle_root",
    "list_profiles",
    "load_weights",
    "network_arguments",
    "profile_configs",
    "read_checkpoint_config",
    "read_profiles",
    "recorded_overrides",
    "require_checkpoint",
    "run_config",
    "teacher_of",
    "tiny_overrides",
]

logger = logging.getLogger(__name__)

#: The bundles shipped with medkd3d, teacher first (students load its checkpoint).
BUNDLE_NAMES: tuple[str, ...] = (
    "brats_teacher_vggvit3d",
    "brats_student_effnet3d",
    "brats_student_effnet25d",
    "brats_hdkd_teacher3d",
    "brats_hdkd_student3d",
)

#: Folder of the profiles inside a bundle's ``configs/``.
PROFILES_DIR = "profiles"

#: The id of a student's ``train.json`` naming its teacher bundle (a folder next to the student's).
TEACHER_BUNDLE_KEY = "teacher_bundle"

# ------------------------------------------------------------------------------------------------------ finding


def _is_bundle(folder: Path) -> bool:
    return (folder / "configs" / "metadata.json").is_file()


def _bundle_of(path: str | os.PathLike) -> Path | None:
    """The bundle a config file or config folder belongs to (``<bundle>/configs[/profiles]/...``), if any."""
    folder = Path(path).resolve()
    if not folder.is_dir():  # a config file: look from its folder
        folder = folder.parent
    for candidate in (folder, *folder.parents[:2]):
        if _is_bundle(candidate):
            return candidate
    return None


def _called_from_config(frame: FrameType | None) -> bool:
    """Whether ``frame`` (the caller of :func:`find_bundle_root`) is MONAI evaluating a config: a ``_target_``
    instantiated by ``monai.utils.module.instantiate`` or a ``$`` expression evaluated by ``monai.bundle``."""
    if frame is None:
        return False
    if frame.f_globals.get("__name__", "").startswith("monai."):
        return True
    parent = frame.f_back
    in_expression = frame.f_code.co_filename == "<string>" and parent is not None
    return in_expression and parent.f_globals.get("__name__", "").startswith("monai.bundle")


def _running_config_files(frame: FrameType | None) -> list[str] | None:
    """The config (and metadata) files of the MONAI bundle workflow or command on the stack, nearest first.

    ``ConfigWorkflow`` (``python -m monai.bundle run``, :func:`medkd3d.bundles.run_bundle_config`) keeps its
    config folder in ``config_root_path`` and its ``meta_file``; the other ``monai.bundle`` commands
    (``ckpt_export``, ``verify_net_in_out``, ``onnx_export``, ``trt_export``) hold their parsed ``config_file_``
    argument. ``None`` when no such frame is found (a plain ``ConfigParser``).
    """
    from monai.bundle import ConfigWorkflow
    from monai.utils import ensure_tuple

    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("monai.bundle"):
            owner = frame.f_locals.get("self")
            if isinstance(owner, ConfigWorkflow):  # isinstance: MONAI's config objects answer any getattr
                return [str(owner.config_root_path), *(str(m) for m in ensure_tuple(owner.meta_file or ()))]
            files = frame.f_locals.get("config_file_")
            if files:
                return [str(f) for f in ensure_tuple(files)]
        frame = frame.f_back
    return None


def find_bundle_root(name: str) -> str:
    """Directory of the bundle ``name``, so configs work whichever directory they are run from.

    MONAI bundles conventionally use ``"bundle_root": "."`` and are run from inside the bundle. Ours are also
    run from the repository root (``--config_file bundles/<name>/configs/train.json``) and from anywhere else, so
    the root is found as follows. ``--bundle_root DIR`` always overrides this.

    - **From a bundle config** (the ``bundle_root`` of every ``configs/*.json``): a bundle resolves only itself,
      the bundle folder holding the config files MONAI is running (``python -m monai.bundle run`` / ``ckpt_export``
      / ... ``--config_file <bundle>/configs/train.json``), so a copied bundle reads and writes its own
      ``models/`` and ``eval/`` wherever the command is started. When MONAI's command is not on the stack (a plain
      ``ConfigParser`` without a ``bundle_root`` override) the working directory must be the bundle or hold it in
      ``bundles/<name>``. The bundles installed with medkd3d are never used for a config.
    - **From Python** (the pipeline, the ablation runner, examples): the working directory when it is the bundle,
      ``./bundles/<name>``, then the ``bundles/`` folder next to the installed medkd3d sources.

    Args:
        name: bundle directory name, e.g. ``"brats_teacher_vggvit3d"``.

    Returns:
        The bundle directory as an absolute path string (a string, as MONAI configs concatenate paths).

    Raises:
        FileNotFoundError: if the config being run is not inside a bundle, its bundle is not ``name`` (a config
            naming another bundle), or the bundle is in none of the places searched.
    """
    caller = sys._getframe(1)
    cwd = Path.cwd()
    if _called_from_config(caller):
        files = _running_config_files(caller)
        if files is not None:
            bundles = [b for b in (_bundle_of(f) for f in files) if b is not None]
            if not bundles:
                raise FileNotFoundError(
                    f"Cannot tell the bundle_root of bundle {name!r}: the config files {files} are not inside a "
                    f"bundle (<bundle>/configs/*.json next to configs/metadata.json). Run the bundle's own configs, "
                    f"or pass --bundle_root /path/to/{name}."
                )
            if bundles[0].name != name:
                raise FileNotFoundError(
                    f"The config run from {bundles[0]} sets bundle_root to the bundle {name!r}, but a bundle resolves "
                    f"only itself: rename the folder to {name}, fix the config's bundle_root name, or pass "
                    f"--bundle_root {bundles[0]}."
                )
            return str(bundles[0])
        candidates = [cwd, cwd / "bundles" / name]
    else:
        candidates = [cwd, cwd / "bundles" / name, Path(__file__).resolve().parents[2] / "bundles" / name]
    for candidate in candidates:
        if candidate.name == name and _is_bundle(candidate):
            return str(candidate.resolve())
    raise FileNotFoundError(
        f"Cannot find the bundle {name!r} (looked in {', '.join(str(c) for c in candidates)}). "
        f"Run from the repository root or from inside the bundle, or pass --bundle_root /path/to/{name}."
    )


def teacher_of(bundle_root: str | os.PathLike) -> str | None:
    """The teacher bundle a student bundle distils from: the ``teacher_bundle`` its ``configs/train.json`` names.

    This is the one record of the teacher <-> student pairing; the student's config finds that bundle next to its
    own folder (``teacher_bundle_root``), builds the teacher from the teacher bundle's config and the trained
    checkpoint's recorded configuration (:func:`medkd3d.bundles.load_teacher`), and ``medkd3d pipeline``, the
    ablation runner and the benchmarks train or pair teachers by it.

    Args:
        bundle_root: a bundle directory.

    Returns:
        The teacher bundle's folder name, ``None`` for a bundle that names no teacher (a teacher itself).
    """
    train = Path(bundle_root) / "configs" / "train.json"
    if not train.is_file():
        return None
    teacher = json.loads(train.read_text(encoding="utf-8")).get(TEACHER_BUNDLE_KEY)
    return str(teacher) if teacher else None


def list_profiles(bundle_root: str | os.PathLike) -> list[str]:
    """Names of a bundle's profiles (``configs/profiles/<name>.json``), sorted; empty when it has none."""
    folder = Path(bundle_root) / "configs" / PROFILES_DIR
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def profile_configs(bundle_root: str | os.PathLike, profiles: Sequence[str]) -> list[str]:
    """Config file names (relative to ``configs/``) of the named profiles, in the given order.

    Args:
        bundle_root: the bundle directory.
        profiles: profile names, e.g. ``["quick"]`` or ``["cpu", "quick"]``.

    Returns:
        ``["profiles/<name>.json", ...]``, ready for :func:`bundle_parser` and
        :func:`medkd3d.bundles.run_bundle_config`.

    Raises:
        ValueError: for a profile the bundle does not have, listing the ones it has.
    """
    available = list_profiles(bundle_root)
    unknown = [p for p in profiles if p not in available]
    if unknown:
        raise ValueError(
            f"Bundle {Path(bundle_root).name} has no profile {unknown[0]!r}; its profiles are {available} "
            f"(files in {Path(bundle_root) / 'configs' / PROFILES_DIR})."
        )
    return [f"{PROFILES_DIR}/{p}.json" for p in profiles]


def read_profiles(bundle_root: str | os.PathLike, profiles: Sequence[str]) -> dict[str, Any]:
    """The merged content of the named profiles as ``{config id: value}``, later profiles winning.

    Useful where a profile must reach a config it is not merged into, e.g. the ``network_def#...`` and size
    overrides of ``inference.json`` or an export of a model trained under a profile.

    Args:
        bundle_root: the bundle directory.
        profiles: profile names, in merge order.

    Returns:
        Config ids (as written in the profiles, e.g. ``"network_def#vit_layers"``) and their values.

    Raises:
        ValueError: for a profile the bundle does not have.
    """
    from monai.bundle.utils import merge_kv

    merged: dict[str, Any] = {}
    for name in profile_configs(bundle_root, profiles):
        content = json.loads((Path(bundle_root) / "configs" / name).read_text(encoding="utf-8"))
        for key, value in content.items():
            merge_kv(merged, key, value)
    return merged


def bundle_command(bundle_root: str | os.PathLike, config: str | Sequence[str] = "train.json") -> str:
    """The ``python -m monai.bundle run`` command line of config(s) of a bundle, for messages.

    Paths are relative to the working directory when the bundle lies below it (``bundles/<name>/...`` from the
    repository root), absolute otherwise, so the command can be pasted as it is. Several configs (e.g.
    ``["train.json", "profiles/quick.json"]``) are written as MONAI's list syntax.
    """
    files = []
    for name in [config] if isinstance(config, str) else config:
        config_file = Path(bundle_root).resolve() / "configs" / name
        if config_file.is_relative_to(Path.cwd()):
            config_file = config_file.relative_to(Path.cwd())
        files.append(str(config_file))
    if len(files) == 1:
        return f"python -m monai.bundle run --config_file {files[0]}"
    return f'python -m monai.bundle run --config_file "[{",".join(repr(f) for f in files)}]"'


def tiny_overrides(bundle_root: str | os.PathLike, spatial: int = 32, profiles: Sequence[str] = ()) -> dict[str, Any]:
    """Config overrides that make a bundle's network tiny (the registry's ``tiny_kwargs``), for tests and smoke runs.

    Args:
        bundle_root: a bundle whose ``network_def`` builds a registered model (``_target_`` ``create_model``).
        spatial: edge of the cubic ``spatial_size``.
        profiles: the bundle profiles the run merges; their ``network_def#name`` (e.g. the ``quick`` profile's
            ResNet) decides which model's tiny arguments apply.

    Returns:
        ``{"spatial_size": [...], "network_def#<arg>": value, ...}``.

    Raises:
        ValueError: if the bundle's network is not built from the registry.
    """
    from medkd3d.networks import get_model_entry

    network_def = bundle_parser(bundle_root, profiles=profiles).get("network_def")
    if not str(network_def.get("_target_", "")).endswith("create_model"):
        raise ValueError(
            f"{bundle_root}: network_def is not built by medkd3d.networks.create_model; no tiny configuration."
        )
    entry = get_model_entry(network_def["name"])
    overrides: dict[str, Any] = {"spatial_size": [spatial] * 3}
    for key, value in entry.tiny_kwargs.items():
        if key == "img_size":  # follows spatial_size in the bundles
            continue
        overrides[f"network_def#{key}"] = list(value) if isinstance(value, tuple) else value
    return overrides


# ------------------------------------------------------------------------------------------------------ parsing


def bundle_parser(
    bundle_root: str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    config: str | Sequence[str] = "inference.json",
    profiles: Sequence[str] = (),
) -> Any:
    """A bundle's config(s) and metadata read by :class:`monai.bundle.ConfigParser`, with ``bundle_root`` set.

    Merged as ``python -m monai.bundle run --config_file "[...]"`` merges them: ``config`` in order, then the
    ``profiles``, then ``overrides``.

    Args:
        bundle_root: the bundle directory (with ``configs/``).
        overrides: config ids and values, e.g. ``{"spatial_size": [64, 64, 64]}``.
        config: file name(s) in ``configs/``, e.g. ``"inference.json"`` or ``["train.json", "evaluate.json"]``.
        profiles: names of the bundle's profiles (``configs/profiles/<name>.json``).

    Returns:
        The parser (nothing is instantiated yet); read values with ``get_parsed_content(id)``.

    Raises:
        FileNotFoundError: naming the bundle and the file when a config or ``configs/metadata.json`` is missing.
        ValueError: for a profile the bundle does not have.
    """
    from monai.bundle import ConfigParser

    root = Path(bundle_root).resolve()
    configs = root / "configs"
    names = [config] if isinstance(config, str) else list(config)
    for name in [*names, "metadata.json"]:
        if not (configs / name).is_file():
            raise FileNotFoundError(
                f"Bundle {root.name}: {configs / name} not found. A medkd3d bundle is a MONAI bundle folder with "
                f"configs/{name} next to configs/metadata.json, such as bundles/brats_student_effnet3d."
            )
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in [*names, *profile_configs(root, profiles)]])
    parser.read_meta(str(configs / "metadata.json"))
    parser.update({"bundle_root": str(root), **dict(overrides or {})})
    return parser


def class_names_of(parser: Any) -> list[str]:
    """A parsed bundle config's class names: its ``class_names``, else its metadata's ``outputs.pred.channel_def``."""
    if "class_names" in parser:
        return [str(name) for name in parser.get_parsed_content("class_names")]
    pred = parser.get("_meta_", {}).get("network_data_format", {}).get("outputs", {}).get("pred", {})
    channel_def = pred.get("channel_def") or {}
    return [str(channel_def[k]) for k in sorted(channel_def, key=int)]


# -------------------------------------------------------------------------------------------------- checkpoints


def default_checkpoint(parser: Any) -> Path:
    """The checkpoint a parsed bundle config points at: its ``ckpt_path``, else ``<bundle_root>/models/model.pt``."""
    if "ckpt_path" in parser:
        return Path(str(parser.get_parsed_content("ckpt_path")))
    return Path(str(parser.get_parsed_content("bundle_root"))) / "models" / "model.pt"


def require_checkpoint(
    checkpoint: str | os.PathLike,
    bundle_root: str | os.PathLike,
    role: str = "model",
    option: str | None = None,
) -> Path:
    """The one existence check of a bundle's checkpoint, before anything reads it.

    The bundle configs call it in their ``initialize`` (``"_target_": "medkd3d.bundles.require_checkpoint"``) so
    that evaluation, inference and export fail before doing any work.

    Args:
        checkpoint: the checkpoint file.
        bundle_root: the bundle that trains it (named in the message with its training command).
        role: what the checkpoint is, for the message (``"model"``, ``"teacher"``).
        option: the option that points at another checkpoint where the check is made: ``--checkpoint`` on the
            ``medkd3d`` commands; by default that of a bundle run, ``--teacher_ckpt`` for the teacher and
            ``--ckpt_path`` otherwise.

    Returns:
        ``checkpoint`` as a path.

    Raises:
        FileNotFoundError: ``"<Role> checkpoint <file> of bundle <name> not found: train the <role> first: <command>
            or point to an existing checkpoint (<option> /path/to/model.pt)."``; a missing bundle folder is named
            as such.
    """
    path, root = Path(checkpoint), Path(bundle_root)
    if path.is_file():
        return path
    if option is None:
        option = "--teacher_ckpt" if role == "teacher" else "--ckpt_path"
    if not _is_bundle(root):
        problem = f"not found, nor is its bundle {root} (no configs/metadata.json there)"
        train = f"put the {root.name} bundle there (or point to it with --teacher_bundle_root) and train it"
    else:
        problem, train = "not found", f"train the {role} first"
    raise FileNotFoundError(
        f"{role.capitalize()} checkpoint {path} of bundle {root.name} {problem}: {train}:\n"
        f"    {bundle_command(root)}\n"
        f"or point to an existing checkpoint ({option} /path/to/model.pt)."
    )


#: Keys under which MONAI ``CheckpointSaver`` dicts and common training scripts store the network's weights.
STATE_DICT_KEYS = ("network", "model", "state_dict", "net", "teacher")

_MAX_LISTED = 10


def _is_state_dict(obj: object) -> bool:
    import torch

    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def _select_state_dict(checkpoint: object, path: Path, key: str | None) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: under ``key``, a bare one, or the only (or a known) entry."""
    if key is not None and not (_is_state_dict(checkpoint) and key not in checkpoint):
        if not isinstance(checkpoint, Mapping) or key not in checkpoint:
            found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise KeyError(f"Checkpoint {path} has no entry {key!r} (found: {found}).")
        checkpoint = checkpoint[key]
    elif not _is_state_dict(checkpoint) and isinstance(checkpoint, Mapping):
        candidates = [k for k in STATE_DICT_KEYS if _is_state_dict(checkpoint.get(k))]
        candidates = candidates or [k for k, v in checkpoint.items() if _is_state_dict(v)]
        if len(candidates) != 1:
            raise ValueError(
                f"Cannot tell which entry of checkpoint {path} holds the network weights: entries "
                f"{sorted(checkpoint)}, state-dict-like {candidates}. Pass key=... (e.g. key='model')."
            )
        checkpoint = checkpoint[candidates[0]]
    if not _is_state_dict(checkpoint):
        raise ValueError(
            f"Checkpoint {path} does not hold a state dict of tensors (got {type(checkpoint).__name__}); save it "
            "with torch.save(model.state_dict(), path) or MONAI's CheckpointSaver."
        )
    return dict(checkpoint)


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside ``DistributedDataParallel``, ``DataParallel`` and ``torch.compile`` wrappers."""
    from torch import nn

    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def load_weights(
    model: nn.Module, path: str | os.PathLike, key: str | None = None, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Load a checkpoint's weights strictly: every parameter and buffer must match by name and shape.

    Reads (``weights_only``) what the bundles write - ``{"model": state_dict, ...}`` (``last.pt``) and a bare state
    dict (``model.pt``, MONAI's ``CheckpointSaver`` with one object) - and the dictionaries of other training
    scripts (weights under ``"network"``, ``"state_dict"``, ...; the only state-dict entry when no known key is
    present). A state dict saved from a ``DistributedDataParallel`` wrapper (keys prefixed ``"module."``) is
    accepted too.

    Args:
        model: the network (wrappers such as DDP are looked through).
        path: checkpoint file; check it with :func:`require_checkpoint` first for the bundle's message.
        key: entry of a checkpoint dictionary holding the weights; guessed when ``None``.
        map_location: passed to ``torch.load``.

    Returns:
        ``model``, with the weights loaded.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        KeyError, ValueError: if the file cannot be read or holds no recognisable state dict.
        RuntimeError: naming the file and the missing, unexpected and shape-mismatched keys.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} not found.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"Cannot read checkpoint {path}: {e}") from e
    state_dict = _select_state_dict(checkpoint, path, key)

    inner = _unwrap(model)
    expected = inner.state_dict()
    if all(k.startswith("module.") for k in state_dict) and not any(k.startswith("module.") for k in expected):
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        problems = [
            f"{label} keys: {_listed(names)}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched))
            if names
        ]
        raise RuntimeError(
            f"Checkpoint {path} does not match {type(inner).__name__}: {'; '.join(problems)}. Build the network with "
            "the architecture and arguments it was trained with (for a bundle: the same overrides, e.g. "
            "spatial_size, network_def#...)."
        )
    inner.load_state_dict(state_dict, strict=True)
    logger.info("Loaded the weights of %s from %s.", type(inner).__name__, path)
    return model


# ------------------------------------------------------------------------------------ recorded configurations

#: Entry of a checkpoint dictionary (``last.pt``) with the configuration the checkpoint was trained with.
CONFIG_KEY = "config"
#: Where a bare state dict (``model.pt``, as MONAI's ``CheckpointSaver`` writes a single object) keeps it: in the
#: dict's ``_metadata``, which ``load_state_dict`` only reads per module prefix, so every strict loader (MONAI's
#: ``CheckpointLoader``, ``ckpt_export``, :func:`load_weights`) still accepts the file unchanged.
_METADATA_KEY = "medkd3d:config"
#: Recorded settings a loader compares with its own (the others are informative).
_CHECKED_KEYS = ("spatial_size", "network_def", "class_names", "num_slices", "slice_axis", "num_stacks")


def _plain(value: Any) -> Any:
    """``value`` as JSON-like data (dicts, lists, str, int, float, bool, None) that ``weights_only`` loading reads."""
    import torch

    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if torch.is_tensor(value):
        return _plain(value.tolist())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # e.g. a torch.device or an enum: recorded for the reader, compared as text


def network_arguments(network: nn.Module) -> dict[str, Any] | None:
    """The registry name and build arguments of a network made by :func:`medkd3d.networks.create_model`.

    Args:
        network: a network (wrappers with ``.module`` are looked through).

    Returns:
        ``{"name": ..., <kwargs>}`` as plain data, ``None`` for a network not built from the registry.
    """
    args = getattr(network, "model_args", None) or getattr(getattr(network, "module", None), "model_args", None)
    return _plain(args) if isinstance(args, Mapping) else None


def run_config(
    bundle: str,
    network: nn.Module,
    spatial_size: Any,
    class_names: Any,
    num_slices: int | None = None,
    slice_axis: int | None = None,
    num_stacks: int | None = None,
) -> dict[str, Any]:
    """The configuration a bundle trains with, as plain data for its checkpoints (``checkpoint_config``).

    Args:
        bundle: the bundle name.
        network: the built ``network_def`` (its :func:`network_arguments` are recorded).
        spatial_size: the training ``spatial_size``.
        class_names: class names in label-index order.
        num_slices: slices per stack (2.5D bundles).
        slice_axis: slicing axis (2.5D bundles).
        num_stacks: stacks per subject (2.5D bundles).

    Returns:
        ``{"bundle", "network_def", "spatial_size", "class_names"}`` plus the slice settings that are given.
    """
    config = {
        "bundle": str(bundle),
        "network_def": network_arguments(network),
        "spatial_size": _plain(spatial_size),
        "class_names": [str(name) for name in class_names],
    }
    slices = {"num_slices": num_slices, "slice_axis": slice_axis, "num_stacks": num_stacks}
    config.update({key: int(value) for key, value in slices.items() if value is not None})
    return config


def attach_config(checkpoint: Any, config: Mapping[str, Any]) -> Any:
    """A copy of ``checkpoint`` (what is about to be saved) that carries ``config``.

    Args:
        checkpoint: a checkpoint dictionary (``{"model": ..., "optimizer": ...}``) or a bare state dict.
        config: plain data (:func:`run_config`).

    Returns:
        The dictionary with ``config`` under :data:`CONFIG_KEY`; a bare state dict with it in its ``_metadata``.
    """
    import torch

    # a module's state dict always has ``_metadata``; a new ``"config"`` key would break its strict loading
    if hasattr(checkpoint, "_metadata") or all(torch.is_tensor(v) for v in checkpoint.values()):
        # a shallow copy: the tensors are shared, the caller's dict and its ``_metadata`` are left as they are
        state = copy.copy(checkpoint) if hasattr(checkpoint, "_metadata") else OrderedDict(checkpoint)
        state._metadata = OrderedDict({**getattr(checkpoint, "_metadata", {}), _METADATA_KEY: _plain(config)})
        return state
    return {**checkpoint, CONFIG_KEY: _plain(config)}


def checkpoint_config(checkpoint: Any) -> dict[str, Any] | None:
    """The training configuration a loaded checkpoint carries (see :func:`attach_config`), ``None`` when it has none."""

    recorded = getattr(checkpoint, "_metadata", {}).get(_METADATA_KEY) if hasattr(checkpoint, "_metadata") else None
    if recorded is None and isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(CONFIG_KEY), Mapping):
        recorded = checkpoint[CONFIG_KEY]
    return dict(recorded) if isinstance(recorded, Mapping) else None


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any] | None:
    """The training configuration of the checkpoint file ``path`` (``weights_only`` loading), ``None`` if none."""
    import torch

    try:  # memory-mapped: only the small pickle is read, not the weights
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint_config(checkpoint)


def recorded_overrides(recorded: Mapping[str, Any] | None, parser: Any) -> dict[str, Any]:
    """A checkpoint's recorded training configuration as config overrides of a bundle config.

    So everything that loads a bundle checkpoint (:func:`build_bundle_network`: export, explain, a student's
    teacher) builds the network the checkpoint was trained as - a model trained at 32^3 with a slimmed teacher
    loads at 32^3 with that teacher - without the user repeating the training overrides.

    Args:
        recorded: :func:`read_checkpoint_config` of the checkpoint (``None``: an older checkpoint, nothing to use).
        parser: the bundle config the network is built from; only ids it has are overridden.

    Returns:
        ``{"spatial_size": ..., "class_names": ..., "network_def#<argument>": ..., ...}``.
    """
    if not recorded:
        return {}
    found = {key: recorded[key] for key in _CHECKED_KEYS if key != "network_def" and key in recorded and key in parser}
    if "network_def" in parser and isinstance(recorded.get("network_def"), Mapping):
        found.update({f"network_def#{arg}": value for arg, value in recorded["network_def"].items() if arg != "name"})
    return found


def check_checkpoint_config(path: str | os.PathLike, requested: Mapping[str, Any]) -> dict[str, Any] | None:
    """Refuse to load a checkpoint into a configuration other than the one it was trained with.

    Args:
        path: the checkpoint file.
        requested: the values about to be used (keys as in :func:`run_config`; ``None`` values are not checked).

    Returns:
        The recorded configuration, ``None`` for an older checkpoint without one (a warning is logged).

    Raises:
        ValueError: naming the checkpoint, the setting, the recorded and requested values and the override to pass.
    """
    return compare_checkpoint_config(path, read_checkpoint_config(path), requested)


def compare_checkpoint_config(
    path: str | os.PathLike, recorded: Mapping[str, Any] | None, requested: Mapping[str, Any]
) -> dict[str, Any] | None:
    """:func:`check_checkpoint_config` for a configuration already read from ``path`` (no second read of the file).

    Args:
        path: the checkpoint file, named in the messages.
        recorded: its :func:`read_checkpoint_config`.
        requested: the values about to be used.

    Returns:
        ``recorded``, ``None`` when there is none (a warning is logged).

    Raises:
        ValueError: as :func:`check_checkpoint_config`.
    """
    if recorded is None:
        logger.warning(
            "Checkpoint %s records no training configuration (written by an older medkd3d): its spatial_size, "
            "network arguments and class names cannot be checked against this run.",
            path,
        )
        return None
    for key in _CHECKED_KEYS:
        old, new = recorded.get(key), _plain(requested.get(key))
        if old is None or new is None or old == new:
            continue
        if key == "network_def" and isinstance(old, Mapping) and isinstance(new, Mapping):
            # arguments given on one side only are left at a default the checkpoint does not know: not compared
            # (a different value there still fails the strict weight loading, if it changes the weights)
            differing = [arg for arg in sorted(old.keys() & new.keys()) if old[arg] != new[arg]]
            if not differing:
                continue
            fixes = " ".join(f"network_def#{arg}={json.dumps(old.get(arg))}" for arg in differing if arg != "name")
            raise ValueError(
                f"Checkpoint {path} was trained with network_def {old} but this run builds {new} (differing: "
                f"{', '.join(differing)}). Pass the training values, e.g. --override {fixes or 'network_def#name=...'}, "
                "or use a checkpoint trained with this configuration."
            )
        raise ValueError(
            f"Checkpoint {path} was trained with {key}={json.dumps(old)} but this run uses {key}={json.dumps(new)}. "
            f"Pass the training value (--override {key}={json.dumps(old, separators=(',', ':'))}) or use a "
            "checkpoint trained with this configuration."
        )
    return dict(recorded)


# ---------------------------------------------------------------------------------------------------- loading


@dataclass
class BundleNetwork:
    """A bundle's network built as its checkpoint was trained (see :func:`build_bundle_network`).

    Args:
        root: bundle directory.
        network: the network on CPU, in eval mode, with the checkpoint's weights (random without a checkpoint).
        parser: the bundle's parsed config, with the recorded configuration and the caller's overrides applied.
        checkpoint: the loaded checkpoint, ``None`` for random weights.
        recorded: the configuration the checkpoint records, ``None`` when it records none.
        overrides: the overrides the parser was given (recorded ones first, the caller's winning).
        metadata: the bundle's ``metadata.json`` (with overrides of ``_meta_#...``) as read, before parsing.
    """

    root: Path
    network: nn.Module
    parser: Any
    checkpoint: Path | None
    recorded: dict[str, Any] | None
    overrides: dict[str, Any]
    metadata: dict[str, Any]


def _requested_config(parser: Any, network: nn.Module) -> dict[str, Any]:
    """The settings of a bundle's parsed config that its checkpoint's recorded ones must match."""
    requested: dict[str, Any] = {"network_def": network_arguments(network), "class_names": class_names_of(parser)}
    requested["class_names"] = requested["class_names"] or None
    for key in ("spatial_size", "num_slices", "slice_axis", "num_stacks"):
        if key in parser:
            requested[key] = parser.get_parsed_content(key)
    return requested


def build_bundle_network(
    bundle_root: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    config: str | Sequence[str] = "inference.json",
    net_ids: Sequence[str] = ("network_def",),
    random_weights: bool = False,
    role: str = "model",
    option: str = "--checkpoint",
    profiles: Sequence[str] = (),
) -> BundleNetwork:
    """Build a bundle's network as its checkpoint was trained, and load the checkpoint's weights strictly.

    The bundle's own config gives the architecture; the configuration the checkpoint records (``spatial_size``,
    class names, slice settings and the ``network_def`` arguments, see :func:`run_config`) is applied over it, so
    a model trained under a profile or with ``network_def#...`` overrides loads without repeating them. The
    caller's ``overrides`` win, and are checked against the record (:func:`compare_checkpoint_config`).

    Args:
        bundle_root: the bundle directory.
        checkpoint: the weights; default the config's ``ckpt_path`` (``models/model.pt``).
        overrides: config ids and values over the recorded ones.
        config: the config file(s) defining the network, in ``configs/``.
        net_ids: config ids of the network, the first the config has is built (e.g.
            ``("network_export", "network_def")``).
        random_weights: keep random weights unless ``checkpoint`` is given and exists; the bundle's own
            ``ckpt_path`` is never read then, whatever the working tree holds (tests, benchmarks).
        role: what the network is, for the messages (``"model"``, ``"teacher"``).
        option: the option pointing at another checkpoint, for the message of a missing one.
        profiles: the bundle's profiles merged after ``config`` (under the record and ``overrides``): what a
            checkpoint without a record, or random weights, were trained / are built under.

    Returns:
        The :class:`BundleNetwork`.

    Raises:
        FileNotFoundError: if the bundle's configs or the checkpoint are missing (:func:`require_checkpoint`).
        KeyError: if the config defines none of ``net_ids``.
        ValueError: if the checkpoint was trained with another ``spatial_size``, network arguments, class names or
            slice settings than ``overrides`` give.
        RuntimeError: if the checkpoint does not fit the network (:func:`load_weights`).
    """
    root = Path(bundle_root).resolve()
    overrides = dict(overrides or {})
    parser = bundle_parser(root, overrides, config, profiles)
    # before anything is parsed: MONAI's parsing rewrites the "#" of ids inside the metadata's strings
    metadata = copy.deepcopy(parser.get("_meta_", {}))
    if checkpoint is None and not random_weights:
        checkpoint = default_checkpoint(parser)
    path = Path(checkpoint) if checkpoint is not None else None
    if random_weights and (path is None or not path.is_file()):
        if path is not None:
            logger.warning("Bundle %s: no checkpoint at %s, keeping random weights.", root.name, path)
        path = None
    elif path is not None:
        require_checkpoint(path, root, role=role, option=option)
    recorded = read_checkpoint_config(path) if path is not None else None
    derived = {k: v for k, v in recorded_overrides(recorded, parser).items() if k not in overrides}
    if derived:  # build what the checkpoint was trained as; the caller's own overrides win (and are checked below)
        logger.info("Bundle %s: using the training configuration recorded in %s: %s", root.name, path, derived)
        overrides = {**derived, **overrides}
        parser = bundle_parser(root, overrides, config, profiles)
    net_id = next((i for i in net_ids if i in parser), None)
    if net_id is None:
        raise KeyError(f"Bundle {root.name}: {config} defines none of {list(net_ids)}; it is not a medkd3d bundle.")
    network = parser.get_parsed_content(net_id)
    if path is not None:
        compare_checkpoint_config(path, recorded, _requested_config(parser, network))
        load_weights(network, path)
    return BundleNetwork(
        root=root,
        network=network.cpu().eval(),
        parser=parser,
        checkpoint=path,
        recorded=recorded,
        overrides=overrides,
        metadata=metadata,
    )
