"""Run the app on uvicorn: bind the socket first (a busy port is a clear error, ``port=0`` picks a
free one), load the models, and on SIGTERM or Ctrl-C refuse new requests, let those in flight
finish (up to ``drain_timeout_s``), then close the models.

>>> server = Server(find_artifacts(["out/"]), ServeConfig(port=0))  # doctest: +SKIP
>>> server.run()  # blocks until SIGTERM  # doctest: +SKIP
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from edgekit.errors import ConfigError
from edgekit.serve.config import ServeConfig

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from edgekit.serve.app import ServerState
    from edgekit.serve.registry import Entry


class Server:
    """One ``edgekit serve`` process: the socket, the app and uvicorn."""

    def __init__(self, entries: Sequence[Entry], config: ServeConfig | None = None, *,
                 routes: Sequence[BaseRoute] = (), on_ready: Callable[[ServerState], None] | None = None) -> None:
        from edgekit.deps import require

        require("uvicorn", "serve", "edgekit serve")
        require("starlette", "serve", "edgekit serve")
        require("prometheus_client", "serve", "edgekit serve")
        from edgekit.serve.app import ServerState, create_app
        from edgekit.serve.metrics import Metrics

        self.config = config or ServeConfig()
        self.state = ServerState(self.config, Metrics(), list(entries))
        if on_ready is not None:
            self.state.on_ready.append(on_ready)
        self.state.on_failure.append(self._failed)
        self.app = create_app(entries, self.config, routes=routes, state=self.state)
        self.sock: socket.socket | None = None
        self._uvicorn: Any = None
        self._error: BaseException | None = None

    def bind(self) -> socket.socket:
        """Listen on ``host:port``; raises :class:`ConfigError` naming the fix when that fails."""
        host, port = self.config.host, self.config.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: without, a small response written in two parts (head,
        # body) waits for the client's delayed ACK (Nagle), ~40 ms per request on Linux
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((host, port))
            sock.listen(2048)
        except OSError as e:
            sock.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}",
                              fix="pick another --port, or --port 0 for a free one") from e
        sock.set_inheritable(True)
        self.sock = sock
        self.state.port = sock.getsockname()[1]
        return sock

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"http://{host}:{self.state.port}/"

    def run(self) -> None:
        """Serve until stopped (SIGTERM, SIGINT or :meth:`stop`); re-raises a model load failure."""
        import uvicorn

        sock = self.sock or self.bind()
        state = self.state

        class _Uvicorn(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                state.draining = True  # new requests get 503 while those in flight finish
                super().handle_exit(sig, frame)
                # a drained stop is a clean exit (status 0): uvicorn would re-raise the signal after
                getattr(self, "_captured_signals", []).clear()

        from edgekit.serve.wire import http_protocol

        # the loop stays "auto" (uvloop when installed), the HTTP protocol is uvicorn's own choice
        # (httptools when installed) sending head and body in one write; no X-Forwarded-* rewriting:
        # nothing here reads the client address or scheme
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=int(self.config.drain_timeout_s) or None,
                                timeout_keep_alive=5, proxy_headers=False, http=http_protocol())
        self._uvicorn = _Uvicorn(config)
        try:
            self._uvicorn.run(sockets=[sock])
        finally:
            sock.close()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Ask the server to drain and stop (from another thread)."""
        self.state.draining = True
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True

    def _failed(self, error: BaseException) -> None:
        self._error = error
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
