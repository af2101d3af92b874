"""Teachers, students, building blocks and the model registry.

Importing this package registers every model, so ``create_model(name)`` and ``list_models()`` see them all.
"""

from medkd3d.networks.registry import ModelEntry, create_model, get_model_entry, list_models, register_model

# --- model families (each import registers its models) ---
# NET-A: VGG / ViT / hybrid teacher (added by the network-zoo work)
# NET-B: HDKD, EfficientNet 3D / 2.5D (added by the network-zoo work)

__all__ = ["ModelEntry", "create_model", "get_model_entry", "list_models", "register_model"]
