"""The ASGI app: Open Inference Protocol and OpenAI-compatible routes over loaded models.

``create_app`` returns a Starlette app. Models load in the background once the app starts:
``/v2/health/live`` answers at once, ``/v2/health/ready`` only when every model is loaded. On
shutdown (SIGTERM) the server refuses new requests with 503, lets those in flight finish, then
closes the models.

>>> app = create_app(find_artifacts(["out/"]), ServeConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.errors import EdgekitError
from edgekit.serve.config import ServeConfig
from edgekit.serve.responses import HTTPError, error_response, json_response

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute

    from edgekit.serve.metrics import Metrics
    from edgekit.serve.registry import Entry
    from edgekit.serve.served import ServedModel

PUBLIC_PATHS = ("/v2/health/", "/healthz")  # probes work without the API key
GUARD_HEADERS = (b"host", b"authorization", b"x-api-key")


@dataclass
class ServerState:
    """What routes share: settings, metrics, the loaded models and the lifecycle flags."""

    config: ServeConfig
    metrics: Metrics
    entries: Sequence[Entry]
    models: dict[str, ServedModel] = field(default_factory=dict)
    ready: bool = False
    draining: bool = False
    load_error: BaseException | None = None
    port: int | None = None  # set by the runner once the socket is bound
    on_ready: list[Callable[[ServerState], Any]] = field(default_factory=list)
    on_failure: list[Callable[[BaseException], None]] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    def model(self, name: str) -> ServedModel:
        """The served model ``name``: 404 when unknown, 503 while it loads."""
        if name in self.models:
            return self.models[name]
        if any(e.name == name for e in self.entries):
            raise HTTPError(503, f"model {name!r} is still loading", fix="retry when /v2/health/ready answers 200")
        known = ", ".join(e.name for e in self.entries)
        raise HTTPError(404, f"no model named {name!r}", fix=f"this server serves: {known}")

    def count(self, model: str, endpoint: str, status: int) -> None:
        label = model if any(e.name == model for e in self.entries) else "-"
        self.metrics.child(self.metrics.requests, label, endpoint, str(status)).inc()

    def record(self, model: str, endpoint: str, status: int, started: float, streamed: bool = False) -> None:
        """Count an answer; a successful non-streamed one also goes into the latency histogram."""
        if status < 400 and not streamed:
            self.metrics.child(self.metrics.latency, model, endpoint).observe(time.perf_counter() - started)
        self.count(model, endpoint, status)


def state_of(request: Request) -> ServerState:
    return request.app.state.edgekit


async def guarded(request: Request, model: str, endpoint: str, handler: Callable[[], Any]) -> Response:
    """Run a route's ``handler`` and turn errors into JSON answers; count every answer."""
    state = state_of(request)
    started = time.perf_counter()
    try:
        response = await handler()
    except EdgekitError as e:
        response = error_response(e, state.config.retry_after_s)
    state.record(model, endpoint, response.status_code, started, bool(getattr(response, "body_iterator", None)))
    return response


class Guard:
    """ASGI middleware in front of every route: the API key (constant-time compare), the Host
    header of a loopback server (no DNS rebinding), and 503 once the server drains."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app, self.state = app, state
        key = state.config.api_key
        self.key = key.encode() if key else None
        self.loopback = state.config.host in ("127.0.0.1", "localhost", "::1")
        self._names: tuple[int | None, frozenset[str]] = (None, frozenset())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        problem = self.refuse(scope["path"], scope["headers"])
        if problem is None:
            return await self.app(scope, receive, send)
        response = error_response(problem, self.state.config.retry_after_s)
        if problem.status == 503:
            response.headers["Connection"] = "close"
        await response(scope, receive, send)

    def refuse(self, path: str, raw: list[tuple[bytes, bytes]]) -> HTTPError | None:
        """Why a request with this path and these raw headers is refused; None to let it in."""
        state = self.state
        wanted = GUARD_HEADERS if self.key is not None else (b"host",)
        headers = {k.lower(): v for k, v in raw if k.lower() in wanted}  # only what is checked
        if self.loopback and state.port:
            host = headers.get(b"host", b"").decode("latin-1").lower()
            if host not in self._host_names(state.port):
                return HTTPError(403, f"host {host!r} is not this {state.config.name}",
                                 fix=f"connect to http://127.0.0.1:{state.port}/ from this machine")
        if state.draining:
            return HTTPError(503, "the server is shutting down", fix="retry on another server")
        if self.key is not None and not path.startswith(PUBLIC_PATHS):
            given = headers.get(b"authorization", b"")
            token = given[7:].strip() if given[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
            if not hmac.compare_digest(token, self.key):
                return HTTPError(401, "a valid API key is needed",
                                 fix="send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")
        return None

    def _host_names(self, port: int) -> frozenset[str]:
        """The Host values a loopback server answers (computed once per port)."""
        if self._names[0] != port:
            names = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")}
            if port == 80:
                names |= {"127.0.0.1", "localhost", "[::1]"}
            self._names = (port, frozenset(names))
        return self._names[1]


async def _load_all(state: ServerState) -> None:
    """Load every model in a worker thread, in order; ready once all are loaded."""
    from edgekit.serve.served import load_served

    loop = asyncio.get_running_loop()
    try:
        for entry in state.entries:
            served = await loop.run_in_executor(None, load_served, entry, state.config, state.metrics)
            served.start()
            state.models[entry.name] = served
            state.metrics.queue.labels(entry.name).set_function(lambda b=served.batcher: b.depth)
            state.metrics.ready.labels(entry.name).set(1)
        state.ready = True
        for hook in state.on_ready:
            result = hook(state)
            if inspect.isawaitable(result):
                await result
    except Exception as e:  # noqa: BLE001 (reported to the runner, which stops the server)
        state.load_error = e
        for hook in state.on_failure:
            hook(e)


def create_app(entries: Sequence[Entry], config: ServeConfig | None = None, *,
               routes: Sequence[BaseRoute] = (), state: ServerState | None = None) -> Starlette:
    """The server app for ``entries`` (from :func:`edgekit.serve.registry.find_artifacts`);
    ``routes`` adds an application's own routes (the kiosk's page) beside the protocols."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route

    from edgekit.serve import oip, openai
    from edgekit.serve.fast import FastInfer
    from edgekit.serve.metrics import Metrics

    config = config or ServeConfig()
    state = state or ServerState(config, Metrics(), entries)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader = asyncio.get_running_loop().create_task(_load_all(state))
        try:
            yield
        finally:
            state.draining, state.ready = True, False
            loader.cancel()
            await asyncio.gather(loader, return_exceptions=True)
            for served in list(state.models.values()):
                await served.stop()

    async def metrics(request: Request) -> Response:
        from starlette.responses import Response

        body, ctype = state.metrics.render()
        return Response(body, media_type=ctype.split(";")[0], headers={"Content-Type": ctype})

    middleware = [Middleware(Guard, state=state)]
    if config.cors_origins:  # outermost, so a browser's preflight is answered before the key check
        from starlette.middleware.cors import CORSMiddleware

        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                                        allow_methods=["GET", "POST"], allow_headers=["*"]))
    async def not_found(request: Request, exc: Exception) -> Response:
        return json_response({"error": f"no route {request.method} {request.url.path}",
                              "fix": "see /v2 (Open Inference Protocol), /v1 (OpenAI) and /metrics"},
                             getattr(exc, "status_code", 404))

    # the hot infer route skips Starlette's layers (edgekit/serve/fast.py); with CORS it may not
    fast = None if config.cors_origins else FastInfer(state, Guard(None, state))

    class App(Starlette):
        async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
            if fast is not None and await fast(scope, receive, send):
                return
            await super().__call__(scope, receive, send)

    app = App(routes=[*routes, *oip.routes(), *openai.routes(), Route("/metrics", metrics)],
              middleware=middleware, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.state.edgekit = state
    return app

