"""Sanity checks of class activation maps (Adebayo et al., 2018): do the maps differ between images, and do they
depend on what the model learned?"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .cam import choose_layer, compute_cam


def _mean_offdiag_corr(maps: np.ndarray) -> float:
    flat = maps.reshape(len(maps), -1)
    keep = flat.std(1) > 1e-8  # constant maps have no correlation
    c = np.corrcoef(flat[keep]) if keep.sum() > 1 else np.ones((1, 1))
    return float(c[~np.eye(len(c), dtype=bool)].mean()) if len(c) > 1 else 1.0


def _rank_corr(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(a.ravel(), b.ravel()).statistic
    return float(0.0 if np.isnan(r) else r)


def cam_sanity(model: nn.Module, x: torch.Tensor, *, method: str = "gradcam", layer: str | None = None,
               seed: int = 0) -> dict[str, Any]:
    """Two checks that a CAM explains *this* model on *these* images (Adebayo et al., 2018, "Sanity checks
    for saliency maps"): ``pairwise_correlation``, the mean Pearson correlation between the maps of different
    images (near 1: the same blob on every image), and ``randomisation_correlation``, the mean Spearman
    rank correlation of each map with the map of a copy of the model whose weights are re-initialised
    (near 1: the map does not depend on what the model learned)."""
    import copy

    layer, grid = choose_layer(model, x, layer)
    maps = compute_cam(model, x, method=method, layer=layer)
    random_model = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in random_model.modules():
        if hasattr(m, "reset_parameters") and m is not random_model:
            m.reset_parameters()
    random_maps = compute_cam(random_model, x, method=method, layer=layer)
    return {"layer": layer, "map_size": list(grid) if grid else None, "n_images": len(x),
            "pairwise_correlation": _mean_offdiag_corr(maps),
            "randomisation_correlation": float(np.mean([_rank_corr(a, b) for a, b in zip(maps, random_maps,
                                                                                          strict=True)]))}
