"""Open Inference Protocol (KServe v2) REST routes: health, metadata, readiness and infer.

Tensor models take typed tensors (JSON or the binary extension ``tritonclient`` uses). Models
whose artifact records a task also take text or images as a BYTES input named ``text`` or
``image`` and answer with the task's outputs: ``label`` (BYTES), ``score`` (FP32) and ``index``
(INT64) for classifiers (``top_labels``/``top_scores`` [N, k] with ``parameters.top_k``), and
``embedding`` (FP32 [N, D]) for embedders.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.serve.app import guarded, state_of
from edgekit.serve.responses import HTTPError, json_bytes, json_response, read_body
from edgekit.serve.tensors import HEADER, datatype_of, decode_inputs, encode_outputs, parse_request, texts_of

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import BaseRoute

    from edgekit.serve.app import ServerState
    from edgekit.serve.served import ServedModel
    from edgekit.types import TensorSpec

VERSION = "1"  # one version per served artifact
TASK_OUTPUTS: dict[str, list[tuple[str, str, list[int]]]] = {
    "classify": [("label", "BYTES", [-1]), ("score", "FP32", [-1]), ("index", "INT64", [-1])],
    "embed": [("embedding", "FP32", [-1, -1])],
}
MAX_TOP_K = 100


def _spec(spec: TensorSpec) -> dict[str, Any]:
    shape = [d if isinstance(d, int) and d > 0 else -1 for d in spec.shape]
    return {"name": spec.name, "datatype": datatype_of(spec.dtype), "shape": shape}


def _verb(served: ServedModel) -> str | None:
    verbs = type(served.pipeline).verbs if served.pipeline is not None else ()
    return verbs[0] if verbs else None


def metadata(served: ServedModel) -> dict[str, Any]:
    """Model metadata from the signature, plus the task input and outputs where there is a task."""
    sig = served.model.signature
    inputs, outputs = [_spec(s) for s in sig.inputs], [_spec(s) for s in sig.outputs]
    params: dict[str, Any] = {k: v for k, v in served.describe().items() if isinstance(v, (str, int, bool))}
    verb = _verb(served)
    if verb is not None:
        inputs.append({"name": served.input_kind, "datatype": "BYTES", "shape": [-1]})
        outputs += [{"name": n, "datatype": d, "shape": s} for n, d, s in TASK_OUTPUTS[verb]]
        params["task_input"] = served.input_kind
    return {"name": served.name, "versions": [VERSION], "platform": f"edgekit_{served.model.name}",
            "inputs": inputs, "outputs": outputs, "parameters": params}


async def server_metadata(request: Request) -> Response:
    import edgekit

    return json_response({"name": "edgekit", "version": edgekit.__version__, "extensions": ["binary_tensor_data"]})


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    state = state_of(request)
    return json_response({"ready": state.ready}, 200 if state.ready else 503)


async def model_metadata(request: Request) -> Response:
    name = request.path_params["name"]
    return await guarded(request, name, "metadata", lambda: _metadata(request, name))


async def _metadata(request: Request, name: str) -> Response:
    _version(request)
    return json_response(metadata(state_of(request).model(name)))


async def model_ready(request: Request) -> Response:
    name = request.path_params["name"]

    async def answer() -> Response:
        _version(request)
        state_of(request).model(name)
        return json_response({"name": name, "ready": True})

    return await guarded(request, name, "ready", answer)


def _version(request: Request) -> None:
    check_version(request.path_params["name"], request.path_params.get("version"))


def check_version(name: str, version: str | None) -> None:
    """404 unless ``version`` is absent or the one version every served artifact has."""
    if version not in (None, "", VERSION):
        raise HTTPError(404, f"model {name!r} has no version {version!r}",
                        fix=f"use version {VERSION} or leave the version out")


async def infer(request: Request) -> Response:
    name = request.path_params["name"]

    async def answer() -> Response:
        from starlette.responses import Response

        _version(request)
        state = state_of(request)
        served = state.model(name)  # 404/503 before the body is read
        body = await read_body(request, state.config.max_body_bytes)
        content, ctype, headers = await answer_infer(state, served, body, request.headers.get(HEADER))
        return Response(content, media_type=ctype, headers=headers)

    return await guarded(request, name, "infer", answer)


async def answer_infer(state: ServerState, served: ServedModel, body: bytes,
                       header_length: str | None) -> tuple[bytes, str, dict[str, str] | None]:
    """An infer request's answer: (body, content type, extra headers). Shared by the Starlette
    route and the ASGI fast path (:mod:`edgekit.serve.fast`); errors are raised as EdgekitError."""
    t0 = time.perf_counter()
    req, blob = parse_request(body, header_length)
    arrays = decode_inputs(req, blob)
    params = req.get("parameters") or {}
    decode_ms = (time.perf_counter() - t0) * 1000.0
    task_input = served.input_kind if _verb(served) else None
    if task_input is not None and task_input in arrays and arrays[task_input].dtype == object:
        outputs, timing = await _task(served, task_input, arrays, params)
    else:
        outputs, timing = await served.infer(arrays)
    timing["preprocess_ms"] = timing.get("preprocess_ms", 0.0) + decode_ms
    state.metrics.observe_stages(served.name, timing)
    outputs = _select(outputs, req.get("outputs"))
    binary = _binary(req, params, outputs)
    tensors, raw = encode_outputs(outputs, binary)
    answer: dict[str, Any] = {"model_name": served.name, "model_version": VERSION, "outputs": tensors}
    if isinstance(req.get("id"), str):
        answer["id"] = req["id"]
    if not raw:
        return json_bytes(answer), "application/json", None
    head = json.dumps(answer).encode()
    return b"".join([head, *raw]), "application/octet-stream", {HEADER: str(len(head))}


async def _task(served: ServedModel, kind: str, arrays: dict[str, np.ndarray],
                params: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    if len(arrays) != 1:
        raise HTTPError(400, f"a {kind} request takes the BYTES input {kind!r} alone, got {sorted(arrays)}",
                        fix=f"send only {kind!r}, or only the model's tensors")
    raw = arrays[kind].reshape(-1)
    items: list[Any] = texts_of(kind, raw) if kind == "text" else [bytes(x) for x in raw]
    if _verb(served) == "embed":
        vectors, timing = await served.embed(items)
        return {"embedding": np.asarray(vectors, dtype=np.float32)}, timing
    top_k = params.get("top_k", 1)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= MAX_TOP_K:
        raise HTTPError(400, f"parameters.top_k must be an integer from 1 to {MAX_TOP_K}, got {top_k!r}",
                        fix='send e.g. "parameters": {"top_k": 3}')
    results, timing = await served.classify(items, top_k)
    out = {"label": _bytes([r["label"] for r in results]),
           "score": np.asarray([r["score"] for r in results], dtype=np.float32),
           "index": np.asarray([r["index"] for r in results], dtype=np.int64)}
    if "top_k" in params:
        k = min(len(r["top"]) for r in results) if results else 0
        out["top_labels"] = _bytes([t["label"] for r in results for t in r["top"][:k]]).reshape(len(results), k)
        out["top_scores"] = np.asarray([[t["score"] for t in r["top"][:k]] for r in results],
                                       dtype=np.float32).reshape(len(results), k)
    return out, timing


def _bytes(values: list[str]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = [v.encode("utf-8") for v in values]
    return arr


def _select(outputs: dict[str, np.ndarray], wanted: Any) -> dict[str, np.ndarray]:
    if not wanted:
        return outputs
    names = [o.get("name") if isinstance(o, dict) else None for o in wanted]
    unknown = [n for n in names if n not in outputs]
    if unknown:
        raise HTTPError(400, f"unknown output(s) {unknown}", fix=f"this request produces: {', '.join(outputs)}")
    return {n: outputs[n] for n in names}


def _binary(req: dict[str, Any], params: dict[str, Any], outputs: dict[str, np.ndarray]) -> set[str]:
    """Outputs to send raw: those asked with ``binary_data``, or all with ``binary_data_output``."""
    if params.get("binary_data_output"):
        return set(outputs)
    return {o["name"] for o in req.get("outputs") or [] if isinstance(o, dict)
            and (o.get("parameters") or {}).get("binary_data")}


def routes() -> list[BaseRoute]:
    from starlette.routing import Route

    models = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    return [  # infer first: the router tries routes in order, and infer is the hot one
        *(Route(base + "/infer", infer, methods=["POST"]) for base in (models, versioned)),
        Route("/v2", server_metadata), Route("/v2/health/live", live), Route("/v2/health/ready", ready),
        *(Route(base, model_metadata) for base in (models, versioned)),
        *(Route(base + "/ready", model_ready) for base in (models, versioned)),
    ]
