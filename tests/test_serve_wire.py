"""``edgekit.serve.wire.OneWrite``: a response's head and body leave the server as one write.

On a real socket pair and a real asyncio transport: a lone write is held (nothing reaches the
peer), the next write sends both at once, a write with no follower still leaves at the loop's
next turn, and closing sends what is held before the end of the stream.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

pytest.importorskip("uvicorn", reason="pip install 'edgekit[serve]'")

from edgekit.serve.wire import OneWrite  # noqa: E402


async def pair() -> tuple[OneWrite, socket.socket]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    return OneWrite(transport, loop), peer


async def received(peer: socket.socket) -> bytes:
    await asyncio.sleep(0.05)  # the kernel has long delivered whatever was sent
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b""


def test_a_held_write_leaves_with_the_next_one() -> None:
    async def scenario() -> None:
        wire, peer = await pair()
        wire.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
        with pytest.raises(BlockingIOError):  # nothing sent yet: the head is held
            peer.recv(65536)
        wire.write(b"body")
        assert await received(peer) == b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody"
        wire.close()
        peer.close()

    asyncio.run(scenario())


def test_a_lone_write_leaves_at_the_next_turn_and_close_sends_what_is_held() -> None:
    async def scenario() -> None:
        wire, peer = await pair()
        wire.write(b"data: one\n\n")  # a streamed piece with no follower yet
        assert await received(peer) == b"data: one\n\n"
        wire.write(b"data: last\n\n")
        wire.close()
        assert wire.is_closing()  # everything else is the real transport's
        await asyncio.sleep(0.05)
        peer.settimeout(5)
        assert peer.recv(65536) == b"data: last\n\n"
        assert peer.recv(65536) == b""  # then the end of the stream
        peer.close()

    asyncio.run(scenario())
