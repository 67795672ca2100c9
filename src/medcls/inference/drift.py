"""``medcls drift``: have a batch of recent images drifted from the bundle's validation data?

The images (files, folders, list files, data sources: as ``medcls predict`` takes them; at most
``max_images``, evenly spaced) go through the bundle's own preprocessing and model; their out-of-distribution
scores, projected features and decided classes are tested against the bundle's reference
(:mod:`medcls.metrics.drift`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artefact import open_artefact
from ..artefact.drift import predicted_index
from ..errors import ConfigError, DataError, RunError
from ..metrics.drift import drift_tests
from .batch import DecodeDataset, Inputs, collate, default_workers, resolve_inputs
from .predictor import Predictor

MIN_IMAGES = 20


def _even(n: int, k: int) -> list[int]:
    return list(range(n)) if n <= k else sorted({int(i) for i in np.linspace(0, n - 1, k)})


def _observe(pred: Predictor, inputs: Inputs, rows: list[int], num_workers: int, batch_size: int):
    """(features, OOD scores, decided class, errors) of the inputs ``rows``."""
    loader = torch.utils.data.DataLoader(DecodeDataset(inputs, pred.preprocess), num_workers=num_workers,
                                         batch_sampler=[rows[i : i + batch_size] for i in range(0, len(rows), batch_size)],
                                         collate_fn=collate)
    names = list(pred.spec.class_names)
    decide = partial(pred.postprocess.decide, spec=pred.spec)
    feats, scores, decided, errors = [], [], [], []
    for idx, x, errs in loader:
        errors += [f"{inputs.ids[i]}: {e}" for i, e in zip(idx, errs, strict=True) if e is not None]
        if x is None:
            continue
        p, f = pred.probabilities_and_features(x)
        feats.append(f)
        scores.append(pred.ood.score(f))
        decided.append(predicted_index(p, decide, names))
    if not feats:
        return None, None, None, errors
    return np.concatenate(feats), np.concatenate(scores), np.concatenate(decided), errors


def check_drift(bundle: str | Path, inputs: Sequence[str | Path] = (), *, list_file: str | Path | None = None,
                split: str = "all", max_images: int = 1000, alpha: float = 0.05, seed: int = 0,
                backend: str = "auto", num_workers: int | None = None, batch_size: int = 64) -> dict[str, Any]:
    """The drift tests of (up to ``max_images`` of) ``inputs`` against ``bundle``'s reference; see the module."""
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha must be in (0, 1), got {alpha}")
    if max_images < MIN_IMAGES:
        raise ConfigError(f"--max-images must be at least {MIN_IMAGES}, got {max_images}")
    ref = open_artefact(bundle).drift
    if ref is None:
        raise RunError(f"{bundle} has no drift reference (a run directory, a fused model, or a bundle exported "
                       f"before medcls stored one): export a bundle with `medcls export RUN -o BUNDLE`")
    items = resolve_inputs(inputs, list_file=list_file, split=split)
    rows = _even(len(items), max_images)
    pred = Predictor.load(bundle, backend=backend)
    workers = default_workers() if num_workers is None else num_workers
    f, s, c, errors = _observe(pred, items, rows, workers, batch_size)
    if f is None or len(s) < MIN_IMAGES:
        raise DataError(f"drift needs at least {MIN_IMAGES} readable images, got {0 if s is None else len(s)} "
                        f"({len(errors)} unreadable)")
    result = drift_tests(ref, f, s, c, alpha=alpha, seed=seed)
    return {**result, "bundle": str(bundle), "inputs": len(items), "used": len(s), "errors": errors}
