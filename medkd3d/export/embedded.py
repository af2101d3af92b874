"""The deployment documents stored inside artefact files, read and written without loading the model.

An ONNX file keeps them in its ``metadata_props``, a TorchScript archive as extra files (the layout of MONAI's
``ckpt_export``); both are keyed by file name (``metadata.json``, ``inference.json``, ``export.json``, see
:mod:`medkd3d.export.deployment`). This module knows the file formats only, not what the documents mean, so the
deployment configuration and the exporters can both build on it.

``onnx`` is imported through :func:`monai.utils.optional_import`: without it ``medkd3d.export`` still imports,
and only reading or writing ONNX metadata raises an ``OptionalImportError`` that says what to install.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from typing import Any

from monai.utils import OptionalImportError, optional_import

onnx, has_onnx = optional_import("onnx")

__all__ = [
    "ONNX_INSTALL_HINT",
    "read_onnx_metadata",
    "read_torchscript_extra_files",
    "require_onnx",
    "set_onnx_metadata",
    "write_onnx_metadata",
]

#: How to install what the ONNX features need (``onnx``, ``onnxscript`` and ``onnxruntime``).
ONNX_INSTALL_HINT = "pip install 'medkd3d[export]'"


def require_onnx(purpose: str) -> None:
    """Fail with an install hint when the ``onnx`` package is missing.

    Args:
        purpose: what needs it, for the message (e.g. ``"ONNX export"``).

    Raises:
        OptionalImportError: naming ``purpose`` and the package to install.
    """
    if not has_onnx:
        raise OptionalImportError(f"{purpose} needs the onnx package, which is not installed: {ONNX_INSTALL_HINT}.")


def set_onnx_metadata(model: Any, properties: Mapping[str, str]) -> None:
    """Set (or replace) entries of an ``onnx.ModelProto``'s ``metadata_props``.

    Args:
        model: the ``onnx.ModelProto``, changed in place.
        properties: ``{key: text}``; other existing entries are kept.
    """
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in properties]
    del model.metadata_props[:]
    for key, value in [*kept, *properties.items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def write_onnx_metadata(path: str | os.PathLike, properties: Mapping[str, str], doc_string: str = "") -> None:
    """Store ``properties`` in the ``metadata_props`` of the ONNX file at ``path``, check the model and save it.

    Args:
        path: an ONNX file without external data; rewritten in place (callers handle temporary names).
        properties: ``{key: text}``, e.g. the deployment documents by file name.
        doc_string: the model's description.

    Raises:
        OptionalImportError: without the ``onnx`` package.
    """
    require_onnx("Writing ONNX metadata")
    model = onnx.load(str(path))
    set_onnx_metadata(model, properties)
    model.doc_string = doc_string
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict.

    Args:
        path: the ``.onnx`` file.

    Returns:
        ``{key: text}``.

    Raises:
        OptionalImportError: without the ``onnx`` package.
        ValueError: if ``path`` is not an ONNX model.
    """
    require_onnx(f"Reading the deployment configuration embedded in {path}")
    from google.protobuf.message import DecodeError  # protobuf comes with onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError as error:
        raise ValueError(f"{path} is not an ONNX model ({error}); export it with `medkd3d export`.") from None
    return {p.key: p.value for p in model.metadata_props}


def read_torchscript_extra_files(path: str | os.PathLike) -> dict[str, str]:
    """The extra files of a TorchScript archive, read without loading the module.

    Args:
        path: the ``.ts`` file.

    Returns:
        ``{file name: text}``, e.g. ``metadata.json`` and ``inference.json``.

    Raises:
        ValueError: if ``path`` is not a TorchScript archive.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            # TorchScript archives store extra files as ``<archive name>/extra/<file name>``.
            return {
                name.split("/extra/", 1)[1]: archive.read(name).decode()
                for name in archive.namelist()
                if "/extra/" in name
            }
    except zipfile.BadZipFile:
        raise ValueError(
            f"{path} is not a TorchScript file (not a zip archive); export it with `medkd3d export`."
        ) from None
