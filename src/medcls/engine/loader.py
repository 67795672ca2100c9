"""Batches for training and evaluation: stored images finished on the device, seeded index order, caches."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..choices import Sampler, check_choice
from ..data.table import ImageTable
from ..transforms import Preprocess
from .cache import MemoryBudget, StoredImages, build_cache, collate, memory_budget, resolve_workers
from .cache import cache_dir as cache_dir_of

log = logging.getLogger(__name__)


class Batches:
    """Iterates (x, y, idx) batches over a table (``side_inputs_for(idx)``: the batch's metadata/text inputs).

    ``x`` is float32 in [0, 1] with the model's channels, on ``device``: what moves from the host is the
    stored form (uint8 at model size, see :meth:`Preprocess.stored`), finished on the device. Stored images
    come from a cache (``cache``: memory within ``budget``, disk beyond it, see :mod:`medcls.engine.cache`)
    or, uncached, from a DataLoader decoding on ``num_workers`` processes. All paths give identical tensors.
    """

    def __init__(self, table: ImageTable, preprocess: Preprocess, *, batch_size: int, cache: str = "auto",
                 num_workers: int | str = "auto", inputs=None, where: str = "data", budget: MemoryBudget | None = None,
                 cache_dir: str | None = None, device: torch.device | str = "cpu") -> None:
        self.table, self.preprocess = table, preprocess
        self.labels = torch.as_tensor(table.labels)
        # the model's side inputs (metadata, text) of every row, from a medcls.multimodal.InputEncoder
        self.side_inputs: dict[str, torch.Tensor] | None = (inputs.encode_table(table, where) if inputs is not None
                                                             else None)
        self.batch_size = batch_size
        self.num_workers = resolve_workers(num_workers, table)
        self.device = torch.device(device)
        budget = budget or MemoryBudget(memory_budget("auto"))
        self.cache = build_cache(table, preprocess, mode=cache, budget=budget, folder=cache_dir_of(cache_dir),
                                 workers=self.num_workers, what=where)

    def __len__(self) -> int:
        return len(self.table)

    def side_inputs_for(self, idx, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The extra inputs of rows ``idx`` (a batch's indices) on ``device``; ``{}`` for image-only data."""
        if self.side_inputs is None:
            return {}
        idx = torch.as_tensor(idx)
        return {k: v[idx].to(device, non_blocking=True) for k, v in self.side_inputs.items()}

    def iterate(self, order: np.ndarray | None = None, *, drop_last: bool = False) -> Iterator[tuple]:
        """Yield batches following ``order`` (default: 0..N-1)."""
        for x, bt in self.stored_batches(order, drop_last=drop_last):
            x = self.preprocess.finish(x.to(self.device, non_blocking=True))
            yield x, self.labels[bt], bt

    def stored_batches(self, order: np.ndarray | None = None, *, drop_last: bool = False) -> Iterator[tuple]:
        """(stored images, row indices) batches on the host: what :meth:`iterate` sends to the device."""
        idx = np.arange(len(self)) if order is None else np.asarray(order)
        bs = self.batch_size
        stop = len(idx) - (len(idx) % bs if drop_last and len(idx) >= bs else 0)
        chunks = [idx[i : i + bs] for i in range(0, stop, bs)]
        if self.cache is not None:
            yield from prefetch((self.cache.read(b), torch.from_numpy(b)) for b in chunks)
            return
        yield from DataLoader(StoredImages(self.table, self.preprocess), batch_sampler=[c.tolist() for c in chunks],
                              num_workers=self.num_workers, collate_fn=collate, persistent_workers=False,
                              pin_memory=self.device.type == "cuda")


class Waited:
    """Wraps a batch iterator and adds up the time its consumer waited for batches (``seconds``): the data
    path's share of an epoch, when the rest is compute."""

    def __init__(self, batches: Iterator[tuple]) -> None:
        self.batches, self.seconds = iter(batches), 0.0

    def __iter__(self) -> Waited:
        return self

    def __next__(self) -> tuple:
        t0 = time.perf_counter()
        try:
            return next(self.batches)
        finally:
            self.seconds += time.perf_counter() - t0


def prefetch(batches: Iterator[tuple], depth: int = 2) -> Iterator[tuple]:
    """Read the next ``depth`` batches in a thread while the caller computes (reads release the GIL)."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for b in batches:
                if stop.is_set():
                    return
                q.put(b)
            q.put(done)
        except BaseException as e:  # re-raised in the caller's thread
            q.put(e)

    t = threading.Thread(target=work, daemon=True, name="medcls-prefetch")
    t.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not q.empty():
            q.get_nowait()


def epoch_order(labels: np.ndarray, *, sampler: str, seed: int, epoch: int, rank: int = 0,
                world_size: int = 1) -> np.ndarray:
    """The training order of one epoch: a seeded permutation, or class-balanced sampling with replacement.

    Depends only on (seed, epoch) so a resumed run sees the same batches; under
    DDP each rank takes an equal, disjoint shard of the same order.
    """
    check_choice(sampler, Sampler, "train.sampler")
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
