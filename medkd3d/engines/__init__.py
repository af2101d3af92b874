"""Distillation engines: ``DistillationTrainer``, feature taps, the teacher soft-target cache, strict teacher
checkpoint loading, classification metrics, evaluation helpers, the trivial baseline, batches as plain tensors for
the networks (:mod:`medkd3d.engines.batch`), honest-report helpers (chance levels, retention over chance, AUC
intervals, flags), the Ignite handlers the bundles add to MONAI's (:mod:`medkd3d.engines.handlers`: atomic and
resumable checkpoints, early stopping, metric and probability writers), :class:`AuxiliaryFeatureLoss` (an extra task
on a network's stage features, e.g. tumour compartments), :class:`FitCompartmentReadout` (fits a network's
compartment readout on the training subjects when training ends) and :class:`SliceStackInferer`
(:mod:`medkd3d.engines.inferers`: subject-level predictions of 2.5D networks)."""

from medkd3d.engines.auxiliary import AuxiliaryFeatureLoss
from medkd3d.engines.baseline import (
    DEFAULT_PERCENTILES,
    BaselineResult,
    balanced_logistic_regression,
    evaluate_trivial_baseline,
    has_label,
    intensity_features,
    trivial_baseline,
)
from medkd3d.engines.batch import plain_tensor, prepare_plain_batch
from medkd3d.engines.checkpoint import load_teacher_checkpoint
from medkd3d.engines.evaluation import evaluate_classifier, flatten_metrics, write_metrics
from medkd3d.engines.handlers import (
    AtomicCheckpointSaver,
    ClassificationMetricsWriter,
    ClassProbabilityWriter,
    MetricsStatsHandler,
    RandomStates,
    TrainingCheckpoint,
    ValidationEarlyStopping,
    metric_lines,
)
from medkd3d.engines.honesty import (
    AUC_CHANCE,
    MIN_TEST_SUBJECTS,
    HonestSummary,
    Retention,
    auc_bootstrap_ci,
    auc_ratio,
    chance_levels,
    honesty_flags,
    margin_retention,
    predicts_one_class,
    retention,
    summarize_predictions,
)
from medkd3d.engines.inferers import SliceStackInferer
from medkd3d.engines.metrics import (
    METRIC_NAMES,
    ClassificationMetric,
    ClassificationReport,
    OperatingPoint,
    classification_metrics,
    confusion_matrix,
    predicted_classes,
    roc_auc,
    threshold_operating_points,
    youden_threshold,
)
from medkd3d.engines.readout import FitCompartmentReadout
from medkd3d.engines.soft_targets import (
    SoftTargetCache,
    check_deterministic_teacher_input,
    find_random_transforms,
    precompute_soft_targets,
    teacher_fingerprint,
)
from medkd3d.engines.taps import (
    FeatureTaps,
    feature_info_taps,
    forward_with_features,
    has_two_heads,
    returning_features,
    unwrap_model,
)
from medkd3d.engines.trainer import LOSS_PREFIX, DistillationTrainer, loss_terms

__all__ = [
    "AUC_CHANCE",
    "DEFAULT_PERCENTILES",
    "LOSS_PREFIX",
    "METRIC_NAMES",
    "MIN_TEST_SUBJECTS",
    "AtomicCheckpointSaver",
    "AuxiliaryFeatureLoss",
    "BaselineResult",
    "ClassProbabilityWriter",
    "ClassificationMetric",
    "ClassificationMetricsWriter",
    "ClassificationReport",
    "DistillationTrainer",
    "FeatureTaps",
    "FitCompartmentReadout",
    "HonestSummary",
    "MetricsStatsHandler",
    "OperatingPoint",
    "RandomStates",
    "Retention",
    "SliceStackInferer",
    "SoftTargetCache",
    "TrainingCheckpoint",
    "ValidationEarlyStopping",
    "auc_bootstrap_ci",
    "auc_ratio",
    "balanced_logistic_regression",
    "chance_levels",
    "check_deterministic_teacher_input",
    "classification_metrics",
    "confusion_matrix",
    "evaluate_classifier",
    "evaluate_trivial_baseline",
    "feature_info_taps",
    "find_random_transforms",
    "flatten_metrics",
    "forward_with_features",
    "has_label",
    "has_two_heads",
    "honesty_flags",
    "intensity_features",
    "load_teacher_checkpoint",
    "loss_terms",
    "margin_retention",
    "metric_lines",
    "plain_tensor",
    "precompute_soft_targets",
    "predicted_classes",
    "predicts_one_class",
    "prepare_plain_batch",
    "retention",
    "returning_features",
    "roc_auc",
    "summarize_predictions",
    "teacher_fingerprint",
    "threshold_operating_points",
    "trivial_baseline",
    "unwrap_model",
    "write_metrics",
    "youden_threshold",
]
