"""The export names the bundle configs reference: ``"_target_": "medkd3d.workflows.prepare_for_export"``.

Bundle loading and export live in :mod:`medkd3d.export` (one loader, :func:`medkd3d.export.load_bundle`, and
checked TorchScript/ONNX/TensorRT export, :func:`medkd3d.export.export_model`); :mod:`medkd3d.workflows` builds
on it and ``medkd3d pipeline`` exports through it. The dependency goes one way: :mod:`medkd3d.export` never
imports :mod:`medkd3d.workflows`.
"""

from __future__ import annotations

from medkd3d.export.bundle import load_bundle_network, prepare_for_export

__all__ = ["load_bundle_network", "prepare_for_export"]
