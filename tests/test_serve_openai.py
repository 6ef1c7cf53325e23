"""``edgekit serve``'s OpenAI-compatible routes, spoken by the real ``openai`` client: embeddings
from a tiny sentence-transformers BERT (ONNX), completions and chat from a tiny GGUF Llama, greedy
answers equal to ``edgekit.load(...).generate/chat``, streamed equal to non-streamed, and a
client killed mid-stream leaving the server healthy.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit
from tests.conftest import TEXTS, convert_fp32
from tests.test_serve import TIMEOUT, ThreadServer

openai = pytest.importorskip("openai", reason="pip install openai")
pytest.importorskip("llama_cpp", reason="pip install 'edgekit[llamacpp]'")
pytest.importorskip("gguf")
pytestmark = pytest.mark.usefixtures("probe_cache")  # LiteRT probe markers in a fresh cache

PROMPT = "The council announced"
MESSAGES = [{"role": "user", "content": "How deep is the river?"}]


@pytest.fixture(scope="module")
def emb(emb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_fp32(emb_dir, tmp_path_factory.mktemp("emb_out"), ["onnx"])["onnx"]


@pytest.fixture(scope="module")
def server(emb: Path, lm: Path) -> Iterator[ThreadServer]:
    srv = ThreadServer([emb, lm], threads=1, queue_size=16)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: ThreadServer) -> Any:
    return openai.OpenAI(base_url=f"http://{server.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)


def test_models_lists_every_artifact(client: Any) -> None:
    assert sorted(m.id for m in client.models.list()) == ["lm-fp16", "tiny-st-fp32"]


def test_embeddings_equal_model_embed(client: Any, server: ThreadServer, emb: Path) -> None:
    with edgekit.load(emb) as m:
        want = m.embed(TEXTS)
    before = server.metric("edgekit_requests_total", model="tiny-st-fp32", endpoint="embeddings", status="200")
    got = client.embeddings.create(model="tiny-st-fp32", input=TEXTS)  # the client asks for base64
    np.testing.assert_allclose(np.array([d.embedding for d in got.data]), want, atol=1e-5)
    plain = client.embeddings.create(model="tiny-st-fp32", input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(plain.data[0].embedding, want[0], atol=1e-5)
    assert got.usage.prompt_tokens > len(TEXTS) and got.usage.total_tokens == got.usage.prompt_tokens
    after = server.metric("edgekit_requests_total", model="tiny-st-fp32", endpoint="embeddings", status="200")
    assert after - before == 2


def test_greedy_completion_streamed_equals_non_streamed_and_model_generate(client: Any, server: ThreadServer,
                                                                           lm: Path) -> None:
    with edgekit.load(lm) as m:
        want = m.generate(PROMPT, max_tokens=12, temperature=0.0)
        prompt_tokens = len(m.tokenize(PROMPT))
    tokens_before = server.metric("edgekit_generated_tokens_total", model="lm-fp16")
    full = client.completions.create(model="lm-fp16", prompt=PROMPT, max_tokens=12, temperature=0)
    assert full.choices[0].text == want and want
    assert full.usage.prompt_tokens == prompt_tokens
    assert 0 < full.usage.completion_tokens <= 12
    # the engine's own count: exactly max_tokens when it stopped for length (not the text re-tokenized)
    assert (full.usage.completion_tokens == 12) == (full.choices[0].finish_reason == "length")
    chunks = list(client.completions.create(model="lm-fp16", prompt=PROMPT, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.choices[0].finish_reason
    generated = server.metric("edgekit_generated_tokens_total", model="lm-fp16") - tokens_before
    assert generated == 2 * full.usage.completion_tokens


def test_greedy_chat_streamed_equals_non_streamed_and_model_chat(client: Any, lm: Path) -> None:
    with edgekit.load(lm) as m:
        want = m.chat(MESSAGES, max_tokens=10, temperature=0.0)
    full = client.chat.completions.create(model="lm-fp16", messages=MESSAGES, max_tokens=10, temperature=0)
    assert full.choices[0].message.content == want and full.choices[0].message.role == "assistant"
    assert full.usage.prompt_tokens > 0 and full.usage.total_tokens > full.usage.prompt_tokens
    stream = client.chat.completions.create(model="lm-fp16", messages=MESSAGES, max_tokens=10, temperature=0,
                                            stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == want


def test_four_concurrent_streams_all_get_their_own_answer(client: Any, lm: Path) -> None:
    """Streamed and non-streamed requests at once (decoded together by the server's 4 slots) give
    what each prompt gives alone."""
    prompts = ["The council", "A small team", "Researchers", "Farmers planted"]
    with edgekit.load(lm) as m:
        want = [m.generate(p, max_tokens=32, temperature=0.0) for p in prompts]

    def ask(job: tuple[str, bool]) -> str:
        prompt, streamed = job
        if not streamed:
            return client.completions.create(model="lm-fp16", prompt=prompt, max_tokens=32, temperature=0).choices[0].text
        chunks = client.completions.create(model="lm-fp16", prompt=prompt, max_tokens=32, temperature=0, stream=True)
        return "".join(c.choices[0].text for c in chunks)

    jobs = [(p, True) for p in prompts] + [(p, False) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(ask, jobs)) == want * 2


@pytest.mark.parametrize("precision", ["f16", "q8_0"])
def test_sequences_decoded_together_give_the_text_each_gives_alone(lm: Path, lm_q8: Path, precision: str) -> None:
    """Continuous batching: 4 prompts admitted at the same step of one context (parallel=4) give the
    greedy text each gives alone in a one-sequence context, with exact token counts. On this
    x86 host q8_0 decodes the 4 in one llama.cpp call, f16 one call each (its kernels round a
    batch of 4 differently from a batch of 1, which the load-time probe sees)."""
    path = lm if precision == "f16" else lm_q8
    prompts = ["The council", "A small team", "Researchers found", "Farmers planted"]
    with edgekit.load(path, threads=1) as m:
        alone = [m.generate(p, max_tokens=24, temperature=0.0) for p in prompts]
    with edgekit.load(path, threads=1, parallel=4) as m:
        assert m.describe()["parallel"] == 4
        if precision == "q8_0":  # the batched path is the one under test here (x86: Q8_0 logits bit-identical)
            assert m.describe()["decode_together"] is True
        got: list[list[str]] = [[] for _ in prompts]
        with m._engine.exclusive():  # nothing is admitted until all four wait: they start together
            requests = [m.start_generation(prompt=p, max_tokens=24, temperature=0.0, on_piece=got[i].append)
                        for i, p in enumerate(prompts)]
        assert all(r.done.wait(TIMEOUT) for r in requests)
        assert m._engine.peak == 4 and m._engine.busy == 0
        assert ["".join(g) for g in got] == alone
        for r in requests:
            assert r.error is None and (r.finish_reason == "length") == (r.completion_tokens == 24)
            assert r.prompt_tokens == len(m.tokenize(prompts[requests.index(r)]))
        with ThreadPoolExecutor(4) as pool:  # the library's own calls from threads are batched too
            streamed = list(pool.map(lambda p: "".join(m.generate(p, max_tokens=24, temperature=0.0, stream=True)),
                                     prompts))
        assert streamed == alone


def test_a_cancelled_sequence_frees_its_slot_and_logits_wait_for_the_engine(lm: Path) -> None:
    with edgekit.load(lm, threads=1, parallel=2) as m:
        first = m.logits(m.tokenize(PROMPT))
        started = __import__("threading").Event()
        r = m.start_generation(prompt=PROMPT, max_tokens=200, temperature=0.0, on_piece=lambda _: started.set())
        assert started.wait(TIMEOUT)
        r.cancel()
        assert r.done.wait(TIMEOUT) and r.finish_reason is None and r.completion_tokens < 200
        np.testing.assert_array_equal(m.logits(m.tokenize(PROMPT)), first)  # an empty cache again
        assert m.generate(PROMPT, max_tokens=6, temperature=0.0) == m.generate(PROMPT, max_tokens=6, temperature=0.0)


def test_logits_from_threads_take_turns_with_generations_in_flight(lm_q8: Path) -> None:
    """``logits()`` waits for the engine's sequences to end and admits none meanwhile: from 6
    threads, generations and logits interleave and each equals its value computed alone."""
    prompts = ["The council", "A small team", "Researchers found", "Farmers planted"] * 2
    with edgekit.load(lm_q8, threads=1) as m:
        alone = [m.generate(p, max_tokens=40, temperature=0.0) for p in prompts]
        want = m.logits(m.tokenize(PROMPT))
    with edgekit.load(lm_q8, threads=1, parallel=3) as m, ThreadPoolExecutor(6) as pool:
        texts = pool.map(lambda p: m.generate(p, max_tokens=40, temperature=0.0), prompts)
        scores = list(pool.map(lambda _: m.logits(m.tokenize(PROMPT)), range(6)))
        assert list(texts) == alone and m._engine.busy == 0
    assert all(np.array_equal(x, want) for x in scores)


def test_stop_strings_are_found_across_pieces_and_utf8_is_decoded_whole() -> None:
    from edgekit.runtimes.llamacpp.engine import StopText

    t = StopText(["END", "\n\n"])
    assert t.push(b"Hello E") == ("Hello ", False)  # "E" may start END: held back
    assert t.push(b"N") == ("", False)
    assert t.push(b"D and more") == ("", True)
    held = StopText(["xyz"])
    assert held.push(b"abx") == ("ab", False) and held.push(b"q") == ("xq", False)
    assert held.push(b"xy", final=True) == ("xy", False)  # the end: nothing more to wait for
    e = "\u00e9".encode()
    plain = StopText([])
    assert plain.push(e[:1]) == ("", False) and plain.push(e[1:] + b"!") == ("\u00e9!", False)


def test_a_client_killed_mid_stream_leaves_the_server_healthy(client: Any, server: ThreadServer) -> None:
    body = json.dumps({"model": "lm-fp16", "prompt": PROMPT, "max_tokens": 64, "temperature": 0, "stream": True})
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: {")
        conn.sock.close()  # gone mid-stream
        conn.close()
    full = client.completions.create(model="lm-fp16", prompt=PROMPT, max_tokens=12, temperature=0)
    assert full.choices[0].text and server.request("GET", "/v2/health/ready")[0] == 200
    assert server.server.state.models["lm-fp16"].batcher.depth == 0


def test_generation_errors_are_openai_style_4xx(client: Any, server: ThreadServer) -> None:
    cases = [
        ({"model": "lm-fp16", "prompt": PROMPT, "n": 2}, 400, "n other than 1"),
        ({"model": "lm-fp16", "prompt": PROMPT, "max_tokens": 0}, 400, "max_tokens must be"),
        ({"model": "lm-fp16", "prompt": [1, 2, 3]}, 400, "prompt must be a string"),
        ({"model": "lm-fp16", "prompt": PROMPT, "temperature": 9}, 400, "temperature must be"),
        ({"model": "tiny-st-fp32", "prompt": PROMPT}, 400, "does not generate text"),
        ({"model": "nope", "prompt": PROMPT}, 404, "no model named 'nope'"),
    ]
    for payload, status, problem in cases:
        got, _, answer = server.post_json("/v1/completions", payload)
        assert (got, problem in answer.get("error", "")) == (status, True), (payload, answer)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="lm-fp16", input="x")
    got, _, answer = server.post_json("/v1/chat/completions", {"model": "lm-fp16", "messages": "hi"})
    assert got == 400 and "messages must be" in answer["error"]


def test_generation_overload_is_503_with_retry_after(lm: Path) -> None:
    srv = ThreadServer([lm], threads=1, queue_size=1, load_options={"llamacpp.parallel": 1})  # one slot
    try:
        body = {"model": "lm-fp16", "prompt": PROMPT, "max_tokens": 48, "temperature": 0, "stream": True}
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: srv.request("POST", "/v1/completions", json.dumps(body).encode(),
                                                          {"Content-Type": "application/json"}), range(8)))
        assert {s for s, _, _ in answers} <= {200, 503}
        refused = [(h, json.loads(b)) for s, h, b in answers if s == 503]
        assert refused and all(h["retry-after"] == "1" and "requests waiting" in b["error"] for h, b in refused)
        assert all(b.rstrip().endswith(b"data: [DONE]") for s, _, b in answers if s == 200)
        assert srv.server.state.models["lm-fp16"].batcher.depth == 0
    finally:
        srv.stop()


LONG = 16384  # a context the tiny model needs seconds to fill (~2,000 tokens/s at the end, 1 thread)


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_a_client_gone_before_its_answer_stops_the_generation(lm: Path) -> None:
    """A non-streamed completion or chat whose client closes the connection mid-generation stops
    there (the server sees ``http.disconnect``), not at max_tokens: the engine made far fewer
    tokens, its one slot is free for the next request at once, and the request counts as 499."""
    srv = ThreadServer([lm], threads=1, queue_size=4, max_tokens_limit=LONG,
                       load_options={"llamacpp.n_ctx": LONG, "llamacpp.parallel": 1})
    try:
        engine = srv.server.state.models["lm-fp16"].model._engine
        for path, payload in (("/v1/completions", {"prompt": PROMPT}), ("/v1/chat/completions", {"messages": MESSAGES})):
            before = engine.generated
            body = json.dumps({"model": "lm-fp16", "max_tokens": LONG, "temperature": 0, **payload})
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=TIMEOUT)
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            wait_until(lambda b=before: engine.generated > b, "the generation did not start")
            conn.sock.close()  # gone before the answer
            conn.close()
            wait_until(lambda: engine.busy == 0, "the generation did not end")
            made = engine.generated - before
            assert 0 < made < LONG // 4, made  # the old code ran to the end of the context (16,374 tokens)
        gone = srv.metric("edgekit_requests_total", model="lm-fp16", endpoint="completions", status="499")
        assert gone == 1 and srv.metric("edgekit_requests_total", model="lm-fp16", endpoint="chat_completions",
                                        status="499") == 1
        client = openai.OpenAI(base_url=f"http://{srv.url}/v1", api_key="unused", timeout=TIMEOUT, max_retries=0)
        after = engine.generated
        answer = client.completions.create(model="lm-fp16", prompt=PROMPT, max_tokens=8, temperature=0)
        assert answer.usage.completion_tokens == engine.generated - after  # nothing else ran meanwhile
    finally:
        srv.stop()
