"""``Ensemble``: several trained classifiers as one model, its output the mean of their calibrated probabilities.

Each member's logits are divided by its own temperature (fitted on val when the member was calibrated),
turned into probabilities (softmax; sigmoid for multilabel), averaged with ``weights``, and returned as
logits again (log-probabilities; logit for multilabel) so that every consumer (post-processing with its
own temperature and thresholds, ONNX export, INT8, Grad-CAM, the server) treats it as a single model:
``softmax(log p) = p``. The temperatures and weights are buffers, so they travel in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelError

EPS = 1e-7  # probabilities are clamped to [EPS, 1 - EPS] before the log: finite logits, also in ONNX and INT8


class Ensemble(nn.Module):
    """``x -> combine([member(x) for member in members])``; see the module docstring."""

    def __init__(self, members: Sequence[nn.Module], task: str, temperatures: Sequence[float] | None = None,
                 weights: Sequence[float] | None = None) -> None:
        super().__init__()
        k = len(members)
        if k < 2:
            raise ModelError(f"an ensemble needs at least 2 members, got {k}")
        temperatures = [1.0] * k if temperatures is None else [float(t) for t in temperatures]
        weights = [1.0 / k] * k if weights is None else [float(w) for w in weights]
        if len(temperatures) != k or len(weights) != k:
            raise ModelError(f"an ensemble of {k} members needs {k} temperatures and {k} weights, got "
                             f"{len(temperatures)} and {len(weights)}")
        if min(temperatures) <= 0 or min(weights) < 0 or sum(weights) <= 0:
            raise ModelError(f"ensemble temperatures must be > 0 and weights >= 0 (not all 0), got {temperatures} "
                             f"and {weights}")
        self.members = nn.ModuleList(members)
        self.task = task
        self.register_buffer("temperatures", torch.tensor(temperatures, dtype=torch.float32))
        total = sum(weights)
        self.register_buffer("weights", torch.tensor([w / total for w in weights], dtype=torch.float32))

    def combine(self, member_logits: Sequence[torch.Tensor]) -> torch.Tensor:
        """The ensemble's logits from its members' logits (one tensor (B, K) per member)."""
        act = torch.sigmoid if self.task == "multilabel" else (lambda t: torch.softmax(t, dim=1))
        p = sum(self.weights[i] * act(z.float() / self.temperatures[i]) for i, z in enumerate(member_logits))
        p = p.clamp(EPS, 1.0 - EPS)
        return torch.log(p) - torch.log1p(-p) if self.task == "multilabel" else torch.log(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine([m(x) for m in self.members])


def ensemble_members(model: nn.Module) -> nn.ModuleList | None:
    """The members of an :class:`Ensemble`, None for any other model."""
    return model.members if isinstance(model, Ensemble) else None
