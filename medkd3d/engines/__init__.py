"""Distillation engines: ``DistillationTrainer``, feature taps, the teacher soft-target cache, strict teacher
checkpoint loading, classification metrics and evaluation helpers."""

from medkd3d.engines.checkpoint import load_teacher_checkpoint
from medkd3d.engines.evaluation import evaluate_classifier, flatten_metrics, write_metrics
from medkd3d.engines.metrics import (
    METRIC_NAMES,
    ClassificationMetric,
    ClassificationReport,
    classification_metrics,
    confusion_matrix,
    roc_auc,
)
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
    "LOSS_PREFIX",
    "METRIC_NAMES",
    "ClassificationMetric",
    "ClassificationReport",
    "DistillationTrainer",
    "FeatureTaps",
    "SoftTargetCache",
    "check_deterministic_teacher_input",
    "classification_metrics",
    "confusion_matrix",
    "evaluate_classifier",
    "feature_info_taps",
    "find_random_transforms",
    "flatten_metrics",
    "forward_with_features",
    "has_two_heads",
    "load_teacher_checkpoint",
    "loss_terms",
    "precompute_soft_targets",
    "returning_features",
    "roc_auc",
    "teacher_fingerprint",
    "unwrap_model",
    "write_metrics",
]
