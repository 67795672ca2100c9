"""Models: timm backbones wrapped with their input normalisation."""

from .factory import (
    STEMS,
    Classifier,
    create_model,
    freeze_backbone_norms,
    list_models,
    param_groups,
    set_backbone_trainable,
)

__all__ = ["STEMS", "Classifier", "create_model", "freeze_backbone_norms", "list_models", "param_groups",
           "set_backbone_trainable"]
