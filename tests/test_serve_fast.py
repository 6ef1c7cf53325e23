"""The infer route's ASGI fast path, padding-aware text batches, and onnxruntime spinning in serve.

The fast path (``edgekit/serve/fast.py``) answers ``POST /v2/models/NAME[/versions/V]/infer``
before Starlette: its answers must be the Starlette route's, byte for byte (a CORS server still
takes that route), errors the same JSON, the guard's refusals (API key, Host) unchanged, and the
metrics counted once per request. A gathered text batch is cut into runs of similar length
(``edgekit/serve/buckets.py``): each run must be exactly what the tokenizer gives those texts
padded to their longest, and every request must get its own answer back, in order.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import edgekit
from tests.conftest import TEXTS, convert_fp32

torch = pytest.importorskip("torch")
pytest.importorskip("uvicorn", reason="pip install 'edgekit[serve]'")

from edgekit.serve.buckets import plan, regroup, restore  # noqa: E402
from edgekit.serve.fast import infer_target  # noqa: E402
from tests.test_serve import ThreadServer  # noqa: E402

FEATURES = 8
KEY = "k" * 32


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    return convert_fp32(net, tmp_path_factory.mktemp("mlp"), ["onnx"], example_inputs=(torch.randn(2, FEATURES),),
                        name="fastmlp", input_names=["x"], output_names=["logits"],
                        dynamic_axes={"x": {0: "batch"}})["onnx"]


@pytest.fixture(scope="module")
def clf(clf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_fp32(clf_dir, tmp_path_factory.mktemp("clf"), ["onnx"])["onnx"]


@pytest.fixture(scope="module")
def servers(mlp: Path, clf: Path) -> Iterator[dict[str, ThreadServer]]:
    """The same models behind the fast path, behind Starlette only (CORS on), and behind a key."""
    started = {"fast": ThreadServer([mlp, clf], max_batch=16, batch_timeout_ms=20, threads=1),
               "starlette": ThreadServer([mlp], cors_origins=("http://app.example",), threads=1),
               "key": ThreadServer([mlp], api_key=KEY, threads=1)}
    yield started
    for srv in started.values():
        srv.stop()


def _body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A binary-extension request with a binary output, as tritonclient sends it."""
    head = json.dumps({"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "logits", "parameters": {"binary_data": True}}], "id": "r1"}).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head))}


def test_infer_paths_are_matched_as_starlette_matches_them() -> None:
    assert infer_target("/v2/models/m/infer") == ("m", None)
    assert infer_target("/v2/models/m/versions/1/infer") == ("m", "1")
    for path in ("/v2/models//infer", "/v2/models/m/versions//infer", "/v2/models/m/x/infer",
                 "/v2/models/m/ready", "/v2/models/m/infer/", "/v1/models/m/infer"):
        assert infer_target(path) is None, path


def test_fast_answers_equal_the_starlette_route_and_model_run(servers: dict[str, ThreadServer], mlp: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3, FEATURES)).astype(np.float32)
    with edgekit.load(mlp, threads=1) as m:
        want = m.run({"x": x})["logits"]
    answers = {}
    for label in ("fast", "starlette"):
        for path in ("/v2/models/fastmlp-fp32/infer", "/v2/models/fastmlp-fp32/versions/1/infer"):
            status, head, body = servers[label].request("POST", path, *_body(x))
            assert status == 200, body
            n = int(head["inference-header-content-length"])
            assert head["content-type"] == "application/octet-stream" and int(head["content-length"]) == len(body)
            meta = json.loads(body[:n])
            assert meta["id"] == "r1" and meta["outputs"][0]["shape"] == [3, 3]
            np.testing.assert_allclose(np.frombuffer(body[n:], np.float32).reshape(3, 3), want, rtol=1e-6, atol=1e-6)
            answers[label, path] = body
        status, head, body = servers[label].post_json("/v2/models/fastmlp-fp32/infer", {"inputs": [
            {"name": "x", "shape": [3, FEATURES], "datatype": "FP32", "data": x.reshape(-1).tolist()}]})
        assert status == 200 and head["content-type"] == "application/json"
        np.testing.assert_allclose(np.reshape(body["outputs"][0]["data"], (3, 3)), want, rtol=1e-6, atol=1e-6)
    assert answers["fast", "/v2/models/fastmlp-fp32/infer"] == answers["starlette", "/v2/models/fastmlp-fp32/infer"]


def test_fast_errors_are_the_same_json_and_counted(servers: dict[str, ThreadServer]) -> None:
    fast, slow = servers["fast"], servers["starlette"]
    good = {"name": "x", "shape": [1, FEATURES], "datatype": "FP32", "data": [0.0] * FEATURES}
    cases = [("/v2/models/nope/infer", {"inputs": [good]}, 404, "no model named 'nope'"),
             ("/v2/models/fastmlp-fp32/versions/7/infer", {"inputs": [good]}, 404, "has no version '7'"),
             ("/v2/models/fastmlp-fp32/infer", {"inputs": [{**good, "shape": [1, 3]}]}, 400, "needs 3")]
    for path, payload, status, problem in cases:
        answers = [srv.post_json(path, payload) for srv in (fast, slow)]
        for got, _, body in answers:
            assert got == status and problem in body["error"] and body["fix"], body
    before = fast.metric("edgekit_requests_total", model="fastmlp-fp32", endpoint="infer", status="200")
    seen = fast.metric("edgekit_request_seconds_count", model="fastmlp-fp32", endpoint="infer")
    for _ in range(5):
        assert fast.post_json("/v2/models/fastmlp-fp32/infer", {"inputs": [good]})[0] == 200
    assert fast.metric("edgekit_requests_total", model="fastmlp-fp32", endpoint="infer", status="200") == before + 5
    assert fast.metric("edgekit_request_seconds_count", model="fastmlp-fp32", endpoint="infer") == seen + 5
    assert fast.metric("edgekit_requests_total", model="-", endpoint="infer", status="404") >= 1
    status, _, body = fast.request("POST", "/v2/models/fastmlp-fp32/infer", b"x" * (fast.server.config.max_body_bytes + 1))
    assert status == 413 and "larger than the server's limit" in json.loads(body)["error"]
    status, _, body = fast.request("POST", "/v2/models/fastmlp-fp32/infer", b"{}", {"Host": "evil.example"})
    assert status == 403 and "is not this server" in json.loads(body)["error"]
    assert fast.request("GET", "/v2/models/fastmlp-fp32/infer")[0] == 405  # other methods: Starlette's answer


def test_the_api_key_guards_the_fast_path(servers: dict[str, ThreadServer]) -> None:
    srv, x = servers["key"], np.ones((1, FEATURES), np.float32)
    status, _, body = srv.request("POST", "/v2/models/fastmlp-fp32/infer", *_body(x))
    assert status == 401 and "API key" in json.loads(body)["error"]
    body_, headers = _body(x)
    assert srv.request("POST", "/v2/models/fastmlp-fp32/infer", body_, {**headers, "X-API-Key": KEY})[0] == 200


def test_a_client_gone_mid_body_leaves_the_server_serving(servers: dict[str, ThreadServer]) -> None:
    srv = servers["fast"]
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(b"POST /v2/models/fastmlp-fp32/infer HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                  b"Content-Length: 1000\r\n\r\n{\"inputs\"" % srv.port)
    x = np.ones((2, FEATURES), np.float32)
    assert srv.request("POST", "/v2/models/fastmlp-fp32/infer", *_body(x))[0] == 200
    assert srv.request("GET", "/v2/health/ready")[0] == 200


# -- padding-aware text batches ------------------------------------------------------------------
def _brute(lengths: list[int], call: int) -> float:
    best = float("inf")
    for k in range(len(lengths)):
        for cuts in itertools.combinations(range(1, len(lengths)), k):
            ends = [*cuts, len(lengths)]
            starts = [0, *cuts]
            best = min(best, sum(call + (e - s) * lengths[e - 1] for s, e in zip(starts, ends)))
    return best


def test_the_plan_is_the_cheapest_split_of_sorted_rows() -> None:
    assert plan([20] * 16) == [16]  # equal lengths: one call
    assert plan([8, 8, 8, 8, 40], call_tokens=16) == [4, 5]  # 4 x 8 + 40 beats 5 x 40
    rng = np.random.default_rng(0)
    for _ in range(30):
        lengths = sorted(int(v) for v in rng.integers(1, 60, size=int(rng.integers(1, 9))))
        call = int(rng.integers(0, 40))
        ends = plan(lengths, call)
        starts = [0, *ends[:-1]]
        cost = sum(call + (e - s) * lengths[e - 1] for s, e in zip(starts, ends))
        assert cost == _brute(lengths, call), (lengths, call, ends)


def test_regrouped_runs_are_the_tokenizer_s_own_batches_and_answers_come_back_in_order(clf: Path) -> None:
    from edgekit.tasks import pipeline_for

    texts = [TEXTS[i % len(TEXTS)] * (1 + 3 * (i % 4 == 0)) for i in range(12)]  # a few 4x longer
    with edgekit.load(clf, threads=1) as m:
        p = pipeline_for(m)
        prepared = p.preprocess(texts, batch_size=len(texts))
        found = regroup(prepared)
        assert found is not None
        runs, order = found
        assert len(runs.feeds) > 1 and sum(runs.rows) == len(texts)
        start = 0
        for feed, rows in zip(runs.feeds, runs.rows):
            own = p.preprocess([texts[i] for i in order[start:start + rows]]).feeds[0]
            assert feed.keys() == own.keys()
            for k in own:
                np.testing.assert_array_equal(feed[k], own[k])
            start += rows
        padded = prepared.feeds[0]["input_ids"].size
        assert sum(f["input_ids"].size for f in runs.feeds) < padded
        got = restore(p.postprocess(runs, p.infer(runs), top_k=2), order)
        want = [m.classify([t], top_k=2)[0] for t in texts]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)
    assert regroup(p.preprocess([TEXTS[0]] * 8, batch_size=8)) is None  # one length: nothing to cut


def test_regrouped_embeddings_equal_each_text_alone(emb_dir: Path, tmp_path: Path) -> None:
    from edgekit.tasks import pipeline_for

    art = convert_fp32(emb_dir, tmp_path, ["onnx"])["onnx"]
    texts = [TEXTS[i % len(TEXTS)] * (1 + 3 * (i % 3 == 0)) for i in range(9)]
    with edgekit.load(art, threads=1) as m:
        p = pipeline_for(m)
        found = regroup(p.preprocess(texts, batch_size=len(texts)))
        assert found is not None and len(found[0].feeds) > 1
        runs, order = found
        got = restore(p.postprocess(runs, p.infer(runs)), order)
        want = np.concatenate([m.embed([t]) for t in texts])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_sixteen_texts_batched_over_http_each_get_their_own_answer(servers: dict[str, ThreadServer], clf: Path) -> None:
    srv = servers["fast"]
    texts = [TEXTS[i % len(TEXTS)] * (1 + (i % 5 == 0) * 4) for i in range(32)]
    with edgekit.load(clf, threads=1) as m:
        want = [m.classify([t])[0] for t in texts]
    calls = srv.metric("edgekit_batch_size_count", model="tiny-clf-fp32")

    def one(text: str) -> dict:
        status, _, body = srv.post_json("/v2/models/tiny-clf-fp32/infer", {"inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]})
        assert status == 200, body
        return {o["name"]: o["data"][0] for o in body["outputs"]}

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(one, texts))
    assert [g["label"] for g in got] == [w["label"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)
    assert srv.metric("edgekit_batch_size_count", model="tiny-clf-fp32") - calls < len(texts)  # batched


# -- onnxruntime spinning under edgekit serve ---------------------------------------------------
def test_served_onnx_models_keep_ort_spinning_unless_told(mlp: Path) -> None:
    """Served like ``edgekit.load``: ORT's own spinning (fastest on a quiet host, docs/serving.md);
    ``-O onnxruntime.spinning=false|run`` reaches the session."""
    from edgekit.serve import ServeConfig
    from edgekit.serve.metrics import Metrics
    from edgekit.serve.registry import find_artifacts
    from edgekit.serve.served import load_served

    def entry_of(so: object, key: str) -> str | None:
        try:
            return so.get_session_config_entry(key)  # type: ignore[attr-defined]
        except RuntimeError:  # not set: ORT's default
            return None

    (entry,) = find_artifacts([mlp])
    for options, spin, stop in (({}, None, None), ({"onnxruntime.spinning": "false"}, "0", None),
                                ({"onnxruntime.spinning": "run"}, "1", "1")):
        served = load_served(entry, ServeConfig(threads=1, load_options=options), Metrics())
        try:
            so = served.model._session.get_session_options()
            assert entry_of(so, "session.intra_op.allow_spinning") == spin, options
            assert entry_of(so, "session.force_spinning_stop") == stop, options
        finally:
            served._thread.shutdown()
            served.model.close()
