"""Dynamic batching behind a bounded queue: one per served model.

Requests wait in a queue of at most ``queue_size``; one more is refused at once
(:class:`Overloaded`, answered 503 with ``Retry-After``), so memory never grows without bound.
A worker takes the oldest request and waits up to ``timeout_s`` from its arrival for others with
the same batching key, up to ``max_batch`` rows; the group runs as one call in the model's own
thread (``run_batch``) and each request gets its own slice back. A group that fails is re-run one
request at a time, so one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import EdgekitError

# run_batch(payloads) -> one (result, timing) per payload, in order; runs in the model's thread
RunBatch = Callable[[list[Any]], list[tuple[Any, dict[str, float]]]]


class Overloaded(EdgekitError):
    """The model's queue is full: the request was not accepted (HTTP 503 + Retry-After)."""


class RequestTimeout(EdgekitError):
    """The request waited or ran longer than the server's request timeout (HTTP 504)."""


@dataclass
class _Job:
    payload: Any
    rows: int
    key: Hashable
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Gathers requests for one model into batches; see the module docstring."""

    def __init__(self, name: str, run_batch: RunBatch, executor: Executor, *, max_batch: int,
                 timeout_s: float, queue_size: int, on_batch: Callable[[int, int], None] | None = None) -> None:
        self.name = name
        self._run = run_batch
        self._executor = executor
        self.max_batch, self.timeout_s, self.queue_size = max_batch, timeout_s, queue_size
        self._on_batch = on_batch  # (requests in the batch, queue depth after taking it)
        self._jobs: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self.running = 0  # requests in the batch being run now

    @property
    def depth(self) -> int:
        return len(self._jobs)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(Overloaded(f"{self.name} is shutting down", fix="retry on another server"))

    async def submit(self, payload: Any, *, rows: int = 1, key: Hashable = None,
                     timeout_s: float | None = None) -> tuple[Any, dict[str, float]]:
        """Queue ``payload`` (``rows`` rows; batched only with payloads of the same ``key``) and
        wait for its (result, timing). Raises :class:`Overloaded` at once when the queue is full."""
        if len(self._jobs) >= self.queue_size:
            raise Overloaded(f"model {self.name!r} has {len(self._jobs)} requests waiting (the limit)",
                             fix="retry after the Retry-After delay, or start the server with a larger --queue-size")
        job = _Job(payload, rows, key, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._arrived.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except asyncio.TimeoutError:
            job.future.cancel()  # the worker skips it if it has not started
            raise RequestTimeout(f"the request to {self.name!r} took more than {timeout_s:g} s",
                                 fix="send smaller inputs, or start the server with a larger --request-timeout") \
                from None
        except asyncio.CancelledError:
            job.future.cancel()  # the client went away
            raise

    # -- the worker --------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            while not self._jobs:
                self._arrived.clear()
                await self._arrived.wait()
            batch = await self._gather()
            if batch:
                await self._execute(batch)

    async def _gather(self) -> list[_Job]:
        """Wait until a full batch for the oldest request's key is queued or its time is up; take it."""
        first = self._jobs[0]
        while self._rows_like(first) < self.max_batch:
            left = first.enqueued + self.timeout_s - time.perf_counter()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except asyncio.TimeoutError:
                break
        batch, rows, keep = [], 0, deque()
        while self._jobs:
            job = self._jobs.popleft()
            if job.future.done():  # cancelled or timed out while waiting
                continue
            fits = not batch or (job.key == batch[0].key and job.key is not None and rows + job.rows <= self.max_batch)
            (batch if fits else keep).append(job)
            rows += job.rows if fits else 0
        self._jobs.extendleft(reversed(keep))
        return batch

    def _rows_like(self, first: _Job) -> int:
        if first.key is None:
            return self.max_batch  # not batchable: run at once
        return sum(j.rows for j in self._jobs if j.key == first.key)

    async def _execute(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        if self._on_batch:
            self._on_batch(len(batch), len(self._jobs))
        self.running = len(batch)
        try:
            try:
                answers = await loop.run_in_executor(self._executor, self._run, [j.payload for j in batch])
            except Exception as e:
                if len(batch) == 1:
                    raise
                del e  # one of them may be bad: run each alone so only that one fails
                answers = [await loop.run_in_executor(self._executor, self._one, j.payload) for j in batch]
        except Exception as e:
            answers = [e]
        finally:
            self.running = 0
        for job, answer in zip(batch, answers):
            if job.future.done():
                continue
            if isinstance(answer, BaseException):
                job.future.set_exception(answer)
            else:
                result, timing = answer
                job.future.set_result((result, {**timing, "queue_ms": (started - job.enqueued) * 1000.0,
                                                "batch_size": float(len(batch))}))

    def _one(self, payload: Any) -> Any:
        try:
            return self._run([payload])[0]
        except Exception as e:  # noqa: BLE001 (delivered to the request that caused it)
            return e
