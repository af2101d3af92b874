"""Reading an exported artefact never runs code: its preprocessing is validated data, never evaluated."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import pytest

from medkd3d.export.declarative import DOCUMENT_FORMAT, UnsafeArtefactError, validate_document
from medkd3d.export.deployment import CONFIG_FILES, INFERENCE_FILE, DeploymentConfig

GOOD = {
    "format": DOCUMENT_FORMAT,
    "class_names": ["LGG", "HGG"],
    "preprocessing": [{"transform": "medkd3d.data.volume_transforms", "args": {"spatial_size": [32, 32, 32]}}],
    "inferer": {"transform": "SimpleInferer", "args": {}},
}


def _touch(marker: Path) -> str:
    """Python source that creates ``marker`` when evaluated (what an attacker would plant)."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def _payloads(marker: Path) -> dict[str, dict]:
    """Inference documents that would create ``marker`` if anything in them were evaluated or instantiated."""
    expression = {**GOOD, "preprocessing": [{"transform": "medkd3d.data.volume_transforms",
                                              "args": {"spatial_size": f"${_touch(marker)}"}}]}  # fmt: skip
    target = {
        **GOOD,
        "preprocessing": [
            {"transform": "medkd3d.data.volume_transforms", "args": {}},
            {"_target_": "subprocess.call", "args": [sys.executable, "-c", _touch(marker)]},
        ],
    }
    # the layout of a MONAI config, as artefacts of earlier medkd3d versions carried (and MONAI's ckpt_export)
    monai_config = {
        "imports": [f"${_touch(marker)}"],
        "preprocessing": {"_target_": "subprocess.call", "args": [sys.executable, "-c", _touch(marker)]},
        "inferer": {"_target_": "SimpleInferer"},
        "class_names": ["LGG", "HGG"],
    }
    unknown = {**GOOD, "inferer": {"transform": "subprocess.call", "args": {"args": ["true"]}}}
    # an allow-listed transform whose string argument MONAI would import (LoadImaged's reader is looked up by name)
    reader = {
        **GOOD,
        "preprocessing": [{"transform": "LoadImaged", "args": {"keys": "image", "reader": "antigravity.x"}}],
    }
    return {"expression": expression, "target": target, "monai_config": monai_config, "unknown": unknown,
            "reader": reader}  # fmt: skip


def test_plain_document_is_accepted() -> None:
    assert validate_document(copy.deepcopy(GOOD), "model.onnx") == GOOD
    deployment = DeploymentConfig({}, copy.deepcopy(GOOD), {}, source="model.onnx")
    assert callable(deployment.build_preprocessing()) and callable(deployment.build_inferer())


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("expression", "MONAI expression"),
        ("target", "_target_"),
        ("monai_config", "MONAI expression"),
        ("unknown", "not allowed"),
        ("reader", "expected one of"),
    ],
)
def test_payloads_are_refused(kind: str, message: str, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    document = _payloads(marker)[kind]
    with pytest.raises(UnsafeArtefactError, match=message) as raised:
        DeploymentConfig({}, document, {}, source="evil/model.onnx").build_preprocessing()
    assert "evil/model.onnx" in str(raised.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({**GOOD, "format": None}, "re-export"),
        ({**GOOD, "preprocessing": [{"transform": "Resized", "args": {"keys": "image"}}]}, "needs spatial_size"),
        ({**GOOD, "preprocessing": [{"transform": "NormalizeIntensityd", "args": {"keys": "image", "x": 1}}]}, "x"),
        ({**GOOD, "preprocessing": [{"transform": "Orientationd", "args": {"keys": "%x", "axcodes": "RAS"}}]}, "%x"),
        ({**GOOD, "class_names": "LGG"}, "class_names"),
        ({**GOOD, "extra": 1}, "unknown entries"),
    ],
)
def test_malformed_documents_are_refused(document: dict, message: str) -> None:
    with pytest.raises(UnsafeArtefactError, match=message):
        validate_document(document, "model.onnx")


def _exported_copy(exported, name: str, fmt: str, directory: Path) -> Path:
    """One exported artefact copied alone (so it reads its embedded documents, not the files beside it)."""
    source = exported[name][fmt].path
    directory.mkdir()
    return Path(shutil.copy(source, directory / source.name))


def _plant_onnx(path: Path, document: dict) -> None:
    import onnx

    from medkd3d.export.embedded import set_onnx_metadata

    model = onnx.load(str(path))
    set_onnx_metadata(model, {INFERENCE_FILE: json.dumps(document)})
    onnx.save(model, str(path))


def _plant_torchscript(path: Path, document: dict) -> None:
    import torch

    from medkd3d.export.embedded import read_torchscript_extra_files

    files = read_torchscript_extra_files(path)
    files[INFERENCE_FILE] = json.dumps(document)
    module = torch.jit.load(str(path))
    torch.jit.save(module, str(path), _extra_files=files)


@pytest.mark.parametrize("kind", ["expression", "target", "monai_config"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_infer_refuses_planted_payload(kind, fmt, exported, synthetic_brats_root, tmp_path, run_cli, capsys) -> None:
    marker = tmp_path / "pwned"
    model = _exported_copy(exported, "brats_student_effnet3d", fmt, tmp_path / "evil")
    (_plant_onnx if fmt == "onnx" else _plant_torchscript)(model, _payloads(marker)[kind])
    out = tmp_path / "predictions.csv"

    code = run_cli(["infer", "--model", str(model), "--input", str(synthetic_brats_root), "--out", str(out)])

    assert code == 2
    error = capsys.readouterr().err
    assert str(model) in error and "refusing this artefact" in error.lower()
    assert not marker.exists(), "code from the artefact ran"
    assert not out.exists()


def test_configs_beside_an_engine_are_validated(exported, tmp_path: Path) -> None:
    """A TensorRT engine reads the documents beside it: a payload there is refused as well (no GPU needed)."""
    marker = tmp_path / "pwned"
    directory = tmp_path / "deployed"
    directory.mkdir()
    for name in CONFIG_FILES:
        shutil.copy(exported["brats_student_effnet3d"]["onnx"].path.parent / name, directory / name)
    (directory / INFERENCE_FILE).write_text(json.dumps(_payloads(marker)["monai_config"]))
    engine = directory / "model.engine"
    engine.write_bytes(b"engine bytes")
    with pytest.raises(UnsafeArtefactError, match=str(directory)):
        DeploymentConfig.for_artefact(engine)
    assert not marker.exists()


def test_export_carries_declarative_preprocessing(exported) -> None:
    """What an export writes passes the validation, and holds the bundle's resolved values only."""
    from medkd3d.export.embedded import read_onnx_metadata

    document = json.loads(read_onnx_metadata(exported["brats_student_effnet25d"]["onnx"].path)[INFERENCE_FILE])
    assert validate_document(document, "model.onnx")["format"] == DOCUMENT_FORMAT
    (step,) = document["preprocessing"]
    assert step["transform"] == "medkd3d.data.slice_stack_transforms"
    assert step["args"]["num_stacks"] >= 1 and step["args"]["train"] is False
