"""medkd3d's MONAI bundles from Python: finding, parsing and loading them, running their configs, and the glue their
configs reference by dotted path (``"_target_": "medkd3d.bundles.prepare_dataset"``), so that logic lives in the
package, tested, and never in copied config code.

- :mod:`medkd3d.bundles.io`, the one low-level owner of bundles and checkpoints (at import it loads nothing else
  of medkd3d but :mod:`medkd3d.utils`, so every subpackage may use it): :func:`find_bundle_root` (the ``bundle_root``
  of every bundle config), :func:`teacher_of`, :func:`list_profiles`, :func:`bundle_parser`,
  :func:`require_checkpoint` (the one existence check), :func:`load_weights`, :func:`build_bundle_network` and the
  configuration a checkpoint records (:func:`run_config`, :func:`read_checkpoint_config`, ...);
- :mod:`medkd3d.bundles.run`: :func:`run_bundle_config` (MONAI's ``ConfigWorkflow``, profiles merged after the
  configs), :func:`evaluate_bundle` (a trained run's ``evaluate.json``) and :class:`BundleOutOfMemoryError` (the
  settings that make a run fit);
- :mod:`medkd3d.bundles.data`: :func:`prepare_dataset` (synthesise the embedded default when ``dataset_dir`` is
  missing, discover or load the datalist, validate every file before training), :func:`split_dataset`
  (patient-level stratified folds), :func:`split_side`, :func:`threshold_records` (the subjects the decision
  threshold is chosen on), :func:`drop_last_batch`, :func:`inference_records`;
- :mod:`medkd3d.bundles.teacher`: :func:`load_teacher` (a student's frozen teacher, built as it was trained),
  :func:`require_teacher_checkpoint` (a clear "train the teacher first");
- :mod:`medkd3d.bundles.training`: the bundles' knob ``model_selection`` (:func:`selects_best_checkpoint`) and the
  student bundles' ``kd_mode``, ``train_per_class``, ``unlabelled_train`` (:func:`build_trainer`,
  :func:`training_records`, :func:`labelled_pred_and_label`).

The bundles' Ignite handlers and :class:`~medkd3d.engines.SliceStackInferer` are in :mod:`medkd3d.engines`, their
export entry :func:`~medkd3d.export.prepare_for_export` in :mod:`medkd3d.export`, and ``medkd3d pipeline`` in
:mod:`medkd3d.pipeline`.
"""

from __future__ import annotations

from medkd3d.utils import lazy_exports

#: Public name -> submodule. Attributes load on first access (PEP 562): finding a bundle (``medkd3d --help``, the
#: low-level users in export and explain) imports neither torch nor the glue that builds on the rest of medkd3d.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        [
            "BUNDLE_NAMES",
            "CONFIG_KEY",
            "PROFILES_DIR",
            "BundleNetwork",
            "attach_config",
            "build_bundle_network",
            "bundle_command",
            "bundle_parser",
            "check_checkpoint_config",
            "checkpoint_config",
            "class_names_of",
            "compare_checkpoint_config",
            "default_checkpoint",
            "find_bundle_root",
            "list_profiles",
            "load_weights",
            "network_arguments",
            "profile_configs",
            "read_checkpoint_config",
            "read_profiles",
            "recorded_overrides",
            "require_checkpoint",
            "run_config",
            "teacher_of",
            "tiny_overrides",
        ],
        "io",
    ),
    **dict.fromkeys(
        ["BundleOutOfMemoryError", "bundle_logging_file", "evaluate_bundle", "is_out_of_memory", "run_bundle_config"],
        "run",
    ),
    **dict.fromkeys(
        [
            "SYNTHETIC_DEFAULT",
            "drop_last_batch",
            "ensure_dataset",
            "inference_records",
            "prepare_dataset",
            "split_dataset",
            "split_side",
            "threshold_records",
        ],
        "data",
    ),
    **dict.fromkeys(["load_teacher", "require_teacher_checkpoint"], "teacher"),
    **dict.fromkeys(
        [
            "KD_MODES",
            "MODEL_SELECTIONS",
            "UNLABELLED",
            "build_trainer",
            "labelled_pred_and_label",
            "selects_best_checkpoint",
            "training_records",
            "unique_parameters",
        ],
        "training",
    ),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
