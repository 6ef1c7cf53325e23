"""Static int8 on a real depthwise-separable CNN in every format: accuracy before and after
edgekit's accuracy-aware loop, against NNCF's ``quantize_with_accuracy_control``, size and speed.

1. The model: the Fashion-MNIST sample CNN (``samples/image_net.py``: a MobileNet-style network,
   3x3 stem, four depthwise-separable blocks with batch norm and ReLU6), trained by
   ``samples/image_classifier.py`` on the 60,000 training images (cached in
   ``~/.cache/edgekit/samples/fashion-cnn/``; ``--epochs`` when it has to train).
2. Data: 512 training images as calibration, ``--eval-items`` test images with labels as ``--eval``.
3. Per format (ONNX, OpenVINO, TFLite): fp32; static int8 with the loop off (``int8_loop=false``);
   static int8 with the loop on and ``max_accuracy_drop=0.01`` (the loop's target: within one
   point of the original's accuracy on the eval data). OpenVINO with ``max_accuracy_drop`` runs
   NNCF's accuracy control first; ``nncf`` is that alone (loop off).
4. Accuracy: each artifact's test accuracy as edgekit's verification records it (``--eval``).
5. Speed: in ONE process every artifact through ``edgekit.load``, batch 1, one test image, timed
   round-robin (blocks of calls per variant, order rotating), medians; ratios to fp32 ONNX Runtime
   of the same run.

    .venv/bin/python bench/int8_cnn.py            # markdown table; JSON in bench/results/int8_cnn.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from _common import add_timing_args, cpu_model, offline_quiet  # noqa: E402
from pruning_sparse import timed_round_robin  # noqa: E402

FORMATS = ("onnx", "openvino", "tflite")
MAX_DROP = 0.01


def _variants(formats: list[str]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """label -> (format, precision, converter options); ONNX fp32 always (the speed baseline)."""
    out: dict[str, tuple[str, str, dict[str, Any]]] = {"onnx fp32": ("onnx", "fp32", {})}
    for fmt in formats:
        out[f"{fmt} fp32"] = (fmt, "fp32", {})
        out[f"{fmt} int8 plain"] = (fmt, "int8", {"int8_loop": False})
        out[f"{fmt} int8 loop"] = (fmt, "int8", {"max_accuracy_drop": MAX_DROP})
    if "openvino" in formats:
        out["openvino int8 nncf"] = ("openvino", "int8", {"max_accuracy_drop": MAX_DROP, "int8_loop": False})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=2, help="training epochs when no cached weights exist")
    ap.add_argument("--eval-items", type=int, default=1000)
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma separated, of: " + ", ".join(FORMATS))
    add_timing_args(ap, warmup=30, rounds=20, block=10)
    ap.add_argument("--work", type=Path, default=HERE / "results" / "int8_cnn")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    offline_quiet()

    import edgekit
    from samples.image_classifier import convert_kwargs, train_fashion, write_data

    weights = train_fashion(epochs=args.epochs)  # the cached (or newly trained) model.safetensors
    eval_npz, calib_npz = write_data(args.work / "data")
    z = np.load(eval_npz)
    pick = np.random.default_rng(0).permutation(len(z["labels"]))[: args.eval_items]
    small_eval = args.work / "data" / "fashion-eval.npz"
    np.savez(small_eval, pixels=z["pixels"][pick], labels=z["labels"][pick])
    kwargs = convert_kwargs(weights)
    source, example = "samples.image_net:fashion_cnn", kwargs.pop("example_inputs")

    rows: dict[str, dict[str, Any]] = {}
    for label, (fmt, precision, opts) in _variants(args.formats.split(",")).items():
        t0 = time.perf_counter()
        (art,) = edgekit.convert(source, example, targets=[fmt], precisions=[precision], calib=calib_npz,
                                 eval_data=small_eval, out=args.work / label.replace(" ", "-"),
                                 options={fmt: opts}, **kwargs)
        conv = json.loads(art.manifest_path.read_text())["conversion"]
        loop = conv.get("accuracy_loop") or {}
        metric = art.verification.metric or {}
        rows[label] = {"format": fmt, "precision": precision, "options": opts, "status": str(art.status),
                       "path": str(art.path), "size_bytes": art.size_bytes, "accuracy": metric.get("value"),
                       "reference": metric.get("reference"), "route": art.route,
                       "kept_in_float": loop.get("excluded") or (conv.get("accuracy_control") or {}).get(
                           "kept_in_float_modules") or [],
                       "loop_steps": len(loop.get("steps", [])), "convert_s": round(time.perf_counter() - t0, 1)}
        print(f"{label}: {rows[label]['status']} accuracy {metric.get('value')} size {art.size_bytes}",
              file=sys.stderr)

    feed = {"pixels": z["pixels"][pick[:1]]}
    models = {label: edgekit.load(r["path"], threads=args.threads) for label, r in rows.items()}
    samples = timed_round_robin({k: m.run for k, m in models.items()}, feed, args.warmup, args.rounds, args.block)
    base = float(np.median(samples["onnx fp32"]))
    for label, r in rows.items():
        r["p50_ms"] = round(float(np.median(samples[label])), 4)
        r["x_onnx_fp32"] = round(r["p50_ms"] / base, 3)
        models[label].close()

    ref = next(r["reference"] for r in rows.values() if r["reference"] is not None)
    lines = [f"Fashion-MNIST sample CNN, {args.eval_items} test images (fp32 PyTorch accuracy {ref:.4f}); "
             f"batch 1, {args.threads} threads, {args.rounds} x {args.block} interleaved calls per variant; "
             f"{cpu_model()}", "",
             "| variant | status | accuracy | drop (points) | size | p50 ms | x fp32 ORT | kept in float |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        acc = r["accuracy"]
        lines.append(f"| {label} | {r['status']} | {acc:.4f} | {100 * (ref - acc):+.1f} | {r['size_bytes'] / 1e3:.0f} kB "
                     f"| {r['p50_ms']:.3f} | {r['x_onnx_fp32']:.2f} | {', '.join(r['kept_in_float']) or '-'} |")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_cnn.json").write_text(json.dumps({"rows": rows, "reference": ref, "cpu": cpu_model(),
                                                         "settings": vars(args) | {"work": str(args.work),
                                                                                   "out": str(args.out)}},
                                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
