"""Models selected by `model.name` (see resnet.MODELS)."""
from classbias_jax.models.resnet import MODELS, create_model

__all__ = ['MODELS', 'create_model']
