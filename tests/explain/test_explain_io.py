"""Explanations on the input's grid: NIfTI affine and shape, world-space orientation, PNG overlays, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from medkd3d.data import discover_brats
from medkd3d.data.pipelines import volume_transforms
from medkd3d.explain.explainer import ExplainModel, explain_subject
from medkd3d.explain.io import save_map_nifti, save_overlay_png, write_json


class RightHalf(nn.Module):
    """Feature map: the mean over modalities, kept only in the half of the volume with the larger first index."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = x.mean(dim=1, keepdim=True)
        keep = torch.arange(x.shape[2], device=x.device) >= x.shape[2] // 2
        return features * keep.reshape(1, 1, -1, 1, 1)


class RightHemisphereModel(nn.Module):
    """Class 1 is decided by the brain's right hemisphere only (the preprocessing orients volumes to RAS)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = RightHalf()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.features(x).abs().mean(dim=(1, 2, 3, 4))
        return torch.stack([torch.zeros_like(score), 5 * score], dim=1)


@pytest.fixture(scope="module")
def subject(synthetic_brats_root: Path) -> dict:
    return discover_brats(synthetic_brats_root)["training"][0]


def test_map_is_on_the_input_grid_and_points_at_the_right_hemisphere(subject: dict, tmp_path: Path) -> None:
    model = ExplainModel(RightHemisphereModel(), volume_transforms((32, 32, 32)))
    explanation = explain_subject(model, subject, method="gradcam", target_class=1, layer="features")
    source = nib.load(subject["image"][0])
    brain = np.asarray(source.dataobj) != 0
    assert explanation.map.shape == source.shape
    assert explanation.coverage[brain].all() and not explanation.coverage.all()  # the brain crop the network saw
    np.testing.assert_array_equal(explanation.affine, source.affine)
    # [0, 1] in the preprocessed space; resampling back can only soften the peak a little
    assert 0.9 < explanation.map.max() <= 1.0 and explanation.map.min() >= 0

    path = save_map_nifti(explanation.map, explanation.affine, tmp_path / "cam.nii.gz")
    saved = nib.load(path)
    assert saved.shape == source.shape and saved.get_data_dtype() == np.float32
    np.testing.assert_allclose(saved.affine, source.affine)
    np.testing.assert_allclose(saved.get_fdata(), explanation.map)

    # The synthetic files are stored flipped (LPS-like axes); the inverse preprocessing must undo the RAS
    # reorientation, so the importance lies at world x > the brain's centre (the right hemisphere).
    ijk = np.stack(np.nonzero(brain), axis=1)
    world_x = (ijk @ source.affine[:3, :3].T + source.affine[:3, 3])[:, 0]
    centre = (world_x.min() + world_x.max()) / 2
    values = explanation.map[brain]
    assert values[world_x > centre].sum() / values.sum() > 0.95


def test_overlay_png_is_written_atomically(subject: dict, tmp_path: Path) -> None:
    flair = nib.load(subject["image"][3])
    background = np.asarray(flair.dataobj, dtype=np.float32)
    cam = np.zeros_like(background)
    cam[10:20, 10:20, 10:20] = np.linspace(0, 1, 1000).reshape(10, 10, 10)
    path = save_overlay_png(background, cam, flair.affine, tmp_path / "figs" / "overlay.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["overlay.png"]  # no temporary file left behind
    with pytest.raises(ValueError, match="differ in shape"):
        save_overlay_png(background, cam[:-1], flair.affine, tmp_path / "bad.png")


def test_write_json_is_strict(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a.json", {"r": float("nan"), "v": np.float32(0.5), "shape": np.array([1, 2])})
    assert json.loads(path.read_text()) == {"r": None, "v": 0.5, "shape": [1, 2]}
