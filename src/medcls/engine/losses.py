"""Losses: cross-entropy (class weights, label smoothing), focal, BCE for multilabel."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..choices import Loss, check_choice
from ..errors import ConfigError


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017) on softmax probabilities, optional class weights (alpha)."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight if weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        ce = F.nll_loss(logp, target, weight=self.weight, reduction="none")
        if self.label_smoothing:
            smooth = -logp.mean(dim=1)
            ce = (1 - self.label_smoothing) * ce + self.label_smoothing * smooth
        pt = logp.gather(1, target[:, None])[:, 0].exp()
        return ((1 - pt) ** self.gamma * ce).mean()


def class_weights(labels: np.ndarray, num_classes: int, spec: str | list[float]) -> torch.Tensor | None:
    """'none' -> None; 'balanced' -> n / (k * count_c) (as scikit-learn); a list -> as given."""
    if isinstance(spec, list):
        if len(spec) != num_classes:
            raise ConfigError(f"train.class_weights has {len(spec)} values for {num_classes} classes")
        return torch.tensor(spec, dtype=torch.float32)
    if spec == "none":
        return None
    if labels.ndim == 2:  # multilabel: pos_weight = negatives / positives per label
        pos = labels.sum(0)
        return torch.tensor((len(labels) - pos) / np.maximum(pos, 1), dtype=torch.float32)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(len(labels) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


def build_loss(kind: str, task: str, *, weights: torch.Tensor | None, label_smoothing: float,
               focal_gamma: float) -> nn.Module:
    """The ``train.loss`` ``kind`` for ``task`` (auto: bce for multilabel tasks, else ce)."""
    check_choice(kind, Loss, "train.loss")
    if kind == "auto":
        kind = "bce" if task == "multilabel" else "ce"
    if task == "multilabel" and kind != "bce":
        raise ConfigError(f"multilabel tasks need train.loss=bce (or auto), got {kind!r}")
    if task != "multilabel" and kind == "bce":
        raise ConfigError(f"train.loss=bce is for multilabel tasks; this task is {task}: use ce or focal")
    if kind == "bce":
        return nn.BCEWithLogitsLoss(pos_weight=weights)
    if kind == "focal":
        return FocalLoss(focal_gamma, weights, label_smoothing)
    return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
