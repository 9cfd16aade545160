"""Micro-batching across connections: requests that arrive close together are run as one ``infer_batch`` call.

``Batcher.submit(obs, session)`` queues one request and waits for its result. A single task takes the first queued
request, then collects more until ``max_batch`` are queued, ``max_wait_s`` has passed, or every open connection has
a request in the batch (``pending_limit()``, so a lone client never waits), and runs
``infer_batch([(obs, session), ...])`` in the executor. That call returns one result per request: a dict, or the
exception that request raised; an exception from the call itself is every request's result. One batch runs at a
time; requests arriving meanwhile form the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import concurrent.futures
from typing import Any


class Batcher:
    def __init__(self, infer_batch: Callable[[list[tuple[dict, Any]]], list[Any]],
                 executor: concurrent.futures.Executor, max_batch: int, max_wait_s: float,
                 pending_limit: Callable[[], int]):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_s >= 0, got {max_batch}, {max_wait_s}")
        self._infer_batch = infer_batch
        self._executor = executor
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self._pending_limit = pending_limit
        self._queue: asyncio.Queue = asyncio.Queue()
        self._task: asyncio.Task | None = None
        self.batch_sizes: list[int] = []  # size of every batch run so far (capped history)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def submit(self, obs: dict, session: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((obs, session, fut))
        return await fut

    async def _collect(self) -> list[tuple[dict, Any, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < min(self.max_batch, max(1, self._pending_limit())):
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return [b for b in batch if not b[2].done()]  # a closed connection's request is dropped

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            self.batch_sizes = [*self.batch_sizes[-999:], len(batch)]
            try:
                results = await loop.run_in_executor(self._executor, self._infer_batch, [(o, s) for o, s, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"infer_batch returned {len(results)} results for {len(batch)} requests")
            except Exception as e:  # noqa: BLE001 - every request of the batch gets it
                results = [e] * len(batch)
            for (_, _, fut), r in zip(batch, results, strict=True):
                if fut.done():
                    continue
                if isinstance(r, BaseException):
                    fut.set_exception(r)
                else:
                    fut.set_result(r)
