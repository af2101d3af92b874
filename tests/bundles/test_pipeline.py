"""``medkd3d pipeline``: the whole job through the bundles, and its command line."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from medkd3d.cli import main
from medkd3d.workflows import pipeline
from medkd3d.workflows.pipeline import QUICK, PipelineSettings, run_pipeline


@pytest.mark.slow
def test_pipeline_trains_distills_evaluates_exports_and_reports(
    bundle_kit, synthetic_brats_root: Path, tmp_path: Path
) -> None:
    student, teacher = "brats_student_effnet3d", "brats_teacher_vggvit3d"
    settings = PipelineSettings(
        out_dir=tmp_path,
        dataset_dir=synthetic_brats_root,
        epochs=1,
        spatial_size=32,
        batch_size=2,
        num_workers=0,
        num_folds=3,
        bundles=[student],  # its teacher is added
        bundle_overrides={b: bundle_kit.network_overrides(b) for b in (student, teacher)},
        latency_repeats=1,
    )
    markdown, table = run_pipeline(settings)

    with table.open(newline="") as stream:
        rows = {row["bundle"]: row for row in csv.DictReader(stream)}
    assert list(rows) == [teacher, student]
    t, s = rows[teacher], rows[student]
    assert (t["role"], s["role"], s["teacher"]) == ("teacher", "student", teacher)
    assert float(s["params_ratio"]) == pytest.approx(int(s["parameters"]) / int(t["parameters"]))
    assert float(s["speedup"]) == pytest.approx(float(t["latency_ms"]) / float(s["latency_ms"]))
    for row in rows.values():
        assert 0.0 <= float(row["auc"]) <= 1.0 and float(row["gflops"]) > 0 and float(row["latency_ms"]) > 0
        assert float(row["export_torchscript_max_abs_diff"]) < 1e-4
        assert torch.jit.load(row["export_torchscript"]) is not None
    text = markdown.read_text()
    assert "## Students relative to their teachers" in text and f"| {student} | {teacher} |" in text
    assert (tmp_path / "datalist.json").is_file() and (tmp_path / student / "eval" / "metrics.json").is_file()


def test_command_line_maps_to_settings(monkeypatch, tmp_path: Path) -> None:
    seen: list[PipelineSettings] = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda s: seen.append(s) or (tmp_path / "r.md", tmp_path / "r.csv"))
    assert (
        main(["pipeline", "--quick", "--out", str(tmp_path), "--epochs", "1", "--bundles", "brats_hdkd_student3d"]) == 0
    )
    (settings,) = seen
    assert settings.out_dir == tmp_path and settings.epochs == 1 and settings.bundles == ["brats_hdkd_student3d"]
    assert settings.spatial_size == QUICK["spatial_size"] and settings.synthetic == QUICK["synthetic"]
    assert settings.num_workers == QUICK["num_workers"] and settings.dataset_dir is None


def test_subject_input_of_2p5d_student_counts_its_stacks(bundle_kit) -> None:
    root = bundle_kit.bundles_dir / "brats_student_effnet25d"
    shape, stacks = pipeline._subject_input(root, {"spatial_size": [40, 36, 32], "num_slices": 5}, slice_stacks=True)
    assert shape == [20, 40, 36] and stacks == 8  # 4 modalities x 5 slices over the axial plane, 8 stacks/subject
    volume = bundle_kit.bundles_dir / "brats_student_effnet3d"
    assert pipeline._subject_input(volume, {"spatial_size": [40, 36, 32]}, slice_stacks=False) == ([4, 40, 36, 32], 1)


def test_unknown_bundle_is_refused() -> None:
    with pytest.raises(ValueError, match="brats_teacher_vggvit3d"):
        pipeline._selected(["brats_student_resnet"])
    assert [m.bundle for m in pipeline._selected(["brats_hdkd_student3d"])] == [
        "brats_hdkd_teacher3d",
        "brats_hdkd_student3d",
    ]
