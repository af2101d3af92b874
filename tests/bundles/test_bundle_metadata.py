"""Every bundle's ``metadata.json`` has what the MONAI Bundle specification requires, offline.

MONAI's ``verify_metadata`` downloads the model zoo's JSON schema, which a machine without internet cannot do; this
checks the same required fields and types of the specification (docs: "MONAI Bundle Specification", metadata.json)
and that the declared input and output agree with the bundle's own configuration.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medkd3d.bundles import BUNDLE_NAMES, find_bundle_root

#: Top-level fields the specification requires, with their JSON types.
REQUIRED = {
    "version": str,
    "changelog": dict,
    "monai_version": str,
    "pytorch_version": str,
    "numpy_version": str,
    "task": str,
    "description": str,
    "authors": str,
    "copyright": str,
    "network_data_format": dict,
}
#: Fields of every input and output of ``network_data_format``.
TENSOR_FIELDS = {"type", "format", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data"}


@pytest.mark.parametrize("bundle", BUNDLE_NAMES)
def test_metadata_has_the_specifications_fields(bundle: str) -> None:
    configs = Path(find_bundle_root(bundle)) / "configs"
    meta = json.loads((configs / "metadata.json").read_text())
    for key, kind in REQUIRED.items():
        assert isinstance(meta.get(key), kind), f"{bundle}: metadata field {key!r} missing or not {kind.__name__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"]) and meta["version"] in meta["changelog"]
    data = meta["network_data_format"]
    assert set(data) >= {"inputs", "outputs"} and data["inputs"] and data["outputs"]
    for side in ("inputs", "outputs"):
        for name, tensor in data[side].items():
            missing = TENSOR_FIELDS - set(tensor)
            assert not missing, f"{bundle}: {side}/{name} lacks {sorted(missing)}"
            channels = tensor.get("channel_def", {})
            assert not channels or len(channels) == tensor["num_channels"], f"{bundle}: {side}/{name} channel_def"
    # the prediction's channels are the bundle's classes, in label order
    train = json.loads((configs / "train.json").read_text())
    pred = data["outputs"]["pred"]
    assert [pred["channel_def"][str(i)] for i in range(pred["num_channels"])] == train["class_names"]
