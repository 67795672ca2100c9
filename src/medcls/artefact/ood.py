"""Out-of-distribution gate: how far an image's features lie from the training data.

The score is the Mahalanobis distance of the penultimate features (the pooled features the classifier
head reads) to the nearest class mean, with one covariance shared by the classes (Lee et al., NeurIPS
2018), shrunk with Ledoit-Wolf (scikit-learn) because 512-2048 features are fitted on a few thousand
images. A chest X-ray model gives an ultrasound, a fundus photo or a text page a large distance even when
its softmax is confident, which logit scores (max softmax, energy) of a 2-class head cannot tell apart.
The threshold is set on the validation split so that ``accept`` (95%) of in-distribution images pass.

The statistics live in the bundle (``ood.safetensors``, its threshold in the file's metadata) and are read
through the one loader; torch and ONNX Runtime (whose graph outputs ``features`` next to ``logits``)
compute the same score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..models.ensemble import ensemble_members

OOD_FILE = "ood.safetensors"
FEATURES = "features"  # the ONNX output beside "logits"
METHOD = "mahalanobis"


def has_features(model: nn.Module) -> bool:
    """An image-only classifier whose timm network splits into features and head (an ensemble: every member)."""
    members = ensemble_members(model)
    if members is not None:
        return all(has_features(m) for m in members)
    net = getattr(model, "net", None)
    return hasattr(model, "mean") and hasattr(net, "forward_features") and hasattr(net, "forward_head")


def logits_and_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, pooled penultimate features) of a :class:`~medcls.models.Classifier` for ``x`` in [0, 1]; of an
    :class:`~medcls.models.ensemble.Ensemble`, its combined logits and the members' features side by side."""
    members = ensemble_members(model)
    if members is not None:
        pairs = [logits_and_features(m, x) for m in members]
        return model.combine([z for z, _ in pairs]), torch.cat([f for _, f in pairs], dim=1)
    f = model.net.forward_features((x - model.mean) / model.std)
    return model.net.forward_head(f), model.net.forward_head(f, pre_logits=True).flatten(1)


class WithFeatures(nn.Module):
    """``x -> (logits, features)``: what the bundle's ONNX graph computes when it carries a gate."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits_and_features(self.model, x)


@dataclass
class OodGate:
    means: np.ndarray  # (K, D) class means (K = 1 for multilabel)
    precision: np.ndarray  # (D, D) inverse of the shared, shrunk covariance
    threshold: float  # scores above it are flagged
    accept: float  # share of validation images below the threshold (target)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance to the nearest class mean, per row of ``features`` (N, D)."""
        f = np.asarray(features, np.float64)
        d2 = np.stack([np.sum(((f - m) @ self.precision) * (f - m), axis=1) for m in self.means], axis=1)
        return np.sqrt(np.maximum(d2.min(axis=1), 0.0))

    def result(self, score: float) -> dict[str, Any]:
        return {"available": True, "score": float(score), "threshold": self.threshold,
                "flagged": bool(score > self.threshold)}

    def save(self, path: Path) -> None:
        from safetensors.numpy import save

        from ..utils import atomic_write_bytes

        meta = {"method": METHOD, "threshold": repr(self.threshold), "accept": repr(self.accept)}
        atomic_write_bytes(path, save({"means": np.ascontiguousarray(self.means, np.float32),  # C order:
                                       "precision": np.ascontiguousarray(self.precision, np.float32)},  # see drift
                                      metadata=meta))

    @classmethod
    def load(cls, path: Path) -> OodGate:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            means, precision = f.get_tensor("means"), f.get_tensor("precision")
        return cls(means.astype(np.float64), precision.astype(np.float64), float(meta["threshold"]),
                   float(meta["accept"]))


def fit_gate(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray, task: str,
             accept: float = 0.95) -> tuple[OodGate, dict[str, Any]]:
    """Class means and a shared Ledoit-Wolf covariance on train; the threshold that accepts ``accept`` of val."""
    from sklearn.covariance import LedoitWolf

    f = np.asarray(train_features, np.float64)
    y = np.asarray(train_labels)
    one = task == "multilabel" or y.ndim > 1  # multi-hot labels: one mean for all
    groups = [np.ones(len(f), bool)] if one else [y == c for c in np.unique(y)]
    means = np.stack([f[g].mean(axis=0) for g in groups])
    centred = np.concatenate([f[g] - m for g, m in zip(groups, means, strict=True)])
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    gate = OodGate(means, precision, 0.0, accept)
    val_scores = gate.score(val_features)
    gate.threshold = float(np.quantile(val_scores, accept))
    info = {"method": METHOD, "threshold": gate.threshold, "target_val_accept": accept,
            "val_accept": float(np.mean(val_scores <= gate.threshold)), "n_train": len(f),
            "n_val": len(val_scores), "features": int(f.shape[1]), "classes": len(groups)}
    return gate, info
