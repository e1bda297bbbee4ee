"""Micro-batching: requests put single items on a bounded queue; one worker runs them in batches.

A batch holds items with the same key (for captions: the decoding options) and closes when it has
`max_batch` items or when its oldest item has waited `max_wait_ms`. The batch function runs in a worker
thread, so the event loop keeps accepting requests (which queue up into the next batch) meanwhile.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

BatchFn = Callable[[Hashable, list[Any]], Sequence[Any]]


class QueueFull(Exception):
    """The queue holds too many items to accept a request now."""


@dataclass
class Done:
    """What one item's future resolves to: the batch function's output and how it was batched."""

    output: Any
    batch_size: int
    queue_ms: float
    run_ms: float


@dataclass
class _Item:
    key: Hashable
    payload: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Collects items into batches of up to `max_batch` (waiting at most `max_wait_ms`) for `run_batch`."""

    def __init__(self, run_batch: BatchFn, max_batch: int = 16, max_wait_ms: float = 10.0, max_queue: int = 256) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._pending: deque[_Item] = deque()
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imcap-infer")
        self._task: asyncio.Task | None = None
        self.batches_run = 0

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not counting the batch being run)."""
        return len(self._pending)

    def start(self) -> None:
        """Start the worker task on the running event loop."""
        self._task = asyncio.get_running_loop().create_task(self._work(), name="imcap-batcher")

    async def stop(self) -> None:
        """Stop the worker; items still waiting fail with CancelledError."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for item in self._pending:
            item.future.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, key: Hashable, payloads: Sequence[Any]) -> list[asyncio.Future]:
        """Queue all `payloads` under `key` or none of them (QueueFull); return one future of `Done` each."""
        if self._task is None or self._task.done():
            raise RuntimeError("MicroBatcher.start() was not called, or its worker stopped")
        if len(self._pending) + len(payloads) > self.max_queue:
            raise QueueFull(f"{len(self._pending)} images are queued (limit {self.max_queue})")
        loop = asyncio.get_running_loop()
        items = [_Item(key, p, loop.create_future()) for p in payloads]
        self._pending.extend(items)
        self._arrived.set()
        return [item.future for item in items]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            started = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self.run_batch, batch[0].key, [i.payload for i in batch])
                if len(outputs) != len(batch):
                    raise RuntimeError(f"batch function returned {len(outputs)} outputs for {len(batch)} items")
            except Exception as exc:  # a failing batch fails its own requests only
                log.exception("batch of %d failed", len(batch))
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.batches_run += 1
            run_ms = (time.perf_counter() - started) * 1000.0
            for item, out in zip(batch, outputs):
                if not item.future.done():  # the request may have timed out meanwhile
                    item.future.set_result(Done(out, len(batch), (started - item.enqueued) * 1000.0, run_ms))

    async def _next_batch(self) -> list[_Item]:
        """Wait for the oldest live item, then for more of its key until the batch is full or its wait is over."""
        while True:
            self._drop_abandoned()
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            key, deadline = self._pending[0].key, self._pending[0].enqueued + self.max_wait
            while sum(i.key == key for i in self._pending) < self.max_batch:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except TimeoutError:
                    break
            self._drop_abandoned()
            batch = [i for i in self._pending if i.key == key][: self.max_batch]
            if batch:
                taken = {id(i) for i in batch}
                self._pending = deque(i for i in self._pending if id(i) not in taken)
                return batch

    def _drop_abandoned(self) -> None:
        """Forget items whose request gave up (timed out or disconnected) before they ran."""
        if any(i.future.done() for i in self._pending):
            self._pending = deque(i for i in self._pending if not i.future.done())
