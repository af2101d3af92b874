"""medkd3d.losses: knowledge-distillation losses.

Every distillation loss is an ``nn.Module`` whose ``forward`` returns ``(total, components)``: ``total`` a scalar
tensor and ``components`` a ``dict[str, Tensor]`` of the named *weighted* terms, which sum to ``total``.

- Logit-level losses are called as ``loss(student_logits, teacher_logits, target)``: :class:`KDLoss`,
  :class:`TokenDistillationLoss` (two-head students pass ``(cls_logits, dist_logits)``), :class:`DKDLoss`,
  :class:`DISTLoss` and :class:`MultiTeacherKDLoss` (``teacher_logits`` is a sequence, one tensor per teacher).
- Feature-level losses are called as ``loss(student_features, teacher_features, **batch_kwargs)``:
  :class:`FeatureKDLoss` (HDKD's direct stage-wise MSE).
- The supervised term of every loss is a replaceable ``ce_loss=`` module, so class-weighted cross-entropy
  (:func:`class_weights_from_labels`) and :class:`FocalLoss` drop in for imbalanced grades.

Losses are orthogonal and combine as a weighted sum; e.g. HDKD is ``TokenDistillationLoss()`` (alpha=0.5, T=1)
plus ``FeatureKDLoss()`` (lambda=10, beta=1), summed by the ``DistillationTrainer``.
"""

from .dist import DISTLoss, pearson_distance
from .dkd import DKDLoss, decoupled_kl_terms
from .feature import FeatureKDLoss
from .imbalance import FocalLoss, class_weights_from_counts, class_weights_from_labels
from .kd import KDLoss, kl_divergence
from .multi_teacher import MultiTeacherKDLoss
from .token import TokenDistillationLoss

# --- LOSS-B: cross-architecture and volume-to-slice losses (cross_arch.py, volume_to_slice.py) -------------------
# isort: split
# (explicit "X as X" re-exports: the names reach ``__all__`` through ``_LOSS_B_NAMES``, which linters cannot follow)
from .cross_arch import AdversarialFeatureLoss as AdversarialFeatureLoss
from .cross_arch import CrossArchitectureKDLoss as CrossArchitectureKDLoss
from .projectors import FeatureDiscriminator as FeatureDiscriminator
from .projectors import GradientReversal as GradientReversal
from .projectors import GroupWiseLinearProjector as GroupWiseLinearProjector
from .projectors import PartiallyCrossAttentionProjector as PartiallyCrossAttentionProjector
from .volume_to_slice import VolumeToSliceFeatureLoss as VolumeToSliceFeatureLoss
from .volume_to_slice import VolumeToSliceKDLoss as VolumeToSliceKDLoss

_LOSS_B_NAMES = [
    "AdversarialFeatureLoss",
    "CrossArchitectureKDLoss",
    "FeatureDiscriminator",
    "GradientReversal",
    "GroupWiseLinearProjector",
    "PartiallyCrossAttentionProjector",
    "VolumeToSliceFeatureLoss",
    "VolumeToSliceKDLoss",
]
# --- end LOSS-B ---------------------------------------------------------------------------------------------------

__all__ = [
    "DISTLoss",
    "DKDLoss",
    "FeatureKDLoss",
    "FocalLoss",
    "KDLoss",
    "MultiTeacherKDLoss",
    "TokenDistillationLoss",
    "class_weights_from_counts",
    "class_weights_from_labels",
    "decoupled_kl_terms",
    "kl_divergence",
    "pearson_distance",
    # LOSS-B names go here.
    *_LOSS_B_NAMES,
]
