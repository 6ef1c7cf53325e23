"""uvicorn's HTTP protocol with a response's head and body sent in one write.

uvicorn writes the status line and headers as soon as the app starts its answer, then the body
as a second write: two send() calls, two TCP segments with ``TCP_NODELAY``, and a client that
wakes for the head only to wait for the body. :class:`OneWrite` holds a write until the next one
(or the end of the event loop's turn), so a head and its body leave together.
"""

from __future__ import annotations

import asyncio
from typing import Any


class OneWrite:
    """A transport that holds one write back until the next write, a close, or the end of the
    loop's current turn, then sends what it holds as one write. Everything else is the real
    transport's."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport, self._loop = transport, loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = data
            self._loop.call_soon(self.flush)  # never held past this turn of the loop
            return
        held, self._held = self._held, None
        self._transport.writelines((held, data))  # one writev on uvloop: the body is not copied

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's own choice of HTTP protocol (httptools when installed, else h11), writing through
    :class:`OneWrite`."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]

    class OneWriteProtocol(Base):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(OneWrite(transport, asyncio.get_running_loop()))  # type: ignore[arg-type]

    return OneWriteProtocol
