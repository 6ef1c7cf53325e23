"""JSON answers and errors shared by every route: ``{"error": problem, "fix": fix}`` with the
status that names the kind of problem, and the request body read within the size limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from edgekit.errors import ArtifactError, ConfigError, EdgekitError, InputError, RuntimeFailure
from edgekit.serve.batching import Overloaded, RequestTimeout

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response


class HTTPError(EdgekitError):
    """A request the server refuses before the model sees it (unknown model, bad JSON field)."""

    def __init__(self, status: int, problem: str, *, fix: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(problem, fix=fix)
        self.status, self.headers = status, headers or {}


# error class -> HTTP status, most specific first
STATUS: tuple[tuple[type[EdgekitError], int], ...] = (
    (Overloaded, 503), (RequestTimeout, 504), (InputError, 400), (ConfigError, 400),
    (ArtifactError, 500), (RuntimeFailure, 500), (EdgekitError, 422),
)


def status_of(e: EdgekitError) -> int:
    if isinstance(e, HTTPError):
        return e.status
    return next(code for cls, code in STATUS if isinstance(e, cls))


def json_bytes(data: Any) -> bytes:
    """``data`` as the bytes Starlette's ``JSONResponse`` sends (compact, UTF-8, no NaN)."""
    import json

    return json.dumps(data, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse(data, status_code=status, headers=headers)


def error_response(e: EdgekitError, retry_after_s: int = 1) -> Response:
    """The JSON error for ``e``: 503 answers carry ``Retry-After``."""
    status = status_of(e)
    headers = dict(getattr(e, "headers", {}) or {})
    if status == 503:
        headers.setdefault("Retry-After", str(retry_after_s))
    body: dict[str, Any] = {"error": e.problem}
    if e.fix:
        body["fix"] = e.fix
    return json_response(body, status, headers)


DRAIN_LIMIT = 64 * 1024 * 1024  # a refused body up to this size is read away, so the client sees the 413


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 once it passes ``limit`` bytes (declared or streamed)."""
    return await read_chunks(request.stream(), request.headers.get("content-length"), limit)


async def read_chunks(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """A body from its ``chunks`` (``declared``: its Content-Length header), 413 past ``limit``."""
    too_big = HTTPError(413, f"the request body is larger than the server's limit: more than {limit:,} bytes",
                        fix="send a smaller request, or start the server with a larger --max-body-mb")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        if int(declared) <= DRAIN_LIMIT:  # a client still sending would see a reset, not the answer
            async for _ in chunks:
                pass
        raise too_big
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_big
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, or a 400 naming what is wrong."""
    import json

    body = await read_body(request, limit)
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise HTTPError(400, f"the body is not JSON: {e}", fix="send a JSON object") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "the request body must be a JSON object", fix="send a JSON object")
    return data
