"""A generation's text pieces handed from the engine's thread to the caller of ``generate``/``chat``:
:class:`PieceStream` is the iterator ``stream=True`` returns, and it cancels its generation when it
is closed or dropped, read or not.
"""

from __future__ import annotations

import queue
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgekit.runtimes.llamacpp.engine import Request


class Pieces:
    """Where the engine puts a generation's pieces (``None`` once it ended), for :class:`PieceStream`."""

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.put = self.queue.put

    def end(self, request: Request) -> None:
        self.queue.put(None)


class PieceStream:
    """The pieces of one generation as they come (``generate``/``chat`` with ``stream=True``): an
    iterator that blocks for the next piece. Closing it, leaving its ``with`` block, or dropping it
    (read or not) cancels the generation, which frees its slot at the engine's next step. (A
    generator would not do: one never started runs no ``finally`` when it is dropped.) The engine
    holds the request and the :class:`Pieces`, never this object, so dropping it finalizes it."""

    def __init__(self, pieces: Pieces, request: Request) -> None:
        self._queue, self._request, self._ended = pieces.queue, request, False
        self._cancel = weakref.finalize(self, request.cancel)  # dropped: cancel (a no-op once ended)
        self._cancel.atexit = False

    def __iter__(self) -> PieceStream:
        return self

    def __next__(self) -> str:
        if self._ended:
            raise StopIteration
        piece = self._queue.get()
        if piece is None:
            self._ended = True
            self._cancel.detach()
            if self._request.error is not None:
                raise self._request.error
            raise StopIteration
        return piece

    def close(self) -> None:
        """Stop the generation (its slot freed at the engine's next step); the iterator ends."""
        self._ended = True
        self._cancel()

    def __enter__(self) -> PieceStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
