"""Stratified (and group-aware) train/val/test splitting."""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def _strata(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    return labels.argmax(1) if labels.ndim == 2 else labels


def split_indices(labels: np.ndarray, fraction: float, *, seed: int = 0,
                  groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(len(labels))`` into (keep, held_out) with ~``fraction`` held out.

    Stratified by class. With ``groups`` (patient ids), no group is on both
    sides; classes are balanced as well as the groups allow (StratifiedGroupKFold).
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    n = len(labels)
    if not 0 < fraction < 1:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise DataError(f"cannot split {n} sample(s)")
    y = _strata(labels)
    idx = np.arange(n)
    if groups is not None:
        groups = np.asarray(groups)
        n_groups = len(np.unique(groups))
        n_splits = max(2, min(round(1 / fraction), n_groups))
        if n_groups < 2:
            raise DataError(f"cannot split by group: only {n_groups} distinct group id(s)")
        counts = np.bincount(y)
        if counts[counts > 0].min() >= n_splits:
            cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            keep, held = next(cv.split(idx, y, groups))
        else:  # too few samples of a class to stratify: plain group split
            from sklearn.model_selection import GroupShuffleSplit

            keep, held = next(GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed).split(idx, y, groups))
        return np.sort(keep), np.sort(held)
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 and round(n * fraction) >= len(counts[counts > 0]) else None
    keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(keep), np.sort(held)
