"""Reliability figures for docs/reliability.md: a long soak of ``run()`` and many threads on one model.

The built-in digits CNN (trained on the spot on scikit-learn's 8x8 digits) is converted once to
fp32 ONNX, OpenVINO IR and TFLite (or ``--artifacts DIR`` reuses earlier ones). Each scenario runs
each artifact in a fresh process that imports the runtime only (no torch), on the real test-split
digits:

* ``soak``: ``--calls`` ``run()`` calls on one loaded model, cycling over the test images. Resident
  memory (``VmRSS``) is read after a warm-up of ``--warmup`` calls and then every tenth of the run;
  reported: the growth after warm-up in MiB and percent, and how many outputs differed from the
  first pass over the same image (must be 0).
* ``concurrency``: the expected outputs of ``--calls`` images computed on one thread, then
  ``--threads`` threads each make ``--calls`` calls on the same loaded model at once (each thread
  starting at another image); reported: calls that raised, calls whose output is not bit-identical
  to the single-threaded one, and the wall time against the same number of calls on one thread.

Scenarios are a registry (``SCENARIOS``): another measurement (e.g. kill -9 during a conversion) is
one function more.

    .venv/bin/python bench/reliability.py                        # both scenarios, every format
    .venv/bin/python bench/reliability.py soak --calls 100000 --formats onnx
    .venv/bin/python bench/reliability.py concurrency --threads 8 --calls 2000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import vm_rss_mb

HERE = Path(__file__).resolve().parent
FORMATS = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}


def _digits() -> np.ndarray:
    """The held-out digits as the model takes them: (N, 1, 8, 8) float32 counts / 16."""
    from sklearn.datasets import load_digits

    images = load_digits().images[-360:]  # the last fifth, which the built-in model did not train on
    return (images / 16.0).astype(np.float32)[:, None]


# -- the measurements, each in a child process that loaded only the runtime -----------------------
def soak(path: str, calls: int, warmup: int, threads: int, **_: Any) -> dict[str, Any]:
    import edgekit

    xs = _digits()
    with edgekit.load(path, threads=threads) as m:
        name = m.signature.inputs[0].name
        first = [m.run({name: x[None]}) for x in xs]
        for i in range(warmup):
            m.run({name: xs[i % len(xs)][None]})
        base, marks, differ = vm_rss_mb(), [], 0
        step = max(calls // 10, 1)
        t0 = time.perf_counter()
        for i in range(calls):
            out = m.run({name: xs[i % len(xs)][None]})
            want = first[i % len(xs)]
            differ += any(not np.array_equal(out[k], want[k]) for k in want)
            if (i + 1) % step == 0:
                marks.append(round(vm_rss_mb(), 2))
        seconds = time.perf_counter() - t0
    return {"calls": calls, "warmup": warmup, "rss_after_warmup_mb": round(base, 2), "rss_marks_mb": marks,
            "growth_mb": round(marks[-1] - base, 2), "growth_pct": round(100 * (marks[-1] - base) / base, 2),
            "outputs_differing": differ, "seconds": round(seconds, 2)}


def concurrency(path: str, calls: int, n_threads: int, threads: int, unlocked: bool = False,
                **_: Any) -> dict[str, Any]:
    import edgekit

    xs = _digits()
    idx = np.arange(calls) % len(xs)
    with edgekit.load(path, threads=threads) as m:
        if unlocked:  # what the backend does without edgekit's turn-taking (the figure before issue 12)
            m._turns = None
        name = m.signature.inputs[0].name
        want = [m.run({name: xs[i][None]}) for i in idx]
        t0 = time.perf_counter()
        for _ in range(n_threads):  # the same number of calls on one thread, for the wall-time ratio
            for i in idx:
                m.run({name: xs[i][None]})
        single_s = time.perf_counter() - t0
        errors, wrong = [0] * n_threads, [0] * n_threads
        first_error: list[str] = []
        barrier = threading.Barrier(n_threads)

        def work(t: int) -> None:
            barrier.wait()
            for k in range(calls):
                j = (k + t * calls // n_threads) % calls
                try:
                    out = m.run({name: xs[idx[j]][None]})
                except Exception as e:  # noqa: BLE001 - counted and reported
                    errors[t] += 1
                    if not first_error:
                        first_error.append(f"{type(e).__name__}: {str(e).splitlines()[0]}")
                    continue
                wrong[t] += any(not np.array_equal(out[key], want[j][key]) for key in want[j])

        pool = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        t0 = time.perf_counter()
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        threaded_s = time.perf_counter() - t0
    total = calls * n_threads
    return {"threads": n_threads, "calls_per_thread": calls, "calls": total, "raised": sum(errors),
            "not_bit_identical": sum(wrong), "identical": total - sum(errors) - sum(wrong),
            "first_error": first_error[0] if first_error else None,
            "threaded_s": round(threaded_s, 3), "single_thread_s": round(single_s, 3),
            "wall_ratio": round(threaded_s / single_s, 3)}


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {"soak": soak, "concurrency": concurrency}


# -- the parent: artifacts, one child per (scenario, format), the table -------------------------------
def build(out: Path) -> dict[str, Path]:
    import edgekit

    arts = edgekit.convert("builtin:digits-cnn", targets=list(FORMATS), precisions=["fp32"], out=out)
    bad = [(a.format.value, a.reason) for a in arts if a.status != "ok"]
    if bad:
        raise SystemExit(f"conversion failed: {bad}")
    return {a.format.value: a.path for a in arts}


def find(folder: Path) -> dict[str, Path]:
    found = {}
    for fmt, suffix in FORMATS.items():
        hits = sorted(folder.glob(f"*-fp32{suffix}"))
        if hits:
            found[fmt] = hits[0]
    return found


def child(scenario: str, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    spec = {"scenario": scenario, "path": str(path), "calls": args.calls, "warmup": args.warmup,
            "n_threads": args.threads, "threads": args.runtime_threads, "unlocked": args.unlocked}
    proc = subprocess.run([sys.executable, __file__, "_child", json.dumps(spec)], capture_output=True,
                          text=True, timeout=args.timeout)
    if proc.returncode != 0:
        return {"status": "failed", "reason": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}


def run_child(spec: dict[str, Any]) -> None:
    print(json.dumps(SCENARIOS[spec.pop("scenario")](**spec)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        run_child(json.loads(argv[1]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenarios", nargs="*", help=f"any of {', '.join(SCENARIOS)} (default: all)")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--calls", type=int, default=None,
                    help="soak: calls per format (default 100000); concurrency: calls per thread (default 2000)")
    ap.add_argument("--warmup", type=int, default=1000, help="soak: calls before the RSS baseline")
    ap.add_argument("--threads", type=int, default=8, help="concurrency: caller threads")
    ap.add_argument("--runtime-threads", type=int, default=1, help="threads each runtime uses inside one call")
    ap.add_argument("--unlocked", action="store_true",
                    help="concurrency: bypass Model.run's turn-taking (shows why backends that are not "
                    "thread-safe need it)")
    ap.add_argument("--artifacts", type=Path, help="reuse the *-fp32 artifacts in this folder")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}: choose from {', '.join(SCENARIOS)}")
    args.scenarios = args.scenarios or list(SCENARIOS)
    with tempfile.TemporaryDirectory() as tmp:
        arts = find(args.artifacts) if args.artifacts else build(Path(tmp))
        result: dict[str, Any] = {"host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
                                  "model": "builtin:digits-cnn fp32", "scenarios": {}}
        for scenario in args.scenarios:
            calls = args.calls or (100_000 if scenario == "soak" else 2000)
            rows = {}
            for fmt in formats:
                if fmt not in arts:
                    continue
                ns = argparse.Namespace(**{**vars(args), "calls": calls})
                rows[fmt] = child(scenario, arts[fmt], ns)
                print(f"{scenario:12s} {fmt:9s} {json.dumps(rows[fmt])}", flush=True)
            result["scenarios"][scenario] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    name = "reliability-unlocked.json" if args.unlocked else "reliability.json"
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
