"""medkd3d: knowledge distillation of 3D teachers into 3D and 2.5D students, built on MONAI.

Subpackages (they depend downward only, see ``DESIGN``):

- :mod:`medkd3d.data`: BraTS discovery, validation, splits, transform pipelines, synthetic BraTS.
- :mod:`medkd3d.networks`: teachers, students, blocks and the model registry.
- :mod:`medkd3d.losses`: knowledge-distillation losses.
- :mod:`medkd3d.engines`: the ``DistillationTrainer``, feature taps and evaluation helpers.
"""

__version__ = "0.1.0"
