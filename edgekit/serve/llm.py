"""GGUF generation behind the server: the model's own ``generate``/``chat`` run in its thread,
their pieces handed to the event loop as they come, with token counts for usage and metrics.

A client that goes away stops the generation at the next piece (the model's iterator is closed),
so a killed stream frees the model for the next request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekit.serve.served import ServedModel

_END = object()


@dataclass
class Generation:
    """One request's generation: pieces so far, counts and times (filled as it runs)."""

    max_tokens: int
    pieces: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    first_piece: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def finish_reason(self) -> str:
        return "length" if max(self.completion_tokens, len(self.pieces)) >= self.max_tokens else "stop"

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


def prompt_tokens(model: Any, prompt: str | None, messages: list[dict[str, str]] | None) -> int:
    """Tokens of the prompt as llama.cpp sees it: the text, or the messages rendered with the
    file's chat template by llama-cpp-python's own formatter."""
    if prompt is not None:
        return len(model.tokenize(prompt))
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    header = model.header.metadata
    special = [header.get("tokenizer.ggml.bos_token_id"), header.get("tokenizer.ggml.eos_token_id")]
    bos, eos = (model.detokenize([int(t)], special=True) if t is not None else "" for t in special)
    rendered = Jinja2ChatFormatter(template=model.chat_template, eos_token=eos, bos_token=bos)(messages=messages)
    return len(model.tokenize(rendered.prompt, add_special=True))


async def stream(served: ServedModel, gen: Generation, start: Callable[[], Iterator[str]],
                 count: Callable[[Generation], None], timeout_s: float | None) -> AsyncIterator[str]:
    """Run ``start()``'s pieces in the model's thread and yield them here. The first ``await``
    raises at once when the model's queue is full (before any byte of a response is sent)."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def work() -> None:
        gen.started = time.perf_counter()
        it = start()
        try:
            for piece in it:
                if stop.is_set():
                    break
                if gen.first_piece is None:
                    gen.first_piece = time.perf_counter()
                gen.pieces.append(piece)
                loop.call_soon_threadsafe(pieces.put_nowait, piece)
        finally:
            getattr(it, "close", lambda: None)()
            gen.finished = time.perf_counter()
            if not stop.is_set():
                count(gen)
            loop.call_soon_threadsafe(pieces.put_nowait, _END)

    job = asyncio.ensure_future(served.call(work, timeout_s))
    # a job refused or timed out before ``work`` ran ends the stream too (its error raised below)
    job.add_done_callback(lambda _: pieces.put_nowait(_END))
    try:
        while True:
            item = await pieces.get()  # one await per piece: no task per piece
            if item is _END:
                await job  # a generation that failed, or never ran, raises its error here
                return
            yield item
    finally:
        stop.set()
        if not job.done():
            job.cancel()
