"""Dynamic micro-batching: concurrent requests are gathered up to ``max_batch`` or ``max_wait_ms``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import numpy as np
import torch


class MicroBatcher:
    """Queue preprocessed images; one worker runs them through ``fn`` in batches in a thread."""

    def __init__(self, fn: Callable[[torch.Tensor], np.ndarray], *, max_batch: int, max_wait_ms: float,
                 on_batch: Callable[[int], None] | None = None, on_depth: Callable[[int], None] | None = None) -> None:
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self.on_batch, self.on_depth = on_batch, on_depth
        self.queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def submit(self, x: torch.Tensor) -> np.ndarray:
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((x, fut))
        if self.on_depth:
            self.on_depth(self.queue.qsize())
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), timeout))
                except TimeoutError:
                    break
            if self.on_depth:
                self.on_depth(self.queue.qsize())
            if self.on_batch:
                self.on_batch(len(items))
            batch = torch.stack([x for x, _ in items])
            try:
                out = await loop.run_in_executor(None, self.fn, batch)
            except Exception as e:
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), row in zip(items, out, strict=True):
                if not fut.done():
                    fut.set_result(row)
