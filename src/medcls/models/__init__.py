"""Models: timm backbones wrapped with their input normalisation."""

from .factory import Classifier, create_model, freeze_backbone_norms, list_models, param_groups, set_backbone_trainable

__all__ = ["Classifier", "create_model", "freeze_backbone_norms", "list_models", "param_groups", "set_backbone_trainable"]
