"""Flax NNX models: image encoders and heads, the text transformer, and the image-text dual encoder."""

from contrastive.models.dual import DualEncoder, TextTower, build_dual_encoder, lit_param_labels, lock_image_tower
from contrastive.models.encoders import MLP, ContrastiveModel, FlatMLP, SmallCNN, build_model
from contrastive.models.text import TextTransformer

__all__ = [
    "MLP",
    "ContrastiveModel",
    "DualEncoder",
    "FlatMLP",
    "SmallCNN",
    "TextTower",
    "TextTransformer",
    "build_dual_encoder",
    "build_model",
    "lit_param_labels",
    "lock_image_tower",
]
