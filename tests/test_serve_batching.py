"""The serve batcher's queue, on a real event loop and a real model thread.

The "model" is a Python function that blocks until the test lets it go, so what waits where is
known exactly: an idle model takes a request at once (no turn through the batch worker), yet the
queue behind it stays bounded (503 beyond ``queue_size``), requests run one at a time in arrival
order, a request past its deadline is answered 504 while the model thread finishes it, and that
unfinished call still counts as running: the next request waits in the queue, not behind it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from edgekit.serve.batching import Batcher, ModelThread, Overloaded, RequestTimeout

WAIT = 5.0  # seconds any step may take before the test fails (never reached when it passes)


class Gate:
    """``run_batch`` for the batcher: records each call's payloads, blocks until released."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def __call__(self, payloads: list[Any]) -> list[tuple[Any, dict[str, float]]]:
        self.calls.append(list(payloads))
        self.entered.release()
        if not self.release.wait(WAIT):
            raise RuntimeError("the test never released the model")
        return [(p * 10, {"inference_ms": 0.0}) for p in payloads]

    async def running(self) -> None:
        """Wait until the model thread has entered a call."""
        if not await asyncio.to_thread(self.entered.acquire, True, WAIT):
            raise AssertionError("the model thread never started the call")


def batcher(gate: Gate, *, max_batch: int = 1, timeout_ms: float = 0, queue_size: int = 2,
            wait_when_idle: bool = True) -> tuple[Batcher, ModelThread]:
    thread = ModelThread("test-model")
    b = Batcher("m", gate, thread, max_batch=max_batch, timeout_s=timeout_ms / 1000, queue_size=queue_size,
                wait_when_idle=wait_when_idle)
    b.start()
    return b, thread


async def settle() -> None:
    for _ in range(5):  # let submitted tasks reach their first await
        await asyncio.sleep(0)


def test_an_idle_model_takes_a_request_at_once_and_the_queue_behind_it_stays_bounded() -> None:
    async def scenario() -> None:
        gate = Gate()
        b, thread = batcher(gate, queue_size=2)
        first = asyncio.create_task(b.submit(1))
        await gate.running()
        assert b.depth == 0 and b.running == 1  # straight to the model thread, never queued
        rest = [asyncio.create_task(b.submit(p)) for p in (2, 3)]
        await settle()
        assert b.depth == 2
        with pytest.raises(Overloaded):  # the queue is full: refused at once, nothing grows
            await b.submit(4)
        gate.release.set()
        answers = await asyncio.wait_for(asyncio.gather(first, *rest), WAIT)
        assert [a[0] for a in answers] == [10, 20, 30]
        assert gate.calls == [[1], [2], [3]]  # one at a time, in arrival order
        assert answers[0][1]["queue_ms"] == 0.0 and answers[0][1]["batch_size"] == 1.0
        assert all(a[1]["queue_ms"] > 0 for a in answers[1:])
        assert b.running == 0 and b.depth == 0
        await b.stop()
        thread.shutdown()

    asyncio.run(scenario())


def test_a_timed_out_request_still_holds_the_model_until_its_call_ends() -> None:
    async def scenario() -> None:
        gate = Gate()
        b, thread = batcher(gate, queue_size=1)
        late = asyncio.create_task(b.submit(1, timeout_s=0.05))
        await gate.running()
        with pytest.raises(RequestTimeout):
            await asyncio.wait_for(late, WAIT)
        assert b.running == 1  # the thread is still in the call the client gave up on
        queued = asyncio.create_task(b.submit(2))
        await settle()
        assert b.depth == 1  # queued (and counted against queue_size), not sent behind it
        with pytest.raises(Overloaded):
            await b.submit(3)
        gate.release.set()
        result, timing = await asyncio.wait_for(queued, WAIT)
        assert result == 20 and gate.calls == [[1], [2]]
        assert b.running == 0
        await b.stop()
        thread.shutdown()

    asyncio.run(scenario())


def test_requests_that_can_wait_for_company_are_batched_not_sent_alone() -> None:
    async def scenario() -> None:
        gate = Gate()
        gate.release.set()
        b, thread = batcher(gate, max_batch=4, timeout_ms=2000, queue_size=8, wait_when_idle=True)
        tasks = [asyncio.create_task(b.submit(p, key="k")) for p in (1, 2, 3, 4)]
        answers = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        assert gate.calls == [[1, 2, 3, 4]]  # the idle model did not take the first one alone
        assert [a[0] for a in answers] == [10, 20, 30, 40]
        assert all(a[1]["batch_size"] == 4.0 for a in answers)
        await b.stop()
        thread.shutdown()

    asyncio.run(scenario())


def test_an_idle_model_runs_a_batchable_request_at_once_and_batches_what_queued_meanwhile() -> None:
    """``--no-batch-wait-idle``: no request waits for company while the model has nothing to do;
    the ones that arrive while it runs leave together (theirs has run out meanwhile)."""
    async def scenario() -> None:
        gate = Gate()
        b, thread = batcher(gate, max_batch=8, timeout_ms=50, queue_size=8, wait_when_idle=False)
        first = asyncio.create_task(b.submit(1, key="k"))
        await gate.running()  # taken alone, at once, although batchable with a 50 ms window
        rest = [asyncio.create_task(b.submit(p, key="k")) for p in (2, 3, 4)]
        await settle()
        await asyncio.sleep(0.06)  # past the window of the queued ones
        assert gate.calls == [[1]] and b.depth == 3
        gate.release.set()
        answers = await asyncio.wait_for(asyncio.gather(first, *rest), WAIT)
        assert gate.calls == [[1], [2, 3, 4]]
        assert [a[0] for a in answers] == [10, 20, 30, 40]
        assert [a[1]["batch_size"] for a in answers] == [1.0, 3.0, 3.0, 3.0]
        await b.stop()
        thread.shutdown()

    asyncio.run(scenario())
