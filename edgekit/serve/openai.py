"""OpenAI-compatible routes: ``/v1/models``, ``/v1/embeddings`` (embedding artifacts) and
``/v1/completions`` / ``/v1/chat/completions`` (GGUF language models), streaming as server-sent
events. Unsupported fields that would change the answer (``n`` > 1, token-id prompts) are refused
with 400 rather than ignored.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.responses import StreamingResponse

from edgekit.serve.app import guarded, state_of
from edgekit.serve.llm import ClientGone, Generation, stream
from edgekit.serve.responses import HTTPError, json_response, read_json

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute

    from edgekit.serve.app import ServerState
    from edgekit.serve.served import ServedModel

MAX_EMBED_INPUTS = 2048


class EventStream(StreamingResponse):
    """Server-sent events whose generator is closed as soon as the response ends, a client gone
    included (Starlette leaves it suspended, and the model generating, until garbage collection)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def _model(state: ServerState, body: dict[str, Any]) -> ServedModel:
    name = body.get("model")
    if not isinstance(name, str):
        raise HTTPError(400, "the request names no model", fix=f"send \"model\": one of {', '.join(state.models)}")
    return state.model(name)


async def list_models(request: Request) -> Response:
    state = state_of(request)
    created = int(state.started)
    return json_response({"object": "list", "data": [
        {"id": e.name, "object": "model", "created": created, "owned_by": "edgekit"} for e in state.entries]})


async def embeddings(request: Request) -> Response:
    state = state_of(request)
    body, problem = await _body(request, state)
    name = str(body.get("model"))

    async def answer() -> Response:
        if problem is not None:
            raise problem
        served = _model(state, body)
        texts = body.get("input")
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise HTTPError(400, "input must be a string or a non-empty list of strings",
                            fix='send "input": ["some text", ...] (token-id inputs are not supported)')
        if len(texts) > MAX_EMBED_INPUTS:
            raise HTTPError(413, f"{len(texts)} inputs, more than {MAX_EMBED_INPUTS}", fix="send fewer per request")
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            raise HTTPError(400, f"encoding_format {fmt!r} is not supported", fix="use float or base64")
        vectors, timing = await served.embed(texts)
        state.metrics.observe_stages(served.name, timing)
        data = [{"object": "embedding", "index": i, "embedding": _encode(v, fmt)} for i, v in enumerate(vectors)]
        tokens = int(timing.get("tokens", 0))
        return json_response({"object": "list", "data": data, "model": served.name,
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    return await guarded(request, name, "embeddings", answer)


def _encode(vector: np.ndarray, fmt: str) -> Any:
    arr = np.asarray(vector, dtype="<f4")
    return base64.b64encode(arr.tobytes()).decode() if fmt == "base64" else arr.tolist()


def _sampling(body: dict[str, Any], state: ServerState, default_max: int) -> dict[str, Any]:
    """The generation options of a request, checked."""
    if body.get("n", 1) != 1:
        raise HTTPError(400, "n other than 1 is not supported", fix="send n=1 and repeat the request")
    limit = state.config.max_tokens_limit
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    max_tokens = default_max if max_tokens is None else max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= limit:
        raise HTTPError(400, f"max_tokens must be an integer from 1 to {limit}, got {max_tokens!r}",
                        fix="send e.g. max_tokens=128")
    temperature = body.get("temperature", 1.0)
    top_p = body.get("top_p", 1.0)
    for key, value, high in (("temperature", temperature, 2.0), ("top_p", top_p, 1.0)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= high:
            raise HTTPError(400, f"{key} must be a number from 0 to {high:g}, got {value!r}", fix=f"send e.g. {key}=1")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list) and len(stop) <= 4
                                                           and all(isinstance(s, str) for s in stop))):
        raise HTTPError(400, "stop must be a string or a list of up to 4 strings", fix='send e.g. "stop": ["\\n"]')
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise HTTPError(400, f"seed must be an integer, got {seed!r}", fix="send e.g. seed=0")
    return {"max_tokens": max_tokens, "temperature": float(temperature), "top_p": float(top_p),
            "stop": stop, "seed": seed}


async def completions(request: Request) -> Response:
    return await _generate(request, chat=False)


async def chat_completions(request: Request) -> Response:
    return await _generate(request, chat=True)


async def _generate(request: Request, *, chat: bool) -> Response:
    state = state_of(request)
    endpoint = "chat_completions" if chat else "completions"
    body, problem = await _body(request, state)
    name = str(body.get("model"))
    return await guarded(request, name, endpoint, lambda: _answer(request, state, body, chat, problem))


async def _body(request: Request, state: ServerState) -> tuple[dict[str, Any], HTTPError | None]:
    """The JSON body, or {} and the error to answer with (raised inside ``guarded``)."""
    try:
        return await read_json(request, state.config.max_body_bytes), None
    except HTTPError as e:
        return {}, e


def _check_input(body: dict[str, Any], chat: bool) -> tuple[str | None, list[dict[str, str]] | None]:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise HTTPError(400, "messages must be a non-empty list of {role, content} objects with text content",
                            fix='send "messages": [{"role": "user", "content": "Hello"}]')
        return None, [{"role": m["role"], "content": m["content"]} for m in messages]
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise HTTPError(400, "prompt must be a string", fix='send "prompt": "Once upon a time" (one prompt per request)')
    return prompt, None


async def _answer(request: Request, state: ServerState, body: dict[str, Any], chat: bool,
                  problem: HTTPError | None) -> Response:
    if problem is not None:
        raise problem
    served = _model(state, body)
    if not served.generates:
        raise HTTPError(400, f"model {served.name!r} does not generate text (task {served.task!r})",
                        fix="use a GGUF language model; /v1/embeddings serves embedding models")
    prompt, messages = _check_input(body, chat)
    options = _sampling(body, state, 16 if not chat else state.config.max_tokens_limit)
    model, gen = served.model, Generation(options["max_tokens"])

    def start(on_piece: Any, on_done: Any) -> Any:
        return model.start_generation(prompt=prompt, messages=messages, on_piece=on_piece, on_done=on_done,
                                      **options)

    def count(g: Generation) -> None:
        state.metrics.observe_tokens(served.name, g.prompt_tokens, g.completion_tokens,
                                     (g.finished or 0) - (g.first_piece or g.started))
        state.metrics.observe_stages(served.name, {"inference_ms": ((g.finished or 0) - g.started) * 1000.0})

    pieces = stream(served, gen, start, count, state.config.request_timeout_s, request.receive)
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    first = await _first(pieces)  # errors and 503s surface here, before a response starts
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events = _events(pieces, first, gen, served.name, ident, chat, include_usage)
        return EventStream(events, media_type="text/event-stream", headers={"Cache-Control": "no-store"})
    async for _ in pieces:  # a client that leaves meanwhile ends it (ClientGone, answered to nobody)
        pass
    return json_response(_final(gen, served.name, ident, chat))


async def _first(pieces: AsyncIterator[list[str]]) -> list[str]:
    """The first burst of pieces (or none); a refused or failed generation raises here, its stream closed."""
    try:
        return await pieces.__anext__()
    except StopAsyncIteration:
        return []
    except BaseException:
        await pieces.aclose()  # type: ignore[attr-defined]
        raise


def _chunk(name: str, ident: str, chat: bool, text: str | None, finish: str | None, created: int,
           role: bool = False) -> dict[str, Any]:
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    return {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created, "model": name, "choices": [choice]}


def _event(data: Any) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def _events(pieces: AsyncIterator[list[str]], first: list[str], gen: Generation, name: str, ident: str,
                  chat: bool, include_usage: bool) -> AsyncIterator[bytes]:
    """One event per piece; the pieces of a burst written together."""
    created = int(time.time())
    # every piece's event is the same JSON but for its text: built once, the text spliced in
    head, _, tail = json.dumps(_chunk(name, ident, chat, "\x00", None, created)).partition(json.dumps("\x00"))
    head, tail = "data: " + head, tail + "\n\n"

    def burst(texts: list[str]) -> bytes:
        return "".join(head + json.dumps(t) + tail for t in texts).encode()

    try:
        if chat:
            yield _event(_chunk(name, ident, chat, "", None, created, role=True))
        if first:
            yield burst(first)
        async for texts in pieces:
            yield burst(texts)
    except ClientGone:
        return
    finally:
        await pieces.aclose()  # type: ignore[attr-defined]  # a client gone: stop generating now
    yield _event(_chunk(name, ident, chat, None, gen.finish_reason, created))
    if include_usage:
        last = _chunk(name, ident, chat, None, None, created)
        last["choices"], last["usage"] = [], gen.usage()
        yield _event(last)
    yield b"data: [DONE]\n\n"


def _final(gen: Generation, name: str, ident: str, chat: bool) -> dict[str, Any]:
    if chat:
        choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": gen.text},
                                  "logprobs": None, "finish_reason": gen.finish_reason}
    else:
        choice = {"index": 0, "text": gen.text, "logprobs": None, "finish_reason": gen.finish_reason}
    return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": name, "choices": [choice], "usage": gen.usage()}


def routes() -> list[BaseRoute]:
    from starlette.routing import Route

    return [Route("/v1/models", list_models), Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"])]
