"""Explainability for 3D and 2.5D classifiers: Grad-CAM, Score-CAM and occlusion maps, overlays and
teacher-student agreement.

- :mod:`~medkd3d.explain.cam`: the map methods (:func:`grad_cam` and :func:`occlusion_map` through MONAI,
  :class:`ScoreCAM`/:func:`score_cam` batched), :func:`normalize_map` (1 = most important) and
  :func:`default_target_layer`;
- :mod:`~medkd3d.explain.slices`: per-stack maps of 2.5D networks placed back into the volume;
- :mod:`~medkd3d.explain.explainer`: :func:`explain_subject` (preprocess, explain, invert onto the input grid)
  and :func:`explain_volume` (a preprocessed volume, in its own space);
- :mod:`~medkd3d.explain.agreement`: Pearson, top-fraction Dice/IoU and in-tumour mass of two maps;
- :mod:`~medkd3d.explain.io`: NIfTI with the input's affine, tri-planar PNG overlays, JSON;
- :mod:`~medkd3d.explain.bundle`: :func:`load_bundle_model` for ``medkd3d explain --bundle``.
"""

from __future__ import annotations

from medkd3d.utils import lazy_exports

#: Public name -> submodule. Attributes load on first access (PEP 562), so ``medkd3d --help`` (which imports
#: :mod:`medkd3d.explain.cli`) does not pull in torch and MONAI.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        [
            "describe_agreement",
            "map_agreement",
            "mass_inside",
            "pearson_correlation",
            "top_fraction_mask",
            "top_fraction_overlap",
        ],
        "agreement",
    ),
    "load_bundle_model": "bundle",
    **dict.fromkeys(
        [
            "METHODS",
            "LayerHooks",
            "ScoreCAM",
            "compute_map",
            "default_target_layer",
            "grad_cam",
            "normalize_map",
            "occlusion_map",
            "predicted_classes",
            "score_cam",
        ],
        "cam",
    ),
    **dict.fromkeys(
        ["ExplainModel", "Explanation", "VolumeExplanation", "explain_subject", "explain_volume"], "explainer"
    ),
    **dict.fromkeys(["save_map_nifti", "save_overlay_png", "write_json"], "io"),
    **dict.fromkeys(["place_slice_maps", "slice_centres", "split_slice_pipeline", "with_num_stacks"], "slices"),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
