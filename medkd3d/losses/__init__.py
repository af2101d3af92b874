"""medkd3d.losses: knowledge-distillation losses.

Every distillation loss is an ``nn.Module`` whose ``forward`` returns ``(total, components)``: ``total`` a scalar
tensor and ``components`` a ``dict[str, Tensor]`` of the named *weighted* terms, which sum to ``total``.

- Logit-level losses are called as ``loss(student_logits, teacher_logits, target)``: :class:`KDLoss`,
  :class:`TokenDistillationLoss` (two-head students pass ``(cls_logits, dist_logits)``), :class:`DKDLoss`,
  :class:`DISTLoss` and :class:`MultiTeacherKDLoss` (``teacher_logits`` is a sequence, one tensor per teacher).
- Feature-level losses are called as ``loss(student_features, teacher_features, **batch_kwargs)``:
  :class:`FeatureKDLoss` (HDKD's direct stage-wise MSE), :class:`CrossArchitectureKDLoss` (partially-cross-attention
  and group-wise linear projectors, optional adversarial multi-view term) and :class:`VolumeToSliceFeatureLoss`
  (3D teacher features at the 2.5D student's slice positions, needs ``slice_index``).
- The supervised term of every loss is a replaceable ``ce_loss=`` module, so class-weighted cross-entropy
  (:func:`class_weights_from_labels`) and :class:`FocalLoss` drop in for imbalanced grades.
- Unlabelled items (label :data:`UNLABELLED` = ``-1``, subjects without a grade) are distilled too:
  :class:`KDLoss` (and :class:`VolumeToSliceKDLoss`) and :class:`TokenDistillationLoss` compute their teacher term
  on every item and their supervised term on the labelled ones only (:func:`supervised_term`,
  :func:`labelled_mask`); CE-only training uses :class:`LabelledCrossEntropyLoss`, which refuses them clearly.

- :class:`TumourCompartmentLoss` is an auxiliary task, not a distillation loss: it teaches a network's feature maps
  the tumour compartments of the training segmentations (``loss(features, seg)``, added by the
  :class:`~medkd3d.engines.AuxiliaryFeatureLoss` handler).

Losses are orthogonal and combine as a weighted sum; e.g. HDKD is ``TokenDistillationLoss()`` (alpha=0.5, T=1)
plus ``FeatureKDLoss()`` (lambda=10, beta=1), summed by the ``DistillationTrainer``.
"""

from .cross_arch import AdversarialFeatureLoss, CrossArchitectureKDLoss
from .dist import DISTLoss, pearson_distance
from .dkd import DKDLoss, decoupled_kl_terms
from .feature import FeatureKDLoss
from .imbalance import FocalLoss, LabelledCrossEntropyLoss, class_weights_from_counts, class_weights_from_labels
from .kd import UNLABELLED, KDLoss, kl_divergence, labelled_mask, supervised_term
from .multi_teacher import MultiTeacherKDLoss
from .projectors import (
    FeatureDiscriminator,
    GradientReversal,
    GroupWiseLinearProjector,
    PartiallyCrossAttentionProjector,
)
from .segmentation import BRATS_COMPARTMENTS, TumourCompartmentLoss
from .token import TokenDistillationLoss
from .volume_to_slice import VolumeToSliceFeatureLoss, VolumeToSliceKDLoss

__all__ = [
    "BRATS_COMPARTMENTS",
    "UNLABELLED",
    "AdversarialFeatureLoss",
    "CrossArchitectureKDLoss",
    "DISTLoss",
    "DKDLoss",
    "FeatureDiscriminator",
    "FeatureKDLoss",
    "FocalLoss",
    "GradientReversal",
    "GroupWiseLinearProjector",
    "KDLoss",
    "LabelledCrossEntropyLoss",
    "MultiTeacherKDLoss",
    "PartiallyCrossAttentionProjector",
    "TokenDistillationLoss",
    "TumourCompartmentLoss",
    "VolumeToSliceFeatureLoss",
    "VolumeToSliceKDLoss",
    "class_weights_from_counts",
    "class_weights_from_labels",
    "decoupled_kl_terms",
    "kl_divergence",
    "labelled_mask",
    "pearson_distance",
    "supervised_term",
]
