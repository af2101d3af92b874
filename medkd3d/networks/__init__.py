"""Teachers, students, building blocks and the model registry.

``create_model(name)`` and ``list_models()`` import every model family on first use, so they see all models
while ``import medkd3d.networks`` itself stays light.
"""

from medkd3d.networks.placement import has_3d_convolutions, place_network
from medkd3d.networks.registry import (
    ModelEntry,
    create_model,
    feature_stages,
    get_model_entry,
    list_models,
    register_model,
)

__all__ = [
    "ModelEntry",
    "create_model",
    "feature_stages",
    "get_model_entry",
    "has_3d_convolutions",
    "list_models",
    "place_network",
    "register_model",
]
