"""Forward passes over batches: logits -> probabilities, in fp32 (evaluation never uses autocast)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .distributed import DistInfo, all_gather_objects
from .loader import Batches


def probabilities(logits: torch.Tensor | np.ndarray, task: str) -> np.ndarray:
    """Softmax for binary/multiclass (columns follow class_names), sigmoid for multilabel."""
    t = torch.as_tensor(logits, dtype=torch.float32)
    return (torch.sigmoid(t) if task == "multilabel" else torch.softmax(t, dim=1)).numpy()


@torch.no_grad()
def predict_logits(model: torch.nn.Module, batches: Batches, device: torch.device, *,
                   dist: DistInfo | None = None, channels_last: bool = False,
                   views: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None) -> np.ndarray:
    """Logits (N, K) for every sample of ``batches`` in order; under DDP each rank does a shard.

    With ``views`` (test-time augmentation) the logits are averaged over the views.
    """
    model.eval()
    n = len(batches)
    dist = dist or DistInfo()
    order = np.arange(n)[dist.rank :: dist.world_size]
    out_idx, out = [], []
    for x, _, idx in batches.iterate(order):
        x = x.to(device, non_blocking=True)
        side_inputs = batches.side_inputs_for(idx, device)  # metadata/text of fused models; {} for image-only
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if views:
            out.append(torch.stack([model(v(x), **side_inputs).float() for v in views]).mean(0).cpu())
        else:
            out.append(model(x, **side_inputs).float().cpu())
        out_idx.append(torch.as_tensor(idx))
    k = out[0].shape[1] if out else 0
    logits = torch.cat(out).numpy() if out else np.zeros((0, k), np.float32)
    idx = torch.cat(out_idx).numpy() if out_idx else np.zeros(0, np.int64)
    if dist.enabled:
        parts = all_gather_objects((idx, logits), dist)
        idx = np.concatenate([p[0] for p in parts])
        logits = np.concatenate([p[1] for p in parts if len(p[1])])
    full = np.empty((n, logits.shape[1]), np.float32)
    full[idx] = logits
    return full
