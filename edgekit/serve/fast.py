"""``POST /v2/models/{name}[/versions/{v}]/infer`` answered on ASGI directly, before Starlette.

The infer route is the hot one. Through Starlette a request passes its error middleware, the
exception middleware, the router and a ``Request``/``Response`` pair, each wrapping ``send`` or
``receive`` once more; here the same checks and the same answer (:func:`edgekit.serve.oip.answer_infer`)
come straight from the ASGI scope. Everything else, and an infer request the guard refuses (bad
Host, API key, draining), goes on to the Starlette app, which answers as before. Not used when
CORS is on (the CORS middleware must see every answer). An application route given to
``create_app`` at an infer path would be shadowed by it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from edgekit.errors import EdgekitError

if TYPE_CHECKING:
    from edgekit.serve.app import Guard, ServerState

PREFIX, SUFFIX = "/v2/models/", "/infer"
_HEADER = b"inference-header-content-length"


def infer_target(path: str) -> tuple[str, str | None] | None:
    """(model name, version or None) of an infer path, as Starlette's routes match it; else None."""
    if not path.startswith(PREFIX) or not path.endswith(SUFFIX):
        return None
    parts = path[len(PREFIX):-len(SUFFIX)].split("/")
    if len(parts) == 1 and parts[0]:
        return parts[0], None
    if len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
        return parts[0], parts[2]
    return None


class _Gone(Exception):
    """The client disconnected before its body arrived: there is nobody to answer."""


async def _chunks(receive: Any) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Gone
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


class FastInfer:
    """The infer route on ASGI: ``await fast(scope, receive, send)`` is True once answered."""

    def __init__(self, state: ServerState, guard: Guard) -> None:
        self.state, self.guard = state, guard

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        target = infer_target(scope["path"])
        if target is None or self.guard.refuse(scope["path"], scope["headers"]) is not None:
            return False  # the app answers: its own route, or the guard's refusal
        from edgekit.serve.oip import answer_infer, check_version
        from edgekit.serve.responses import error_response, read_chunks

        state, (name, version) = self.state, target
        started = time.perf_counter()
        declared = header = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                declared = value.decode("latin-1")
            elif key == _HEADER:
                header = value.decode("latin-1")
        try:
            check_version(name, version)
            served = state.model(name)
            body = await read_chunks(_chunks(receive), declared, state.config.max_body_bytes)
            content, ctype, extra = await answer_infer(state, served, body, header)
        except _Gone:
            return True
        except EdgekitError as e:
            response = error_response(e, state.config.retry_after_s)
            await response(scope, receive, send)
            state.record(name, "infer", response.status_code, started)
            return True
        headers = [(b"content-length", str(len(content)).encode()), (b"content-type", ctype.encode())]
        if extra:
            headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})
        state.record(name, "infer", 200, started)
        return True
