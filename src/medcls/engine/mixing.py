"""Mixup and CutMix on whole batches, with the epoch's seeded generator (so resumes stay exact).

A mixed batch is ``lam * x + (1 - lam) * x[perm]`` (mixup) or ``x`` with a box
pasted from ``x[perm]`` covering ``1 - lam`` of the area (CutMix). The loss is
``lam * loss(logits, y) + (1 - lam) * loss(logits, y[perm])``, which equals the
loss on the soft targets ``lam * y + (1 - lam) * y[perm]`` for cross-entropy and
BCE (both are linear in the target) and also works for focal loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Mixed:
    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float

    def soft_targets(self, num_classes: int) -> torch.Tensor:
        """The (B, K) targets the mixed loss optimises: class indices are one-hot encoded first."""
        def hot(y: torch.Tensor) -> torch.Tensor:
            return y.float() if y.ndim == 2 else torch.nn.functional.one_hot(y, num_classes).float()

        return self.lam * hot(self.y_a) + (1 - self.lam) * hot(self.y_b)

    def loss(self, criterion, logits: torch.Tensor) -> torch.Tensor:
        if self.lam >= 1.0:
            return criterion(logits, self.y_a)
        return self.lam * criterion(logits, self.y_a) + (1 - self.lam) * criterion(logits, self.y_b)


def _beta(alpha: float, g: torch.Generator) -> float:
    """One Beta(alpha, alpha) draw, seeded from ``g`` (torch has no seeded Beta sampler)."""
    seed = int(torch.randint(2**31 - 1, (), generator=g))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mix_batch(x: torch.Tensor, y: torch.Tensor, g: torch.Generator, *, mixup: float = 0.0, cutmix: float = 0.0,
              prob: float = 1.0) -> Mixed:
    """Mix ``x`` (B, C, H, W) with a permutation of itself; ``mixup``/``cutmix`` are Beta alphas (0 = off).

    With both on, each batch uses one of them with equal chance. ``prob`` is the
    chance a batch is mixed at all.
    """
    if (mixup <= 0 and cutmix <= 0) or len(x) < 2 or float(torch.rand((), generator=g)) >= prob:
        return Mixed(x, y, y, 1.0)
    use_cutmix = cutmix > 0 and (mixup <= 0 or float(torch.rand((), generator=g)) < 0.5)
    lam = _beta(cutmix if use_cutmix else mixup, g)
    perm = torch.randperm(len(x), generator=g).to(x.device)
    if not use_cutmix:
        return Mixed(lam * x + (1 - lam) * x[perm], y, y[perm], lam)
    h, w = x.shape[-2:]
    cut = math.sqrt(1 - lam)
    ch, cw = round(h * cut), round(w * cut)
    cy, cx = int(torch.randint(h, (), generator=g)), int(torch.randint(w, (), generator=g))
    y0, y1 = max(cy - ch // 2, 0), min(cy + (ch + 1) // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + (cw + 1) // 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
    lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)  # the area actually pasted
    return Mixed(out, y, y[perm], lam)
