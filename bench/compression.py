"""Structured pruning (+ distillation) + ONNX int8-dynamic on a real classifier: accuracy, size, latency.

1. The R8 classifier: all-MiniLM-L6-v2 fine-tuned on Reuters R8 by ``samples/text_classifier.py``
   (``finetune_r8()``, cached in ``~/.cache/edgekit/samples/r8-minilm/``), as an edgekit source at
   sequence 128.
2. For each sparsity (default 0.3 and 0.5): ``prune_source(src, sparsity=s, targets=("heads", "ffn"),
   importance="taylor", scope="layer")``, Taylor scores on ``--taylor-items`` R8 training items with
   their labels. Then a copy distilled from the unpruned model with
   ``edgekit.optimize.distill.distill`` (soft KL at T=2 + hard labels, alpha 0.5) for ``--kd-epochs``
   epoch(s) on ``--kd-items`` training items: a CPU budget, not a full recovery schedule.
3. Every model through ``edgekit.convert(..., targets=["onnx"], precisions=["fp32", "int8-dynamic"])``;
   the unpruned fp32 model is the reference.
4. Accuracy of every ONNX artifact on the R8 test split (2,189 items, or ``--test-items``), inputs
   padded/truncated to 128 tokens, through ``edgekit.load(...).run``.
5. Latency: in ONE process, all artifacts through ``edgekit.load(path, runtime="onnxruntime",
   threads=T)``, batch 1, one real R8 test item padded to 128 tokens, timed round-robin (each round a
   block of calls per variant, order rotating), medians; sizes and speeds as ratios to the unpruned
   fp32 ONNX model of the same run.

    .venv/bin/python bench/compression.py            # markdown table; JSON in bench/results/
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import add_timing_args, cpu_model, offline_quiet  # bench/ is on sys.path when run as a script
from pruning_sparse import timed_round_robin

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def onnx_accuracy(model: Any, feeds: dict[str, np.ndarray], labels: np.ndarray, batch: int = 32) -> float:
    preds = []
    for i in range(0, len(labels), batch):
        out = model.run({k: v[i:i + batch] for k, v in feeds.items()})
        preds.append(np.asarray(out["logits"]).argmax(-1))
    return float((np.concatenate(preds) == labels).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="HF classifier dir (default: finetune_r8())")
    ap.add_argument("--sparsities", default="0.3,0.5")
    ap.add_argument("--taylor-items", type=int, default=256)
    ap.add_argument("--kd-items", type=int, default=1024)
    ap.add_argument("--kd-epochs", type=int, default=1)
    ap.add_argument("--kd-batch", type=int, default=16)
    ap.add_argument("--kd-lr", type=float, default=1e-4)
    ap.add_argument("--test-items", type=int, default=None, help="default: the whole R8 test split")
    add_timing_args(ap, warmup=20, rounds=30, block=5)
    ap.add_argument("--work", type=Path, default=HERE / "results" / "compression")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)

    offline_quiet()
    sys.path.insert(0, str(ROOT))
    import torch

    import edgekit
    from edgekit.optimize.distill import distill
    from edgekit.optimize.prune import prune_source
    from edgekit.sources import resolve_source
    from samples import data
    from samples.text_classifier import finetune_r8

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    model_dir = args.model or finetune_r8(log=log)
    train_texts, train_labels, names = data.r8("train")
    test_texts, test_labels, _ = data.r8("test")
    if args.test_items:
        test_texts, test_labels = test_texts[:args.test_items], test_labels[:args.test_items]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train_texts))
    taylor_idx, kd_idx = order[:args.taylor_items], order[args.taylor_items:args.taylor_items + args.kd_items]

    dense = resolve_source(str(model_dir), seq_len=128)
    tok = dense.tokenize
    taylor_arrays = tok([train_texts[i] for i in taylor_idx])
    taylor_batches = [{**{k: v[i:i + 16] for k, v in taylor_arrays.items()},
                       "labels": train_labels[taylor_idx][i:i + 16]} for i in range(0, len(taylor_idx), 16)]
    kd_arrays = tok([train_texts[i] for i in kd_idx])
    kd_labels = train_labels[kd_idx]

    variants: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for s in [float(x) for x in args.sparsities.split(",")]:
        key = f"pruned {int(s * 100)}%"
        log(f"{key}: pruning ...")
        src, res = prune_source(dense, sparsity=s, targets=("heads", "ffn"), importance="taylor",
                                scope="layer", data=taylor_batches)
        variants[key] = src
        details[key] = {"prune": {k: v for k, v in res.to_dict().items() if k != "layers"}}
        log(f"{key} + KD: distilling {len(kd_idx)} items x {args.kd_epochs} epoch(s) ...")
        student = dataclasses.replace(src, module=copy.deepcopy(src.module))
        for p in student.module.parameters():  # distill() leaves its teacher (dense) frozen, and the
            p.requires_grad_(True)  # copy pruned from it inherits that: unfreeze the student
        kd = distill(dense, student, kd_arrays, labels=kd_labels, temperature=2.0, alpha=0.5,
                     epochs=args.kd_epochs, batch_size=args.kd_batch, lr=args.kd_lr, patience=None)
        variants[key + " + KD"] = student
        details[key + " + KD"] = {"prune": details[key]["prune"], "distill": kd.to_dict()}

    log("converting ...")
    paths: dict[str, Path] = {}
    arts = edgekit.convert(dense, targets=["onnx"], precisions=["fp32", "int8-dynamic"], out=args.work,
                           name="r8-dense")
    paths.update({f"unpruned {a.precision.value}": a.path for a in arts})
    for key, src in variants.items():
        slug = key.replace(" ", "").replace("%", "").replace("+", "-")
        arts = edgekit.convert(src, targets=["onnx"], precisions=["fp32", "int8-dynamic"], out=args.work,
                               name=f"r8-{slug}")
        paths.update({f"{key} {a.precision.value}": a.path for a in arts})

    log("accuracy ...")
    test_feeds = tok(test_texts)
    models = {k: edgekit.load(p, runtime="onnxruntime", threads=args.threads) for k, p in paths.items()}
    accuracy = {k: onnx_accuracy(m, test_feeds, test_labels) for k, m in models.items()}

    log("latency ...")
    feed = {k: v[:1] for k, v in tok([test_texts[0]]).items()}
    load = os.getloadavg()
    samples = timed_round_robin({k: m.run for k, m in models.items()}, feed, args.warmup, args.rounds,
                                args.block)
    base = "unpruned fp32"
    base_p50, base_size, base_acc = float(np.median(samples[base])), paths[base].stat().st_size, accuracy[base]
    int8_p50 = float(np.median(samples["unpruned int8-dynamic"]))
    rows = []
    for k, p in paths.items():
        p50 = float(np.median(samples[k]))
        rows.append({"variant": k, "accuracy": round(accuracy[k], 4),
                     "accuracy_delta_points": round(100 * (accuracy[k] - base_acc), 2),
                     "bytes": p.stat().st_size, "size_ratio": round(p.stat().st_size / base_size, 3),
                     "p50_ms": round(p50, 3), "speedup": round(base_p50 / p50, 3),
                     "speedup_vs_int8": round(int8_p50 / p50, 3)})
    for m in models.values():
        m.close()
    report = {"model": str(model_dir), "labels": names, "test_items": len(test_labels),
              "taylor_items": args.taylor_items, "kd_items": len(kd_idx), "kd_epochs": args.kd_epochs,
              "kd_batch": args.kd_batch, "kd_lr": args.kd_lr, "threads": args.threads, "cpu": cpu_model(),
              "loadavg_before_latency": load, "calls_per_variant": args.rounds * args.block,
              "seconds": round(time.perf_counter() - t_start, 1), "rows": rows, "details": details}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compression.json").write_text(json.dumps(report, indent=2, default=str))
    print("| variant | R8 test accuracy | vs fp32 (points) | size vs fp32 | ORT p50 ms | speed vs fp32 | "
          "speed vs unpruned int8 |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['accuracy']:.4f} | {r['accuracy_delta_points']:+.2f} | "
              f"{r['size_ratio']:.2f}x | {r['p50_ms']:.2f} | {r['speedup']:.2f}x | {r['speedup_vs_int8']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
