"""The command line answers a refusal with one ``error:`` line and a non-zero exit code; ``--debug`` adds the
traceback; a bug keeps its traceback."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import medkd3d.data.cli as data_cli
from medkd3d.cli import REFUSED, find_refusal, main


def _handler_raising(monkeypatch: pytest.MonkeyPatch, action) -> None:
    """Make ``medkd3d datalist`` run ``action`` instead of discovery (the handler is bound when the parser is built)."""

    def handler(args: argparse.Namespace) -> int:
        action()
        return 0

    monkeypatch.setattr(data_cli, "_datalist", handler)


def test_monai_instantiation_error_is_reported_by_its_cause(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from monai.bundle import ConfigParser

    missing = tmp_path / "missing.json"
    parser = ConfigParser({"data": {"_target_": "medkd3d.data.load_datalist", "path": str(missing)}})
    _handler_raising(monkeypatch, lambda: parser.get_parsed_content("data"))

    assert main(["datalist", str(tmp_path), "--out", str(tmp_path / "d.json")]) == REFUSED
    err = capsys.readouterr().err
    assert f"error: datalist {missing} not found" in err
    assert "Traceback" not in err and "Failed to instantiate" not in err


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def refuse() -> None:
        raise ValueError("spatial_size must be positive")

    _handler_raising(monkeypatch, refuse)
    for args in (["--debug", "datalist", "x", "--out", "d.json"], ["datalist", "x", "--out", "d.json", "--debug"]):
        assert main(args) == REFUSED
        err = capsys.readouterr().err
        assert "Traceback" in err and "error: spatial_size must be positive" in err
    assert main(["datalist", "x", "--out", "d.json"]) == REFUSED
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--debug" in err


@pytest.mark.parametrize("damage", ["garbage", "pickle", "truncated"])
def test_a_bad_checkpoint_names_the_file(
    damage: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    bad = tmp_path / "best.pt"
    torch.save({"state_dict": {"w": torch.zeros(64)}}, bad)
    content = {
        "garbage": b"this is not a checkpoint",
        "pickle": b"garbage\x80\x02zz",
        "truncated": bad.read_bytes()[:200],
    }
    bad.write_bytes(content[damage])
    _handler_raising(monkeypatch, lambda: torch.load(bad, weights_only=True))

    assert main(["datalist", str(tmp_path), "--out", str(tmp_path / "d.json")]) == REFUSED
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"cannot read the file {bad}" in err


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug() -> None:
        raise ZeroDivisionError("a bug, not bad input")

    _handler_raising(monkeypatch, bug)
    with pytest.raises(ZeroDivisionError):
        main(["datalist", "x", "--out", "d.json"])


def test_parity_error_is_found_behind_a_runtime_error() -> None:
    from medkd3d.export.parity import ParityError

    class OutOfTolerance(ParityError):
        def __init__(self) -> None:
            RuntimeError.__init__(self, "ONNX logits differ by 0.3")

    try:
        try:
            raise OutOfTolerance()
        except ParityError as inner:
            raise RuntimeError("Failed to instantiate component 'export'") from inner
    except RuntimeError as outer:
        assert isinstance(find_refusal(outer), ParityError)
    assert find_refusal(RuntimeError("CUDA error: device-side assert")) is None


@pytest.mark.parametrize("command", ["split", "check-data"])
def test_a_malformed_datalist_record_is_a_validation_error_naming_the_record(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    datalist = tmp_path / "datalist.json"
    record = {"subject": "s1", "image": ["t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz", "flair.nii.gz"], "label": 0}
    datalist.write_text(json.dumps({"training": [record, "s2"], "class_names": ["LGG", "HGG"]}))
    args = [command, str(datalist)] + (["--out", str(tmp_path / "splits.json")] if command == "split" else [])

    assert main(args) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "AttributeError" not in err
    assert "training[1]" in err and str(datalist) in err and "not an object" in err
