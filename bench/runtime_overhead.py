"""Per-call overhead of ``edgekit.load(path).run(feed)`` over a bare ``onnxruntime.InferenceSession``.

Two small models are built here with torch and converted with ``edgekit.convert`` (fp32 ONNX):

* ``cnn-1ms``  a 3-block CNN on a 96x96 image, ~1 ms per call at batch 1 on a 2-core CPU
* ``mlp-50us`` a 3-layer 512-wide MLP, ~50 us per call at batch 1

For each, the same ``.onnx`` file is opened twice in this process: once through
``edgekit.load(path, runtime="onnxruntime", threads=T)`` and once as a bare ``onnxruntime.InferenceSession`` with the same
session options edgekit uses (``intra_op_num_threads=T``, ``inter_op_num_threads=1``, all graph
optimizations, CPU provider). After a warm-up, the two sides run in alternating blocks of
``--block`` calls in ABBA order (edgekit block, bare block, bare block, edgekit block, ...), so
machine noise hits both sides alike; every call is timed on its own with ``perf_counter_ns``.
Blocks rather than single calls, because two ORT sessions each own an intra-op thread pool whose
workers spin after a run: alternating sessions call by call on 2 cores makes each session's
spinning workers steal the other's cores (``--block 1`` shows it).

Reported per model: p50 of each side, the ratio edgekit/bare, the absolute p50 overhead
(p50 edgekit - p50 bare) and the median over block pairs of (block median edgekit - block
median bare), against the targets (overhead <= 5 % of the call on the ~1 ms model, <= 15 us on
the ~50 us model). Three diagnostics: an A/A control (the bare session against a second bare
session, same protocol: the noise floor of comparing two sessions here), the same comparison on
edgekit's *own* session (``ek.run(feed)`` vs ``ek._session.run(None, feed)``, call by call ABBA:
no second session at all), and edgekit's pure Python wrapper cost, ``Model.run`` over a stub
session that returns precomputed outputs.

    .venv/bin/python bench/runtime_overhead.py              # table, JSON saved in bench/results/
    .venv/bin/python bench/runtime_overhead.py --json -     # also print the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import cpu_model  # bench/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
TARGETS = {"cnn-1ms": ("pct", 5.0), "mlp-50us": ("us", 15.0)}


def build_models() -> dict[str, tuple[Any, Any]]:
    """name -> (nn.Module in eval mode, example input tensor of batch 1)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    cnn = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 12 * 12, 10),
    ).eval()
    mlp = nn.Sequential(
        nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 16),
    ).eval()
    return {"cnn-1ms": (cnn, torch.randn(1, 3, 96, 96)), "mlp-50us": (mlp, torch.randn(1, 256))}


def bare_session(path: Path, threads: int) -> Any:
    """An InferenceSession with the same options edgekit's ONNX Runtime backend sets."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def interleave(a: Callable[[], Any], b: Callable[[], Any], *, block: int, warmup: int, seconds: float,
               min_pairs: int, max_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time ``a`` and ``b`` in alternating blocks of ``block`` calls, ABBA order (A B, B A, A B, ...),
    every call timed on its own. Returns (a ns, b ns, per block pair: median a - median b in ns)."""
    clock = time.perf_counter_ns
    for _ in range(warmup):
        a()
        b()
    ta = np.empty(max_pairs * block, dtype=np.int64)
    tb = np.empty(max_pairs * block, dtype=np.int64)
    diffs: list[float] = []
    deadline = clock() + int(seconds * 1e9)
    n = 0
    while n < max_pairs:
        lo, hi = n * block, (n + 1) * block
        for first in ((a, ta), (b, tb)) if n % 2 == 0 else ((b, tb), (a, ta)):
            fn, out = first
            for i in range(lo, hi):
                t0 = clock()
                fn()
                out[i] = clock() - t0
        diffs.append(float(np.median(ta[lo:hi]) - np.median(tb[lo:hi])))
        n += 1
        if n * block >= min_pairs and clock() >= deadline:
            break
    return ta[:n * block], tb[:n * block], np.asarray(diffs)


def p50_us(ns: np.ndarray) -> float:
    return float(np.median(ns)) / 1e3


def stub_overhead_us(model: Any, feed: dict[str, np.ndarray], outputs: list[np.ndarray],
                     calls: int = 20000) -> float:
    """p50 of ``Model.run`` when the ONNX Runtime session returns instantly: edgekit's own cost."""

    class Stub:
        def run(self, names: Any, f: Any) -> list[np.ndarray]:
            return outputs

    real = model._session
    model._session = Stub()
    try:
        clock = time.perf_counter_ns
        for _ in range(1000):
            model.run(feed)
        ts = np.empty(calls, dtype=np.int64)
        for i in range(calls):
            t0 = clock()
            model.run(feed)
            ts[i] = clock() - t0
        # the same stub called bare, to subtract the timer + call floor
        stub = model._session
        bare = np.empty(calls, dtype=np.int64)
        for i in range(calls):
            t0 = clock()
            stub.run(None, feed)
            bare[i] = clock() - t0
    finally:
        model._session = real
    return p50_us(ts) - p50_us(bare)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads on both sides (default 2)")
    ap.add_argument("--warmup", type=int, default=300, help="warm-up calls per side and model (default 300)")
    ap.add_argument("--block", type=int, default=20,
                    help="calls per block; blocks alternate ABBA between the two sessions (default 20; "
                    "1 = call-by-call)")
    ap.add_argument("--seconds", type=float, default=20.0,
                    help="measuring time per model, edgekit vs bare session (default 20)")
    ap.add_argument("--same-session-seconds", type=float, default=6.0,
                    help="measuring time per model for the same-session diagnostic, 0 to skip (default 6)")
    ap.add_argument("--control-seconds", type=float, default=8.0,
                    help="measuring time per model for the A/A control (bare vs a second bare session), "
                    "0 to skip (default 8)")
    ap.add_argument("--min-calls", type=int, default=2000, help="at least this many calls per side (default 2000)")
    ap.add_argument("--max-calls", type=int, default=200000, help="at most this many calls per side (default 200000)")
    ap.add_argument("--models", default="cnn-1ms,mlp-50us", help="comma-separated subset of cnn-1ms,mlp-50us")
    ap.add_argument("--out", type=Path, default=HERE / "results",
                    help="where runtime_overhead.json is written (default bench/results/)")
    ap.add_argument("--json", metavar="PATH", help="also write the JSON here ('-' for stdout)")
    args = ap.parse_args(argv)
    if args.block < 1 or args.threads < 1:
        ap.error("--block and --threads must be at least 1")

    warnings.simplefilter("ignore")
    import onnxruntime as ort
    import torch

    import edgekit

    models = build_models()
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(wanted) - set(models))
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {sorted(models)}")
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-overhead-") as tmp:
        for name in wanted:
            module, x = models[name]
            t0 = time.perf_counter()
            arts = edgekit.convert(module, (x,), targets=["onnx"], precisions=["fp32"],
                                   out=Path(tmp) / name, name=name, input_names=["x"])
            convert_s = time.perf_counter() - t0
            art = arts[0]
            feed = {"x": x.numpy()}
            ek = edgekit.load(art.path, runtime="onnxruntime", threads=args.threads)
            bare = bare_session(art.path, args.threads)
            out_ek = ek.run(feed)
            out_bare = bare.run(None, feed)
            max_diff = max(float(np.abs(a - b).max()) for a, b in zip(out_ek.values(), out_bare, strict=True))

            def ek_call() -> Any:
                return ek.run(feed)  # noqa: B023

            def bare_call() -> Any:
                return bare.run(None, feed)  # noqa: B023

            ta, tb, blocks = interleave(ek_call, bare_call, block=args.block, warmup=args.warmup,
                                        seconds=args.seconds, min_pairs=args.min_calls,
                                        max_pairs=max(1, args.max_calls // args.block))
            a50, b50 = p50_us(ta), p50_us(tb)
            overhead = a50 - b50
            pct = 100.0 * overhead / b50
            row: dict[str, Any] = {
                "model": name, "params": int(sum(p.numel() for p in module.parameters())),
                "input_shape": list(x.shape), "onnx_bytes": art.size_bytes, "convert_s": round(convert_s, 1),
                "threads": args.threads, "block": args.block, "calls_per_side": int(len(ta)),
                "p50_edgekit_us": round(a50, 2), "p50_bare_us": round(b50, 2),
                "p90_edgekit_us": round(float(np.percentile(ta, 90)) / 1e3, 2),
                "p90_bare_us": round(float(np.percentile(tb, 90)) / 1e3, 2),
                "ratio": round(a50 / b50, 4), "overhead_us": round(overhead, 2),
                "overhead_pct": round(pct, 2),
                "block_paired_median_diff_us": round(float(np.median(blocks)) / 1e3, 2),
                "max_abs_output_diff": max_diff,
            }
            if args.control_seconds > 0:
                # A/A control: two bare sessions on the same file, same protocol: the noise floor
                # of comparing two sessions on this machine
                bare2 = bare_session(art.path, args.threads)

                def bare2_call() -> Any:
                    return bare2.run(None, feed)  # noqa: B023

                ca, cb, cblocks = interleave(bare_call, bare2_call, block=args.block, warmup=args.warmup,
                                             seconds=args.control_seconds, min_pairs=args.min_calls // 2,
                                             max_pairs=max(1, args.max_calls // args.block))
                row.update({"control_calls": int(len(ca)), "control_p50_bare1_us": round(p50_us(ca), 2),
                            "control_p50_bare2_us": round(p50_us(cb), 2),
                            "control_diff_us": round(p50_us(ca) - p50_us(cb), 2),
                            "control_block_paired_median_diff_us": round(float(np.median(cblocks)) / 1e3, 2)})
                del bare2
            if args.same_session_seconds > 0:
                # the same ORT session under both sides: no cross-session thread-pool interference
                sess = ek._session

                def same_call() -> Any:
                    return sess.run(None, feed)  # noqa: B023

                sa, sb, _ = interleave(ek_call, same_call, block=1, warmup=args.warmup,
                                       seconds=args.same_session_seconds, min_pairs=args.min_calls // 2,
                                       max_pairs=args.max_calls)
                row.update({"same_session_calls": int(len(sa)),
                            "same_session_p50_edgekit_us": round(p50_us(sa), 2),
                            "same_session_p50_bare_us": round(p50_us(sb), 2),
                            "same_session_overhead_us": round(p50_us(sa) - p50_us(sb), 2),
                            "same_session_paired_median_diff_us": round(float(np.median(sa - sb)) / 1e3, 2)})
            row["edgekit_python_cost_us"] = round(stub_overhead_us(ek, feed, out_bare), 2)
            kind, limit = TARGETS[name]
            row["target"] = f"<= {limit:g} {'%' if kind == 'pct' else 'us'}"
            row["target_met"] = bool((pct <= limit) if kind == "pct" else (overhead <= limit))
            rows.append(row)
            ek.close()
            print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    load_after = os.getloadavg()

    env = {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "cpu": cpu_model(), "cpus": os.cpu_count(), "onnxruntime": ort.__version__,
        "torch": torch.__version__, "numpy": np.__version__, "edgekit": edgekit.__version__,
        "loadavg_before": [round(v, 2) for v in load_before], "loadavg_after": [round(v, 2) for v in load_after],
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    result = {"benchmark": "runtime_overhead",
              "method": f"two sessions on one file, blocks of {args.block} calls alternating ABBA, "
                        "every call timed with perf_counter_ns; p50 over all calls of a side",
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "env": env, "rows": rows}
    print(table(rows))
    print(f"\n{env['cpu']} x{env['cpus']}, onnxruntime {env['onnxruntime']}, torch {env['torch']}, "
          f"threads {args.threads}, block {args.block}, load avg (1 min) {env['loadavg_before'][0]} -> "
          f"{env['loadavg_after'][0]}, {env['wall_s']} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json == "-":
        print(json.dumps(result, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | calls/side | p50 bare ORT (us) | p50 edgekit (us) | ratio | p50 overhead (us) | "
            "overhead % | block-paired median diff (us) | A/A control: bare vs bare p50 diff (us) | "
            "same-session overhead (us) | edgekit Python cost (us) | target | met |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def opt(r: dict[str, Any], key: str) -> str:
        return "-" if r.get(key) is None else f"{r[key]:+.1f}"

    for r in rows:
        lines.append(f"| {r['model']} | {r['calls_per_side']} | {r['p50_bare_us']:.1f} | {r['p50_edgekit_us']:.1f} | "
                     f"{r['ratio']:.3f} | {r['overhead_us']:+.1f} | {r['overhead_pct']:+.1f} % | "
                     f"{r['block_paired_median_diff_us']:+.1f} | {opt(r, 'control_diff_us')} | "
                     f"{opt(r, 'same_session_overhead_us')} | {r['edgekit_python_cost_us']:.1f} | "
                     f"{r['target']} | {'yes' if r['target_met'] else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
