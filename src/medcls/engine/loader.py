"""Batches for training and evaluation: preprocessed tensors, seeded index order, optional cache."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.table import ImageTable
from ..errors import DataError
from ..transforms import Preprocess

log = logging.getLogger(__name__)

CACHE_BYTES = 2 << 30


class ImageDataset(Dataset):
    """(preprocessed image, label, index) for each row of an :class:`ImageTable`."""

    def __init__(self, table: ImageTable, preprocess: Preprocess) -> None:
        self.table = table
        self.preprocess = preprocess
        self.labels = torch.as_tensor(table.labels)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int):
        try:
            x = self.preprocess(self.table.load(i))
        except DataError as e:
            raise DataError(f"{self.table.describe(i)}: {e}") from None
        return x, self.labels[i], i


def _nbytes(n: int, preprocess: Preprocess) -> int:
    c = preprocess.cfg
    return n * c.in_chans * c.size * c.size * 4


class Batches:
    """Iterates (x, y, idx) batches over a table (``extras_for(idx)``: the batch's metadata/text inputs).

    With ``cache`` the whole split is preprocessed once into one tensor and
    batches are sliced from it (no per-image work per epoch); otherwise a
    DataLoader (optionally with worker processes) preprocesses on the fly.
    Both paths give identical tensors.
    """

    def __init__(self, table: ImageTable, preprocess: Preprocess, *, batch_size: int, cache: str = "auto",
                 num_workers: int = 0, inputs=None, where: str = "data") -> None:
        self.dataset = ImageDataset(table, preprocess)
        # extra model inputs (metadata, text) of every row, from a medcls.multimodal.InputEncoder
        self.extras: dict[str, torch.Tensor] | None = inputs.encode_table(table, where) if inputs is not None else None
        self.batch_size = batch_size
        self.num_workers = num_workers
        want = cache == "on" or (cache == "auto" and _nbytes(len(table), preprocess) <= CACHE_BYTES)
        self.x: torch.Tensor | None = self._materialise() if want else None

    def _materialise(self) -> torch.Tensor:
        n = len(self.dataset)
        c = self.dataset.preprocess.cfg
        out = torch.empty((n, c.in_chans, c.size, c.size), dtype=torch.float32)
        for i in range(n):
            out[i] = self.dataset[i][0]
        return out

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> torch.Tensor:
        return self.dataset.labels

    def extras_for(self, idx, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The extra inputs of rows ``idx`` (a batch's indices) on ``device``; ``{}`` for image-only data."""
        if self.extras is None:
            return {}
        idx = torch.as_tensor(idx)
        return {k: v[idx].to(device, non_blocking=True) for k, v in self.extras.items()}

    def iterate(self, order: np.ndarray | None = None, *, drop_last: bool = False) -> Iterator[tuple]:
        """Yield batches following ``order`` (default: 0..N-1)."""
        idx = np.arange(len(self)) if order is None else np.asarray(order)
        bs = self.batch_size
        stop = len(idx) - (len(idx) % bs if drop_last and len(idx) >= bs else 0)
        chunks = [idx[i : i + bs] for i in range(0, stop, bs)]
        if self.x is not None:
            for b in chunks:
                bt = torch.from_numpy(b)
                yield self.x[bt], self.labels[bt], bt
            return
        loader = DataLoader(self.dataset, batch_sampler=[c.tolist() for c in chunks], num_workers=self.num_workers,
                            persistent_workers=False)
        yield from loader


def epoch_order(labels: np.ndarray, *, sampler: str, seed: int, epoch: int, rank: int = 0,
                world_size: int = 1) -> np.ndarray:
    """The training order of one epoch: a seeded permutation, or class-balanced sampling with replacement.

    Depends only on (seed, epoch) so a resumed run sees the same batches; under
    DDP each rank takes an equal, disjoint shard of the same order.
    """
    g = np.random.default_rng([seed, epoch])
    n = len(labels)
    if sampler == "balanced":
        y = labels if labels.ndim == 1 else labels.argmax(1)
        counts = np.bincount(y)
        w = 1.0 / counts[y]
        order = g.choice(n, size=n, replace=True, p=w / w.sum())
    else:
        order = g.permutation(n)
    if world_size > 1:
        per = -(-n // world_size)
        order = np.resize(order, per * world_size)  # pad by wrapping, as DistributedSampler
        order = order[rank::world_size]
    return order
