"""``medkd3d infer`` with exported models gives the bundle's own ``inference.json`` predictions."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest


def _read_predictions(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as stream:
        return {row["subject"]: row for row in csv.DictReader(stream)}


@pytest.mark.parametrize(
    ("name", "backend", "as_datalist"),
    [("brats_student_effnet25d", "onnxruntime", False), ("brats_student_effnet3d", "torchscript", True)],
)
def test_infer_equals_bundle_inference(
    name, backend, as_datalist, tiny_bundles, exported, synthetic_brats_root, tmp_path, run_cli
):
    from medkd3d.bundles import run_bundle_config
    from medkd3d.data import discover_brats, write_datalist

    tiny = tiny_bundles[name]
    bundle_out = tmp_path / "bundle"
    run_bundle_config(
        tiny.root, "inference.json", workflow_type="infer", dataset_dir=str(synthetic_brats_root),
        ckpt_path=str(tiny.checkpoint), output_dir=str(bundle_out), num_workers=0, **tiny.overrides,
    )  # fmt: skip
    expected = _read_predictions(bundle_out / "predictions.csv")

    source = synthetic_brats_root
    if as_datalist:
        source = write_datalist(discover_brats(synthetic_brats_root), tmp_path / "datalist.json")
    model = exported[name]["onnx" if backend == "onnxruntime" else "torchscript"].path
    out = tmp_path / "predictions.csv"
    assert (
        run_cli(["infer", "--model", str(model), "--input", str(source), "--out", str(out), "--backend", backend]) == 0
    )
    actual = _read_predictions(out)

    assert len(actual) == len(expected) == 12
    assert list(next(iter(actual.values()))) == ["subject", "prob_LGG", "prob_HGG", "predicted", "label"]
    for subject, row in expected.items():
        assert actual[subject]["predicted"] == row["predicted"] and actual[subject]["label"] == row["label"]
        for column in ("prob_LGG", "prob_HGG"):  # equal up to float32 rounding in other kernels
            assert float(actual[subject][column]) == pytest.approx(float(row[column]), abs=1e-4)
    probabilities = {round(float(r["prob_HGG"]), 4) for r in actual.values()}
    assert len(probabilities) > 1, "the model should not predict the same for every subject"


def test_infer_reports_bad_input(exported, tmp_path, run_cli, capsys):
    model = exported["brats_student_effnet3d"]["onnx"].path
    code = run_cli(
        ["infer", "--model", str(model), "--input", str(tmp_path / "nothing"), "--out", str(tmp_path / "p.csv")]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists()
