"""Dynamic batching behind a bounded queue: one per served model.

Requests wait in a queue of at most ``queue_size``; one more is refused at once
(:class:`Overloaded`, answered 503 with ``Retry-After``), so memory never grows without bound.
A worker takes the oldest request and waits up to ``timeout_s`` from its arrival for others with
the same batching key, up to ``max_batch`` rows; the group runs as one call in the model's own
thread (:class:`ModelThread`, ``run_batch``) and each request gets its own slice back. A group
that fails is re-run one request at a time, so one bad request fails alone.

A request that could not wait for company anyway (batching off, no batching key, or a full batch
by itself) and finds the model idle with nothing queued goes to the model's thread at once,
without a turn through the worker. With ``wait_when_idle=False`` (``--no-batch-wait-idle``) a
batchable one does too: no request waits for company while the model has nothing to do, and the
requests that arrive while it runs leave together when it is free, so batches grow with the load
by themselves (measured in docs/serving.md). Either way the model thread has one call at a time;
everything else waits in the bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import EdgekitError

# run_batch(payloads) -> one (result, timing) per payload, in order; runs in the model's thread
RunBatch = Callable[[list[Any]], list[tuple[Any, dict[str, float]]]]


class Overloaded(EdgekitError):
    """The model's queue is full: the request was not accepted (HTTP 503 + Retry-After)."""


class RequestTimeout(EdgekitError):
    """The request waited or ran longer than the server's request timeout (HTTP 504)."""


class ModelThread:
    """The model's own thread: runs calls one at a time, in order, and hands each result back to
    the event loop as an asyncio future (one queue put and one ``call_soon_threadsafe`` a call:
    no executor futures chained to asyncio futures)."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[Any], Any], arg: Any, done: Callable[[], None] | None = None) -> asyncio.Future:
        """``fn(arg)`` in the model's thread, after the calls queued before it; ``done()`` runs in
        the loop once the call has finished, even if nobody awaits the future any more."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._calls.put((fn, arg, loop, future, done))
        return future

    def shutdown(self) -> None:
        """Finish the calls already queued, then end the thread."""
        self._calls.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def _work(self) -> None:
        _name_os_thread(self._thread.name)
        while (call := self._calls.get()) is not None:
            fn, arg, loop, future, done = call
            try:
                result, error = fn(arg), None
            except BaseException as e:  # noqa: BLE001 (delivered to the awaiting request)
                result, error = None, e
            try:
                loop.call_soon_threadsafe(_settle, future, result, error, done)
            except RuntimeError:  # the loop is closed: nobody waits for the answer
                pass


def _name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the OS too (Linux: ``top -H``, ``/proc/PID/task/TID/comm``;
    bench/serve_cpu.py finds the model's thread by it). Python 3.11 names only its own object."""
    with contextlib.suppress(OSError):
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write(name[:15])


def _settle(future: asyncio.Future, result: Any, error: BaseException | None,
            done: Callable[[], None] | None) -> None:
    if done is not None:
        done()
    if future.done():  # the request was cancelled or timed out meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def _within(future: asyncio.Future, timeout_s: float | None) -> Any:
    """``await future`` for at most ``timeout_s``; on timeout or cancellation the future is
    cancelled (the worker skips a cancelled job) and ``TimeoutError``/``CancelledError`` raised."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout_s):
            return await future
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout_s)
    finally:
        future.cancel()  # no-op once it has a result


@dataclass
class _Job:
    payload: Any
    rows: int
    key: Hashable
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Gathers requests for one model into batches; see the module docstring."""

    def __init__(self, name: str, run_batch: RunBatch, thread: ModelThread, *, max_batch: int,
                 timeout_s: float, queue_size: int, on_batch: Callable[[int, int], None] | None = None,
                 wait_when_idle: bool = True) -> None:
        self.name = name
        self.wait_when_idle = wait_when_idle
        self._run = run_batch
        self._thread = thread
        self.max_batch, self.timeout_s, self.queue_size = max_batch, timeout_s, queue_size
        self._on_batch = on_batch  # (requests in the batch, queue depth after taking it)
        self._jobs: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self.running = 0  # requests in the model's thread now (a batch, or one sent there directly)
        self._idle = asyncio.Event()  # set while nothing runs: one call in the model's thread at a time
        self._idle.set()

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
        direct = (not self._jobs and not self.running and self._worker is not None
                  and (not self.wait_when_idle or key is None or rows >= self.max_batch or self.timeout_s <= 0))
        if direct:  # nothing to wait for: straight to the model's thread
            self._busy(1)  # until the thread is done with it, even if the request goes away first
            job = _Job(payload, rows, key, self._thread.run(self._one, payload, lambda: self._busy(-1)))
            if self._on_batch:
                self._on_batch(1, 0)
        else:
            job = _Job(payload, rows, key, asyncio.get_running_loop().create_future())
            self._jobs.append(job)
            self._arrived.set()
        try:
            answer = await _within(job.future, timeout_s)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the request to {self.name!r} took more than {timeout_s:g} s",
                                 fix="send smaller inputs, or start the server with a larger --request-timeout") \
                from None
        if not direct:
            return answer
        if isinstance(answer, BaseException):
            raise answer
        result, timing = answer
        return result, {**timing, "queue_ms": 0.0, "batch_size": 1.0}

    def _busy(self, requests: int) -> None:
        self.running += requests
        if self.running:
            self._idle.clear()
        else:
            self._idle.set()

    # -- the worker --------------------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            while not self._jobs:
                self._arrived.clear()
                await self._arrived.wait()
            await self._idle.wait()  # a request sent straight to the model is still running
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
        started = time.perf_counter()
        if self._on_batch:
            self._on_batch(len(batch), len(self._jobs))
        self._busy(len(batch))
        try:
            try:
                answers = await self._thread.run(self._run, [j.payload for j in batch])
            except Exception as e:
                if len(batch) == 1:
                    raise
                del e  # one of them may be bad: run each alone so only that one fails
                answers = [await self._thread.run(self._one, j.payload) for j in batch]
        except Exception as e:
            answers = [e]
        finally:
            self._busy(-len(batch))
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
