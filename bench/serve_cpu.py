"""``edgekit serve``'s CPU time per request, by thread: a load-robust view of the HTTP cost.

Wall-clock latency on a shared host moves with everyone else's load; the CPU a request costs does
much less. For each case (the stand-in model that computes nothing, MiniLM-L6 int8 at 48 tokens)
this sends ``--requests`` binary OIP requests one after another on one keep-alive connection and
reads, before and after, the server's per-thread run time from ``/proc/PID/task/TID/schedstat``
(nanoseconds, the scheduler's own count) and the client thread's ``time.thread_time()``. It
prints CPU ms per request for the event-loop thread (the server's main thread: uvicorn, Starlette,
the routes), the model's thread (``edgekit-NAME``: ``Model.run``), every other thread (onnxruntime's
pool, which spins after a run unless ``--no-spin``) and the client, beside the same
``Model.run`` in-process (process CPU per call, the pool included). Rounds alternate between the
servers (this code and ``--baseline-src``), medians over rounds.

    python bench/serve_cpu.py [--requests 400] [--rounds 5] [--no-spin] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import serve_load as sl  # noqa: E402
from bench._common import cpu_model, offline_quiet  # noqa: E402


def thread_cpu(pid: int) -> dict[str, float]:
    """Seconds of CPU so far per thread group of process ``pid``: loop (main), model, other."""
    out = {"loop": 0.0, "model": 0.0, "other": 0.0}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
        group = "loop" if int(tid) == pid else "model" if comm.startswith("edgekit-") else "other"
        out[group] += ns / 1e9
    return out


def measure(pid: int, conn: http.client.HTTPConnection, path: str, body: tuple[bytes, dict[str, str]],
            n: int) -> dict[str, float]:
    """CPU ms per request of each server thread group and of the client thread, and wall p50."""
    before, c0 = thread_cpu(pid), time.thread_time()
    walls = []
    for _ in range(n):
        t = time.perf_counter()
        sl.post(conn, path, *body)
        walls.append(time.perf_counter() - t)
    client, after = time.thread_time() - c0, thread_cpu(pid)
    per = {k: (after[k] - before[k]) * 1e3 / n for k in before}
    per["total"] = sum(per.values())
    return {**per, "client": client * 1e3 / n, "wall_p50": statistics.median(walls) * 1e3}


def run(art: Path, threads: int, n: int, rounds: int, baseline: Path | None) -> list[dict[str, Any]]:
    import edgekit
    from edgekit.tasks import pipeline_for

    fake = sl.stand_in(art)
    text = sl.sentences(1)[0] * 4
    rows = []
    with edgekit.load(art, threads=threads, **sl.NO_SPIN) as m:
        feed = {k: np.ascontiguousarray(v[:, :48]) for k, v in pipeline_for(m).preprocess([text]).feeds[0].items()}
        cases = {"stand-in (no compute)": fake.stem, "MiniLM-L6 int8, 48 tokens": art.stem}
        body = sl.oip_body(feed)
        srcs: dict[str, Path | None] = {"this code": None, **({"baseline": baseline} if baseline else {})}
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        local: list[float] = []
        with ExitStack() as stack:
            procs, conns = {}, {}
            for label, src in srcs.items():
                port = sl.free_port()
                procs[label] = stack.enter_context(sl.edgekit_serve(
                    [art, fake], port, threads, "--max-batch", "1", "--batch-timeout-ms", "0", src=src, unverified=True))
                conns[label] = stack.enter_context(contextlib.closing(
                    http.client.HTTPConnection("127.0.0.1", port, timeout=60)))
                for name in cases.values():  # warm
                    for _ in range(20):
                        sl.post(conns[label], f"/v2/models/{name}/infer", *body)
            for r in range(rounds):
                p0 = time.process_time()
                for _ in range(min(n, 100)):
                    m.run(feed)
                local.append((time.process_time() - p0) * 1e3 / min(n, 100))
                order = list(srcs)[r % len(srcs):] + list(srcs)[:r % len(srcs)]
                for label in order:
                    for case, name in cases.items():
                        count = n if "stand-in" in case else max(n // 4, 20)
                        results.setdefault((label, case), []).append(
                            measure(procs[label].pid, conns[label], f"/v2/models/{name}/infer", body, count))
    for (label, case), rs in results.items():
        row = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        rows.append({"server": label, "case": case, **row, "local_cpu": statistics.median(local)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=400, help="stand-in requests per round (MiniLM: a quarter)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline-src", type=Path, default=None, help="an older source tree, measured alongside")
    ap.add_argument("--no-spin", action="store_true", help="onnxruntime without spinning threads everywhere")
    ap.add_argument("--spin", choices=("true", "false", "run"), default=None,
                    help="onnxruntime's spinning everywhere: run = only during a run")
    args = ap.parse_args()
    if args.no_spin or args.spin:
        sl.NO_SPIN["spinning"] = args.spin or False
    offline_quiet()
    load0 = os.getloadavg()[0]
    rows = run(sl.minilm_artifact(), args.threads, args.requests, args.rounds, args.baseline_src)
    print(f"# edgekit serve CPU per request on {cpu_model()}, {os.cpu_count()} cores, --threads {args.threads}"
          f"{sl.spin_note()}, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}\n")
    print("| server | model | server CPU ms/request | event loop | model thread | other threads | client CPU | "
          "in-process Model.run CPU | wall p50 ms |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        local = f"{r['local_cpu']:.3f}" if "MiniLM" in r["case"] else "-"
        print(f"| {r['server']} | {r['case']} | {r['total']:.3f} | {r['loop']:.3f} | {r['model']:.3f} | "
              f"{r['other']:.3f} | {r['client']:.3f} | {local} | {r['wall_p50']:.2f} |")


if __name__ == "__main__":
    main()
