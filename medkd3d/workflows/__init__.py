"""Glue between the medkd3d package and its MONAI bundles, and the one-command pipeline.

Bundle configs reference these by dotted path (``"_target_": "medkd3d.workflows.prepare_dataset"``), so the
logic lives in the package, tested, and never in copied config code:

- data: :func:`prepare_dataset` (synthesise the embedded default when ``dataset_dir`` is missing, discover or
  load the datalist, validate every file before training), :func:`split_dataset` (patient-level stratified
  folds), :func:`inference_records` (unlabelled subjects);
- checkpoints: :func:`load_teacher`, :func:`require_checkpoint`, :func:`require_teacher_checkpoint` (a clear
  "train the teacher first");
- handlers: :class:`AtomicCheckpointSaver`, :class:`TrainingCheckpoint` (resume), :class:`ValidationEarlyStopping`,
  :class:`ClassificationMetricsWriter`, :class:`ClassProbabilityWriter` (per-subject probabilities CSV);
- :class:`SliceStackInferer` (subject-level predictions of 2.5D networks);
- export: :func:`prepare_for_export` (``network_export`` of the bundles), :func:`load_bundle_network`, both from
  :mod:`medkd3d.export`, which ``medkd3d pipeline`` exports through;
- :func:`find_bundle_root`, :func:`run_bundle_config`; the ``medkd3d pipeline`` command
  (:mod:`medkd3d.workflows.pipeline`).
"""

from __future__ import annotations

from medkd3d.utils import lazy_exports

#: Public name -> submodule. Attributes load on first access (PEP 562), so ``medkd3d --help`` (which imports
#: :mod:`medkd3d.workflows.pipeline`) does not pull in torch and MONAI.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["BUNDLE_NAMES", "bundle_command", "find_bundle_root", "run_bundle_config"], "bundle"),
    **dict.fromkeys(
        ["SYNTHETIC_DEFAULT", "ensure_dataset", "inference_records", "prepare_dataset", "split_dataset"], "data"
    ),
    **dict.fromkeys(["load_bundle_network", "prepare_for_export"], "export"),
    **dict.fromkeys(
        [
            "AtomicCheckpointSaver",
            "ClassProbabilityWriter",
            "ClassificationMetricsWriter",
            "MetricsStatsHandler",
            "TrainingCheckpoint",
            "ValidationEarlyStopping",
        ],
        "handlers",
    ),
    "SliceStackInferer": "inferers",
    **dict.fromkeys(["load_teacher", "require_checkpoint", "require_teacher_checkpoint"], "teacher"),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
