"""The bundle configuration an exported model carries, so deployed predictions equal the bundle's.

An export writes three JSON documents, both next to the artefacts (``metadata.json``, ``inference.json``,
``export.json`` in the output directory) and inside the artefacts that can hold them (TorchScript extra files,
as MONAI's ``ckpt_export`` does; ONNX ``metadata_props``):

- ``metadata.json``: the bundle's metadata (``network_data_format``, class names, versions, references);
- ``inference.json``: the bundle's inference ``preprocessing`` and ``inferer`` (overrides applied) and class
  names, resolved at export time into *declarative data* (:mod:`medkd3d.export.declarative`): allow-listed
  transform names with plain JSON arguments. Reading an artefact validates it and never evaluates anything; a
  MONAI expression (``$``), reference (``@``), macro (``%``), ``_target_`` or unknown transform is refused;
- ``export.json``: what the export itself fixed: input and output names, the input shape without the batch
  dimension, the network inputs per subject (the slice stacks of a 2.5D bundle), the bundle, checkpoint and
  overrides it came from.

A TensorRT engine cannot hold metadata, so it is deployed with the three files beside it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medkd3d.export.declarative import build_inferer, build_preprocessing, validate_document
from medkd3d.export.embedded import read_onnx_metadata, read_torchscript_extra_files
from medkd3d.utils import atomic_write_text

__all__ = [
    "CONFIG_FILES",
    "EXPORT_FILE",
    "INFERENCE_FILE",
    "METADATA_FILE",
    "DeploymentConfig",
]

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
INFERENCE_FILE = "inference.json"
EXPORT_FILE = "export.json"
#: The documents every deployed model needs, by file name (also the keys inside ONNX and TorchScript files).
CONFIG_FILES: tuple[str, ...] = (METADATA_FILE, INFERENCE_FILE, EXPORT_FILE)


@dataclass
class DeploymentConfig:
    """Metadata, inference config and export facts of one exported bundle model.

    Args:
        metadata: the bundle's ``metadata.json`` content.
        inference: the declarative inference document (see :mod:`medkd3d.export.declarative`).
        export_info: ``input_name``, ``output_name``, ``input_shape`` (no batch dimension), ``bundle``,
            ``checkpoint``, ``overrides``...
        source: where the documents were read from, for error messages.
    """

    metadata: dict[str, Any]
    inference: dict[str, Any]
    export_info: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    @property
    def input_name(self) -> str:
        return str(self.export_info.get("input_name", "image"))

    @property
    def output_name(self) -> str:
        return str(self.export_info.get("output_name", "pred"))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one network input without the batch dimension.

        Raises:
            KeyError: if the export facts lack it.
        """
        if "input_shape" not in self.export_info:
            raise KeyError(
                f"{self.source}: export.json has no 'input_shape'; re-export the model with `medkd3d export`."
            )
        return tuple(int(s) for s in self.export_info["input_shape"])

    @property
    def class_names(self) -> list[str]:
        """Class names in logit order: the inference config's ``class_names``, else the metadata's output channels."""
        names = self.inference.get("class_names")
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return list(names)
        channel_def = self.metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def")
        if channel_def:
            return [channel_def[k] for k in sorted(channel_def, key=int)]
        raise KeyError(
            f"{self.source}: neither inference.json 'class_names' nor metadata.json "
            "network_data_format.outputs.pred.channel_def names the classes; add 'class_names' to the bundle config."
        )

    def build_preprocessing(self) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
        """The exported preprocessing transform (a datalist record -> ``{"image": ...}``), built from plain data.

        Raises:
            UnsafeArtefactError: if the document is not plain, allow-listed data (nothing is run then).
        """
        document = validate_document(self.inference, self.source)
        return build_preprocessing(document["preprocessing"])

    def build_inferer(self) -> Callable[..., Any]:
        """The exported inferer (e.g. ``SimpleInferer``), built from plain data.

        Raises:
            UnsafeArtefactError: if the document is not plain, allow-listed data (nothing is run then).
        """
        return build_inferer(validate_document(self.inference, self.source)["inferer"])

    def to_json_files(self) -> dict[str, str]:
        """The three documents as ``{file name: JSON text}``."""
        documents = (self.metadata, self.inference, self.export_info)
        return {name: json.dumps(doc, indent=4) for name, doc in zip(CONFIG_FILES, documents)}

    @classmethod
    def from_json_files(cls, files: Mapping[str, str | bytes], source: str) -> DeploymentConfig:
        """Rebuild the configuration from ``{file name: JSON text}``.

        Raises:
            ValueError: naming ``source`` and the missing or unreadable document.
            UnsafeArtefactError: (a ``ValueError``) if ``inference.json`` is not plain, allow-listed data.
        """
        missing = [name for name in CONFIG_FILES if not files.get(name)]
        if missing:
            raise ValueError(
                f"{source} lacks {', '.join(missing)}; it was not exported by `medkd3d export` (or a file was not "
                f"copied along). Re-export, or copy {', '.join(CONFIG_FILES)} from the export directory next to it."
            )
        documents = []
        for name in CONFIG_FILES:
            text = files[name]
            try:
                documents.append(json.loads(text.decode() if isinstance(text, bytes) else text))
            except json.JSONDecodeError as error:
                raise ValueError(f"{source}: {name} is not valid JSON ({error}); re-export the model.") from None
        # Refuse a document that is not plain, allow-listed data as soon as the artefact is read.
        validate_document(documents[1], source)
        return cls(*documents, source=source)

    def write(self, directory: str | os.PathLike) -> list[Path]:
        """Write the three documents into ``directory`` (each atomically).

        Returns:
            The written paths.
        """
        return [atomic_write_text(Path(directory) / name, text) for name, text in self.to_json_files().items()]

    @classmethod
    def read_directory(cls, directory: str | os.PathLike) -> DeploymentConfig:
        """Read the three documents from ``directory``.

        Raises:
            ValueError: if one is missing or not JSON.
        """
        directory = Path(directory)
        files = {
            name: (directory / name).read_text(encoding="utf-8")
            for name in CONFIG_FILES
            if (directory / name).is_file()
        }
        return cls.from_json_files(files, source=str(directory))

    @classmethod
    def for_artefact(cls, path: str | os.PathLike) -> DeploymentConfig:
        """The configuration of an exported model: the files beside it, else the ones embedded in it.

        Args:
            path: a ``.onnx``, ``.ts``/``.pt`` TorchScript or ``.engine``/``.plan`` TensorRT file.

        Returns:
            The configuration.

        Raises:
            ValueError: if neither the directory nor the file holds the documents.
            OptionalImportError: for an ONNX file without its documents beside it, when ``onnx`` is not installed.
        """
        path = Path(path)
        if all((path.parent / name).is_file() for name in CONFIG_FILES):
            return cls.read_directory(path.parent)
        readers = {
            ".onnx": read_onnx_metadata,
            ".ts": read_torchscript_extra_files,
            ".pt": read_torchscript_extra_files,
        }
        reader = readers.get(path.suffix)
        if reader is None:
            raise ValueError(
                f"{path}: a TensorRT engine holds no metadata and {', '.join(CONFIG_FILES)} are not beside it; copy them "
                "from the export directory (or rebuild the engine with `medkd3d export --formats tensorrt`)."
            )
        logger.debug("Reading the deployment configuration embedded in %s.", path)
        return cls.from_json_files(reader(path), source=str(path))
