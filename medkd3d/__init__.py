"""medkd3d: knowledge distillation of 3D teachers into 3D and 2.5D students, built on MONAI.

Subpackages (they depend downward only, see ``DESIGN``):

- :mod:`medkd3d.data`: BraTS discovery, validation, splits, transform pipelines, synthetic BraTS.
- :mod:`medkd3d.networks`: teachers, students, blocks and the model registry.
- :mod:`medkd3d.losses`: knowledge-distillation losses.
- :mod:`medkd3d.engines`: the ``DistillationTrainer``, feature taps and evaluation helpers.
- :mod:`medkd3d.bundles`: finding the MONAI bundles, parsing their configs, locating and loading their
  checkpoints and the configuration a checkpoint records (used by export, explain, the pipeline and ablation), running their configs, and the glue the bundle configs
  reference (data preparation, the student's teacher, the training knobs).
- :mod:`medkd3d.pipeline`: ``medkd3d pipeline``, the whole teacher -> student job through the bundles, and its report.
"""

__version__ = "0.1.0"
