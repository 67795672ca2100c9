"""Shared pieces of ``cv`` and ``tune``: the held-out test guard, the pooled dev set, mean ± sd."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..api import as_config  # noqa: F401  (re-exported for cv and tune)
from ..data.sources import LoadedData
from ..data.splits import ConcatTable
from ..data.table import ImageTable
from ..errors import DataError, RunError


class HeldOutTable(ImageTable):
    """Stands in for the test split: empty, and any attempt to read an image raises.

    ``cv`` and ``tune`` train with this in ``LoadedData.test`` so that no test
    image can be decoded, predicted or scored, whatever code runs downstream.
    """

    def __init__(self, like: ImageTable | None = None, reason: str = "the test split is held out") -> None:
        shape = (0, like.labels.shape[1]) if like is not None and np.asarray(like.labels).ndim == 2 else (0,)
        self.labels = np.zeros(shape, dtype=np.float32 if len(shape) == 2 else np.int64)
        self.ids = []
        self.groups = None
        self.reason = reason

    def load(self, i: int, *, draft: int | None = None) -> np.ndarray:
        raise RunError(f"{self.reason}: refusing to read test image {i}")

    def _take(self, idx: np.ndarray) -> ImageTable:
        raise RunError(f"{self.reason}: refusing to subset the test split")


def without_test(data: LoadedData, reason: str) -> LoadedData:
    """``data`` with its test split replaced by a :class:`HeldOutTable` (labels and images dropped)."""
    return LoadedData(data.spec, data.train, data.val, HeldOutTable(data.train, reason), [*data.notes, reason])


def dev_set(data: LoadedData) -> ConcatTable:
    """The development set: train + val pooled (``part_of`` 0 = train, 1 = val); the test split is not touched."""
    dev = ConcatTable([data.train, data.val])
    if len(set(dev.ids)) != len(dev.ids):
        dup = sorted({i for i in dev.ids if dev.ids.count(i) > 1})[:3]
        raise DataError(f"sample ids repeat across train and val ({', '.join(map(repr, dup))}); "
                        "out-of-fold predictions need one id per sample")
    return dev


def mean_sd(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1) over the finite values; ``n`` counts them."""
    a = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    return {"mean": float(a.mean()) if len(a) else float("nan"),
            "sd": float(a.std(ddof=1)) if len(a) > 1 else float("nan"), "n": len(a)}
