"""Input checks shared by the metric modules.

Each check returns the validated array (or names) and raises
:class:`medcls.errors.DataError` with one line naming the argument when the
input has the wrong shape, length, dtype or values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import DataError


def check_array(name: str, x: Any, ndim: int, k: int | None = None) -> np.ndarray:
    """``x`` as an array of ``ndim`` dims (and ``k`` columns if given), else a DataError."""
    arr = np.asarray(x)
    if arr.ndim != ndim or (k is not None and arr.shape[1] != k):
        expected = "(N,)" if ndim == 1 else "(B, M)" if name == "idx" else f"(N, {'K' if k is None else k})"
        raise DataError(f"expected {name} of shape {expected}, got {tuple(arr.shape)}")
    return arr


def check_same_length(a_name: str, a: np.ndarray, b_name: str, b: np.ndarray) -> None:
    """Both inputs hold the same, non-zero number of samples."""
    if len(a) == 0:
        raise DataError(f"{a_name} is empty: no samples to score")
    if len(a) != len(b):
        raise DataError(f"{a_name} has {len(a)} samples but {b_name} has {len(b)}")


def check_scores(name: str, x: np.ndarray) -> np.ndarray:
    """Finite numbers (or bools) as float64."""
    if not np.issubdtype(x.dtype, np.number) and x.dtype != bool:
        raise DataError(f"expected numeric {name}, got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise DataError(f"{name} contains {int((~np.isfinite(x)).sum())} NaN/inf value(s)")
    return x


def check_labels(name: str, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Integer class indices in ``[0, num_classes)`` (integer-valued floats/bools accepted)."""
    orig, x = x, check_scores(name, x)
    bad = (x != np.round(x)) | (x < 0) | (x >= num_classes)
    if bad.any():
        shown = np.unique(orig[bad])[:5].tolist()
        raise DataError(f"{name} must hold integer class indices in [0, {num_classes - 1}], "
                        f"got {shown}")
    return x.astype(np.int64)


def check_class_names(class_names: Sequence[str], k: int, what: str = "probs") -> list[str]:
    """``class_names`` as strings, one per column of ``what``."""
    names = [str(c) for c in class_names]
    if len(names) != k:
        raise DataError(f"got {len(names)} class_names but {what} has {k} columns")
    return names


def binary_inputs(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """Boolean labels (N,) from 0/1 ``y_true`` and float scores (N,), checked against each other."""
    y = check_labels("y_true", check_array("y_true", y_true, 1), 2).astype(bool)
    s = check_scores("score", check_array("score", score, 1))
    check_same_length("y_true", y, "score", s)
    return y, s


def multiclass_inputs(y_true: Any, probs: Any, class_names: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Class indices (N,), probabilities (N, K) and the K class names of a single-label task."""
    p = check_scores("probs", check_array("probs", probs, 2))
    names = check_class_names(class_names, p.shape[1])
    y = check_labels("y_true", check_array("y_true", y_true, 1), len(names))
    check_same_length("y_true", y, "probs", p)
    return y, p, names


def multilabel_inputs(y_true: Any, probs: Any, class_names: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Boolean labels (N, L), probabilities (N, L) and the L label names of a multi-label task."""
    p = check_scores("probs", check_array("probs", probs, 2))
    names = check_class_names(class_names, p.shape[1])
    y = check_labels("y_true", check_array("y_true", y_true, 2, len(names)), 2).astype(bool)
    check_same_length("y_true", y, "probs", p)
    return y, p, names


def binary_task_inputs(y_true: Any, probs: Any, class_names: Sequence[str], positive_index: int | None
                       ) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Class indices (N,), probabilities (N, 2), the two class names and the positive class's index
    (default 1) of a binary task."""
    p = check_scores("probs", check_array("probs", probs, 2, 2))
    names = check_class_names(class_names, 2)
    pos = 1 if positive_index is None else int(positive_index)
    if pos not in (0, 1):
        raise DataError(f"positive_index must be 0 or 1 for a binary task, got {positive_index}")
    y = check_labels("y_true", check_array("y_true", y_true, 1), 2)
    check_same_length("y_true", y, "probs", p)
    return y, p, names, pos
