"""``edgekit serve`` over the Open Inference Protocol, spoken by the real ``tritonclient.http``.

One server (uvicorn in a thread, 127.0.0.1, a free port) serves a tiny tensor model converted to
ONNX, OpenVINO and TFLite, and a tiny BERT text classifier. Answers are compared with what
``edgekit.load(artifact)`` computes in-process; load, overload, bad requests, the API key and the
sha256 check are exercised on loopback with bounded request counts.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit
from edgekit.errors import ArtifactError
from tests.conftest import TEXTS, convert_fp32

torch = pytest.importorskip("torch")
httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]'")
pytest.importorskip("uvicorn", reason="pip install 'edgekit[serve]'")
pytestmark = pytest.mark.usefixtures("probe_cache")  # LiteRT probe markers in a fresh cache

from edgekit.serve import ServeConfig  # noqa: E402
from edgekit.serve.registry import find_artifacts  # noqa: E402
from edgekit.serve.server import Server  # noqa: E402

TIMEOUT = 60.0
FEATURES = 16


class Http:
    """Plain HTTP to a server on 127.0.0.1:``port`` (what tests send besides the real clients)."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def post_json(self, path: str, data: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        status, head, body = self.request("POST", path, json.dumps(data).encode(),
                                          {"Content-Type": "application/json", **(headers or {})})
        return status, head, json.loads(body)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of ``GET /metrics`` (0 when absent)."""
        status, _, body = self.request("GET", "/metrics")
        assert status == 200
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in body.decode().splitlines():
            m = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
            if m and ",".join(sorted(m[1].split(","))) == want:
                return float(m[2])
        return 0.0


class ThreadServer(Http):
    """``edgekit.serve.Server`` on 127.0.0.1 in a thread; ready when every model is loaded."""

    def __init__(self, paths: list[Path], **config: Any) -> None:
        self.server = Server(find_artifacts(paths, allow_unverified=config.pop("allow_unverified", False)),
                             ServeConfig(port=0, **config))
        self.server.bind()
        super().__init__(self.server.state.port)
        self.url = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not self.server.state.ready:
            if self.server.state.load_error is not None:
                raise self.server.state.load_error
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.stop()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


# -- artifacts ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP with a dynamic batch axis as ONNX, OpenVINO and TFLite (one name, three formats)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    out = tmp_path_factory.mktemp("mlp_out")
    arts = edgekit.convert(net, (torch.randn(2, FEATURES),), targets=["onnx", "openvino", "tflite"],
                           precisions=["fp32"], name="mlp", input_names=["x"], output_names=["logits"],
                           dynamic_axes={"x": {0: "batch"}}, out=out)
    assert all(a.status == "ok" for a in arts), [(a.format, a.reason) for a in arts]
    return out


@pytest.fixture(scope="module")
def clf(clf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_fp32(clf_dir, tmp_path_factory.mktemp("clf_out"), ["onnx"])["onnx"]


@pytest.fixture(scope="module")
def server(mlp_dir: Path, clf: Path) -> Iterator[ThreadServer]:
    srv = ThreadServer([mlp_dir, clf], max_batch=8, batch_timeout_ms=5, queue_size=64, threads=1)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Iterator[Any]:
    c = httpclient.InferenceServerClient(server.url, network_timeout=TIMEOUT, concurrency=16)
    yield c
    c.close()


def _x(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, FEATURES)).astype(np.float32)


def _infer(client: Any, model: str, x: np.ndarray, binary: bool = True) -> np.ndarray:
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("logits", binary_data=binary)
    return client.infer(model, [inp], outputs=[out]).as_numpy("logits")


# -- tests -------------------------------------------------------------------------------------
def test_models_are_named_from_manifests_and_answer_like_model_run(server: ThreadServer, client: Any,
                                                                   mlp_dir: Path) -> None:
    assert client.is_server_live() and client.is_server_ready()
    names = sorted(server.server.state.models)
    assert names == ["mlp-fp32-onnx", "mlp-fp32-openvino", "mlp-fp32-tflite", "tiny-clf-fp32"]
    for fmt, suffix in (("onnx", ".onnx"), ("openvino", ".xml"), ("tflite", ".tflite")):
        name = f"mlp-fp32-{fmt}"
        assert client.is_model_ready(name)
        meta = client.get_model_metadata(name)
        assert [(i["name"], i["datatype"]) for i in meta["inputs"]] == [("x", "FP32")]
        assert meta["outputs"][0]["name"] == "logits" and meta["parameters"]["sha256_verified"] is True
        with edgekit.load(mlp_dir / f"mlp-fp32{suffix}", threads=1) as m:
            batch = m.signature.inputs[0].shape[0]
            rows = 3 if not isinstance(batch, int) or batch <= 0 else batch
            x = _x(rows, seed=len(fmt))
            want = m.run({"x": x})["logits"]
        for binary in (True, False):  # the binary extension (tritonclient's default) and plain JSON
            np.testing.assert_allclose(_infer(client, name, x, binary), want, rtol=1e-6, atol=1e-6)


def test_text_goes_in_as_bytes_and_labels_come_out(server: ThreadServer, client: Any, clf: Path) -> None:
    with edgekit.load(clf) as m:
        want = m.classify(TEXTS, top_k=2)
    assert len({w["label"] for w in want}) > 1  # guards the fixture: the texts get different labels
    meta = client.get_model_metadata("tiny-clf-fp32")
    assert {"name": "text", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    inp = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
    result = client.infer("tiny-clf-fp32", [inp], parameters={"top_k": 2})
    assert [x.decode() for x in result.as_numpy("label")] == [w["label"] for w in want]
    np.testing.assert_allclose(result.as_numpy("score"), [w["score"] for w in want], atol=1e-5)
    assert result.as_numpy("index").tolist() == [w["index"] for w in want]
    assert result.as_numpy("top_labels").shape == (len(TEXTS), 2)
    assert [x.decode() for x in result.as_numpy("top_labels")[:, 1]] == [w["top"][1]["label"] for w in want]


def test_sixteen_clients_get_batched_and_every_answer_is_right(server: ThreadServer, client: Any,
                                                                mlp_dir: Path) -> None:
    name, count = "mlp-fp32-onnx", 160
    xs = [_x(1 + i % 3, seed=100 + i) for i in range(count)]
    with edgekit.load(mlp_dir / "mlp-fp32.onnx", threads=1) as m:
        wants = [m.run({"x": x})["logits"] for x in xs]
    ok_before = server.metric("edgekit_requests_total", model=name, endpoint="infer", status="200")
    batches_before = server.metric("edgekit_batch_size_count", model=name)
    rows_before = server.metric("edgekit_batch_size_sum", model=name)
    # 16 threads, each with its own tritonclient (its async_infer, gevent-based, ran the requests one
    # after another once the module's client had been used: every request was a batch of one)
    def send(part: list[np.ndarray]) -> list[np.ndarray]:
        c = httpclient.InferenceServerClient(server.url, network_timeout=TIMEOUT)
        try:
            answers = []
            for x in part:
                inp = httpclient.InferInput("x", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                answers.append(c.infer(name, [inp], outputs=[httpclient.InferRequestedOutput("logits")])
                               .as_numpy("logits"))
            return answers
        finally:
            c.close()

    with ThreadPoolExecutor(16) as pool:
        parts = list(pool.map(send, [xs[i::16] for i in range(16)]))
    got = [parts[i % 16][i // 16] for i in range(count)]
    for g, w in zip(got, wants):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    assert server.metric("edgekit_requests_total", model=name, endpoint="infer", status="200") - ok_before == count
    batches = server.metric("edgekit_batch_size_count", model=name) - batches_before
    assert server.metric("edgekit_batch_size_sum", model=name) - rows_before == count  # each request in one batch
    assert batches < count  # sixteen clients at once share model calls
    assert server.metric("edgekit_stage_seconds_count", model=name, stage="inference") >= count
    assert server.metric("edgekit_queue_depth", model=name) == 0


def test_the_text_classifier_batches_texts_of_different_lengths(server: ThreadServer, clf: Path) -> None:
    texts = [TEXTS[i % len(TEXTS)] * (1 + i % 3) for i in range(48)]
    with edgekit.load(clf) as m:
        want = m.classify(texts)

    def one(text: str) -> tuple[int, Any]:
        status, _, body = server.post_json("/v2/models/tiny-clf-fp32/infer", {"inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}]})
        return status, body

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, texts))
    assert [s for s, _ in answers] == [200] * len(texts)
    labels = [next(o for o in b["outputs"] if o["name"] == "label")["data"][0] for _, b in answers]
    scores = [next(o for o in b["outputs"] if o["name"] == "score")["data"][0] for _, b in answers]
    assert labels == [w["label"] for w in want]
    np.testing.assert_allclose(scores, [w["score"] for w in want], atol=1e-4)  # padded with other texts


def test_bad_requests_get_4xx_json_that_names_the_problem(server: ThreadServer) -> None:
    good = {"name": "x", "shape": [1, FEATURES], "datatype": "FP32", "data": [0.0] * FEATURES}
    path = "/v2/models/mlp-fp32-onnx/infer"
    cases: list[tuple[str, Any, int, str]] = [
        ("/v2/models/nope/infer", {"inputs": [good]}, 404, "no model named 'nope'"),
        (path, {"inputs": [{**good, "name": "y"}]}, 400, "unknown input(s) ['y']"),
        (path, {"inputs": [{**good, "shape": [1, 3], "data": [0.0] * 3}]}, 400, "size 3 on axis 1"),
        (path, {"inputs": [{**good, "datatype": "FP99"}]}, 400, "not an OIP datatype"),
        (path, {"inputs": [{**good, "data": [0.0] * 5}]}, 400, "has 5 values, its shape [1, 16] needs 16"),
        (path, {"inputs": [{**good, "datatype": "INT64", "data": [0.5] * FEATURES}]}, 400, "does not fit datatype INT64"),
        (path, {"inputs": [{**good, "datatype": "BYTES", "data": ["a"] * FEATURES}]}, 400, "casting object to float32 would change values"),
        (path, {"inputs": [{**good, "parameters": {"binary_data_size": 64}}]}, 400, "past the end of the body"),
        (path, {"inputs": []}, 400, 'no "inputs" list'),
        (path, {"inputs": [good], "outputs": [{"name": "nope"}]}, 400, "unknown output(s) ['nope']"),
        ("/v2/models/tiny-clf-fp32/infer", {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                                         "data": ["x"]}], "parameters": {"top_k": 0}}, 400, "top_k"),
    ]
    for url, payload, status, problem in cases:
        got, _, body = server.post_json(url, payload)
        assert (got, problem in body["error"]) == (status, True), (payload, body)
        assert body["fix"]
    status, _, body = server.request("POST", path, b"{not json")
    assert status == 400 and "not JSON" in json.loads(body)["error"]
    status, _, body = server.request("POST", path, b"x" * (server.server.config.max_body_bytes + 1))
    assert status == 413 and "larger than the server's limit" in json.loads(body)["error"]
    status, _, body = server.request("GET", "/v2/health/live", headers={"Host": "evil.example"})
    assert status == 403 and "is not this server" in json.loads(body)["error"]
    assert server.request("GET", "/v2/models/mlp-fp32-onnx/versions/7")[0] == 404
    assert server.request("GET", "/v2/health/ready")[0] == 200  # still serving


def test_overload_answers_only_503_with_retry_after(clf: Path) -> None:
    """A queue of 1 in front of a model busy for a while per request: 24 clients at once."""
    import resource

    srv = ThreadServer([clf], max_batch=1, batch_timeout_ms=0, queue_size=1, threads=1)
    path = "/v2/models/tiny-clf-fp32/infer"
    body = json.dumps({"inputs": [{"name": "text", "shape": [64], "datatype": "BYTES",
                                   "data": [" ".join(TEXTS)] * 64}]}).encode()
    try:
        rss = []
        for _ in range(3):
            with ThreadPoolExecutor(24) as pool:
                answers = list(pool.map(lambda _: srv.request("POST", path, body), range(48)))
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
            assert {s for s, _, _ in answers} <= {200, 503}, {s for s, _, _ in answers}
            refused = [(h, json.loads(b)) for s, h, b in answers if s == 503]
            assert refused, "24 clients on a queue of 1 were all admitted"
            assert all(h["retry-after"] == "1" and "requests waiting" in b["error"] for h, b in refused)
            served = [json.loads(b) for s, _, b in answers if s == 200]
            assert served and all(len(a["outputs"][0]["data"]) == 64 for a in served)
        assert rss[-1] - rss[0] < 64 * 1024  # KiB: repeated bursts do not grow memory
        assert srv.request("GET", "/v2/health/ready")[0] == 200
        assert srv.metric("edgekit_requests_total", model="tiny-clf-fp32", endpoint="infer", status="503") > 0
    finally:
        srv.stop()


def test_api_key_is_required_except_on_health(mlp_dir: Path) -> None:
    key = "k" * 32
    srv = ThreadServer([mlp_dir / "mlp-fp32.onnx"], api_key=key)
    try:
        assert srv.request("GET", "/v2/health/ready")[0] == 200
        for headers in ({}, {"Authorization": "Bearer wrong-key-wrong-key"}, {"X-API-Key": key[:-1]}):
            status, _, body = srv.request("GET", "/v2/models/mlp-fp32", headers=headers)
            assert status == 401 and "API key" in json.loads(body)["error"]
        assert srv.request("GET", "/metrics")[0] == 401
        with httpclient.InferenceServerClient(srv.url) as c:
            x = _x(2, 3)
            inp = httpclient.InferInput("x", [2, FEATURES], "FP32")
            inp.set_data_from_numpy(x)
            got = c.infer("mlp-fp32", [inp], headers={"Authorization": f"Bearer {key}"}).as_numpy("logits")
        with edgekit.load(mlp_dir / "mlp-fp32.onnx") as m:
            np.testing.assert_allclose(got, m.run({"x": x})["logits"], rtol=1e-6, atol=1e-6)
    finally:
        srv.stop()


def test_a_modified_or_unverifiable_file_is_refused(mlp_dir: Path, tmp_path: Path) -> None:
    for f in mlp_dir.glob("mlp-fp32.onnx*"):
        shutil.copy(f, tmp_path / f.name)
    model = tmp_path / "mlp-fp32.onnx"
    assert [e.name for e in find_artifacts([model])] == ["mlp-fp32"]
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF  # same size, one byte changed
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the sha256 recorded in its manifest"):
        find_artifacts([tmp_path])
    bare = tmp_path / "bare" / "m.onnx"
    bare.parent.mkdir()
    shutil.copy(mlp_dir / "mlp-fp32.onnx", bare)
    with pytest.raises(ArtifactError, match="has no edgekit manifest") as info:
        find_artifacts([bare])
    assert "--allow-unverified" in info.value.fix
    (entry,) = find_artifacts([bare], allow_unverified=True)
    assert (entry.name, entry.verified) == ("m", False)


def test_defaults_are_safe() -> None:
    config = ServeConfig()
    assert config.host == "127.0.0.1" and config.api_key is None and config.cors_origins == ()
    with pytest.raises(edgekit.ConfigError, match="shorter than 8"):
        ServeConfig(api_key="short")


def test_cli_sigterm_drains_the_request_in_flight_then_exits_0(mlp_dir: Path) -> None:
    """``edgekit serve`` in a child process: a request waiting for batch company when SIGTERM comes
    is still answered, correctly; new connections are refused; the exit status is 0."""
    import os
    import select
    import signal
    import subprocess
    import sys

    model = mlp_dir / "mlp-fp32.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", str(model), "--port", "0",
                             "--threads", "1", "--max-batch", "8", "--batch-timeout-ms", "3000"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        port, deadline, lines = None, time.monotonic() + TIMEOUT, []
        while port is None and time.monotonic() < deadline:
            if select.select([proc.stderr], [], [], 1.0)[0]:
                lines.append(proc.stderr.readline())
                m = re.search(r"ready at http://127\.0\.0\.1:(\d+)/ \(mlp-fp32\)", lines[-1])
                port = int(m[1]) if m else None
        assert port, "".join(lines)
        srv = Http(port)
        x = _x(2, 7)
        body = json.dumps({"inputs": [{"name": "x", "shape": [2, FEATURES], "datatype": "FP32",
                                       "data": x.reshape(-1).tolist()}]}).encode()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(srv.request, "POST", "/v2/models/mlp-fp32/infer", body)
            while srv.metric("edgekit_queue_depth", model="mlp-fp32") < 1:  # waiting for company
                assert not pending.done() and time.monotonic() < deadline
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            status, _, answer = pending.result(TIMEOUT)
        assert status == 200
        with edgekit.load(model) as m:
            want = m.run({"x": x})["logits"]
        np.testing.assert_allclose(np.array(json.loads(answer)["outputs"][0]["data"]).reshape(want.shape), want,
                                   rtol=1e-6, atol=1e-6)
        assert proc.wait(TIMEOUT) == 0
        with pytest.raises(OSError):
            srv.request("GET", "/v2/health/live")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
