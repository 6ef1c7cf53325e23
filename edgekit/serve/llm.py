"""GGUF generation behind the server: a request is handed to the model's generation engine
(continuous batching: the sequences in flight are decoded together, see
:mod:`edgekit.runtimes.llamacpp.engine`), its pieces come back to the event loop as they are made.

The model's queue still admits requests: the model's thread waits until the engine has a free
slot for the request, so requests beyond the slots wait in that bounded queue (503 when full).
Pieces cross from the engine's thread in bursts: one event-loop wake-up for however many pieces
arrived meanwhile, not one per piece.

A client that goes away cancels its sequence at the engine's next step, which frees its slot, streamed
or not: one task per request waits on the ASGI receive channel for ``http.disconnect`` (nothing is
polled per token). Its request is answered (to nobody) and counted as 499, nginx's "client closed
request".
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.serve.responses import HTTPError

if TYPE_CHECKING:
    from edgekit.runtimes.llamacpp.engine import Request
    from edgekit.serve.served import ServedModel

# start(on_piece, on_done) -> the engine's request (raises at once for a bad prompt)
Start = Callable[[Callable[[str], None], Callable[[Any], None]], "Request"]
Receive = Callable[[], Any]  # the ASGI receive channel (awaitable messages)


class ClientGone(HTTPError):
    """The client closed the connection before its generation ended (answered to nobody)."""

    def __init__(self, problem: str = "the client closed the connection before the generation ended", *,
                 fix: str | None = "keep the connection open until the answer arrives, or stream it") -> None:
        super().__init__(499, problem, fix=fix)


@dataclass
class Generation:
    """One request's generation: pieces so far, exact token counts and times (filled as it runs)."""

    max_tokens: int
    pieces: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    first_piece: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


class _Channel:
    """Pieces from the engine's thread to the event loop, a wake-up only when the loop is not
    already due to look."""

    def __init__(self, loop: asyncio.AbstractEventLoop, gen: Generation) -> None:
        self.loop, self.gen = loop, gen
        self.ready = asyncio.Event()
        self._lock = threading.Lock()
        self._pieces: list[str] = []
        self._woken = False
        self.done: Any = None  # the finished request

    def _wake(self) -> None:  # with the lock held
        if not self._woken:
            self._woken = True
            try:
                self.loop.call_soon_threadsafe(self.ready.set)
            except RuntimeError:  # the loop is closed (server gone): nobody reads this stream
                pass

    def piece(self, text: str) -> None:
        with self._lock:
            if self.gen.first_piece is None:
                self.gen.first_piece = time.perf_counter()
            self._pieces.append(text)
            self._wake()

    def end(self, request: Any) -> None:
        with self._lock:
            self.gen.finished = time.perf_counter()
            self.done = request
            self._wake()

    def take(self) -> tuple[list[str], Any]:
        self.ready.clear()
        with self._lock:
            pieces, self._pieces, self._woken = self._pieces, [], False
            return pieces, self.done


async def _watch(receive: Receive, on_gone: Callable[[], None]) -> None:
    """Wait for the client to go away (``http.disconnect``; the body was read before), then call
    ``on_gone``. Awaits the receive channel, so it costs nothing until the connection closes."""
    while (await receive())["type"] != "http.disconnect":
        pass
    on_gone()


async def stream(served: ServedModel, gen: Generation, start: Start, count: Callable[[Generation], None],
                 timeout_s: float | None, receive: Receive | None = None) -> AsyncIterator[list[str]]:
    """The pieces of one generation, in bursts. The first ``await`` raises at once when the
    model's queue is full or the request is bad (before any byte of a response is sent); a
    generation running past ``timeout_s`` is cancelled and raises the queue's timeout error.
    With ``receive``, a client that disconnects cancels the generation (waiting for a slot or
    generating) and the stream raises :class:`ClientGone`."""
    loop = asyncio.get_running_loop()
    channel = _Channel(loop, gen)
    deadline = None if timeout_s is None else loop.time() + timeout_s
    started: list[Request] = []
    gone = False

    def leave() -> None:  # in the event loop, when the client has gone
        nonlocal gone
        gone = True
        for r in started:
            r.cancel()
        channel.ready.set()

    def submit() -> Request:  # in the model's thread: wait there for a slot
        if gone:
            raise ClientGone()
        gen.started = time.perf_counter()
        started.append(start(channel.piece, channel.end))
        if gone:  # left between the check and the append: leave() may not have seen it
            started[0].cancel()
        started[0].admitted.wait()
        return started[0]

    watcher = asyncio.ensure_future(_watch(receive, leave)) if receive is not None else None
    timer = None
    try:
        try:
            request, _ = await served.call(submit, timeout_s)
        except BaseException:
            for r in started:  # refused, timed out or the client gone while it waited for a slot
                r.cancel()
            raise
        timer = loop.call_at(deadline, channel.ready.set) if deadline is not None else None
        while True:
            await channel.ready.wait()
            if gone:
                raise ClientGone()
            pieces, done = channel.take()
            if pieces:
                gen.pieces += pieces
                yield pieces
            if done is not None:
                break
            if deadline is not None and loop.time() >= deadline:
                from edgekit.serve.batching import RequestTimeout

                raise RequestTimeout(f"the generation for {served.name!r} took more than {timeout_s:g} s",
                                     fix="ask for fewer tokens, or start the server with a larger --request-timeout")
        if done.error is not None:
            raise done.error
        gen.prompt_tokens, gen.completion_tokens = done.prompt_tokens, done.completion_tokens
        gen.finish_reason = done.finish_reason or "stop"
        count(gen)
    finally:
        if watcher is not None:
            watcher.cancel()
        if timer is not None:
            timer.cancel()
        for r in started:
            r.cancel()  # a client gone or a timeout: the slot is freed at the engine's next step
