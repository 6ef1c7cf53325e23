"""Static int8 on a real depthwise-separable CNN in every format: accuracy before and after
edgekit's accuracy-aware loop, against NNCF's ``quantize_with_accuracy_control``, size and speed.

1. The model (``--model``): ``sample``, the Fashion-MNIST sample CNN (``samples/image_net.py``: 3x3
   stem, four depthwise-separable blocks with batch norm and ReLU6), trained by
   ``samples/image_classifier.py`` on the 60,000 training images (cached in
   ``~/.cache/edgekit/samples/fashion-cnn/``); or ``mobilenet``, a MobileNetV2-style CNN (inverted
   residuals, linear bottlenecks: ``bench/fashion_mobilenet.py``) trained the same way and cached in
   ``~/.cache/edgekit/bench/fashion-mobilenet/``. ``--epochs`` when it has to train.
2. Data: 512 training images as calibration, ``--eval-items`` test images with labels as ``--eval``;
   top-1 agreement with the fp32 PyTorch model is measured on the same images.
3. Per format (ONNX, OpenVINO, TFLite): fp32; static int8 with the loop off (``int8_loop=false``);
   static int8 with the loop on and ``max_accuracy_drop=0.01`` (the loop's target: within one
   point of the original's accuracy on the eval data). OpenVINO with ``max_accuracy_drop`` runs
   NNCF's accuracy control first; ``nncf`` is that alone (loop off).
4. Accuracy: each artifact's test accuracy as edgekit's verification records it (``--eval``).
5. Speed: in ONE process every artifact through ``edgekit.load``, batch 1, one test image, timed
   round-robin (blocks of calls per variant, order rotating), medians; ratios to fp32 ONNX Runtime
   of the same run.

    .venv/bin/python bench/int8_cnn.py [--model mobilenet]   # markdown table; JSON in bench/results/int8_cnn[_mobilenet].json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from _common import add_timing_args, cpu_model, offline_quiet  # noqa: E402
from pruning_sparse import timed_round_robin  # noqa: E402

FORMATS = ("onnx", "openvino", "tflite")
MAX_DROP = 0.01


def _train_sample(epochs: int) -> Path:
    from samples.image_classifier import train_fashion

    return train_fashion(epochs=epochs)


def _train_mobilenet(epochs: int) -> Path:
    from fashion_mobilenet import train

    return train(epochs=epochs)


# --model -> (factory, name, training function: epochs -> cached weights)
MODELS = {"sample": ("samples.image_net:fashion_cnn", "fashion-cnn", _train_sample),
          "mobilenet": ("fashion_mobilenet:mobilenet", "fashion-mobilenet", _train_mobilenet)}


@dataclass
class Setup:
    """The trained model as ``edgekit.convert`` arguments, the data files and the eval arrays."""

    source: str
    example: Any
    kwargs: dict[str, Any]
    calib: Path
    eval_npz: Path
    pixels: np.ndarray
    labels: np.ndarray
    torch_top1: np.ndarray  # the fp32 PyTorch model's predictions on ``pixels``


def setup(model: str, epochs: int, work: Path, eval_items: int) -> Setup:
    """Train (or reuse) ``model``, write calibration and ``eval_items`` test images with labels."""
    from edgekit.sources import resolve_source
    from samples.image_classifier import convert_kwargs, write_data

    factory, name, train = MODELS[model]
    weights = train(epochs)
    eval_npz, calib_npz = write_data(work / "data")
    z = np.load(eval_npz)
    pick = np.random.default_rng(0).permutation(len(z["labels"]))[:eval_items]
    small_eval = work / "data" / "fashion-eval.npz"
    pixels, labels = z["pixels"][pick], z["labels"][pick]
    np.savez(small_eval, pixels=pixels, labels=labels)
    kwargs = convert_kwargs(weights) | {"name": name}
    example = kwargs.pop("example_inputs")
    src = resolve_source(factory, example, weights=weights, input_names=["pixels"], output_names=["logits"])
    top1 = np.concatenate([src.reference({"pixels": pixels[i:i + 250]})["logits"].argmax(1)
                           for i in range(0, len(pixels), 250)])
    return Setup(factory, example, kwargs, calib_npz, small_eval, pixels, labels, top1)


def agreement(path: str | Path, s: Setup) -> float:
    """Top-1 agreement of an artifact with the fp32 PyTorch model on the eval images (batch 1)."""
    import edgekit

    with edgekit.load(path) as m:
        got = np.array([int(m.run({"pixels": s.pixels[i:i + 1]})["logits"].argmax()) for i in range(len(s.pixels))])
    return float((got == s.torch_top1).mean())


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
    ap.add_argument("--model", choices=sorted(MODELS), default="sample")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs when no cached weights exist")
    ap.add_argument("--eval-items", type=int, default=1000)
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma separated, of: " + ", ".join(FORMATS))
    add_timing_args(ap, warmup=30, rounds=20, block=10)
    ap.add_argument("--work", type=Path, default=HERE / "results" / "int8_cnn")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    offline_quiet()

    import edgekit

    s = setup(args.model, args.epochs, args.work, args.eval_items)

    rows: dict[str, dict[str, Any]] = {}
    for label, (fmt, precision, opts) in _variants(args.formats.split(",")).items():
        t0 = time.perf_counter()
        (art,) = edgekit.convert(s.source, s.example, targets=[fmt], precisions=[precision], calib=s.calib,
                                 eval_data=s.eval_npz, out=args.work / args.model / label.replace(" ", "-"),
                                 options={fmt: opts}, **s.kwargs)
        conv = json.loads(art.manifest_path.read_text())["conversion"]
        loop = conv.get("accuracy_loop") or {}
        metric = art.verification.metric or {}
        rows[label] = {"format": fmt, "precision": precision, "options": opts, "status": str(art.status),
                       "path": str(art.path), "size_bytes": art.size_bytes, "accuracy": metric.get("value"),
                       "reference": metric.get("reference"), "route": art.route,
                       "kept_in_float": loop.get("excluded") or (conv.get("accuracy_control") or {}).get(
                           "kept_in_float_modules") or [],
                       "loop_steps": len(loop.get("steps", [])), "convert_s": round(time.perf_counter() - t0, 1),
                       "top1_agreement": agreement(art.path, s)}
        print(f"{label}: {rows[label]['status']} accuracy {metric.get('value')} size {art.size_bytes}",
              file=sys.stderr)

    feed = {"pixels": s.pixels[:1]}
    models = {label: edgekit.load(r["path"], threads=args.threads) for label, r in rows.items()}
    samples = timed_round_robin({k: m.run for k, m in models.items()}, feed, args.warmup, args.rounds, args.block)
    base = float(np.median(samples["onnx fp32"]))
    for label, r in rows.items():
        r["p50_ms"] = round(float(np.median(samples[label])), 4)
        r["x_onnx_fp32"] = round(r["p50_ms"] / base, 3)
        models[label].close()

    ref = next(r["reference"] for r in rows.values() if r["reference"] is not None)
    lines = [f"Fashion-MNIST {args.model} CNN, {args.eval_items} test images (fp32 PyTorch accuracy {ref:.4f}); "
             f"batch 1, {args.threads} threads, {args.rounds} x {args.block} interleaved calls per variant; "
             f"{cpu_model()}", "",
             "| variant | status | accuracy | drop (points) | top-1 agreement | size | p50 ms | x fp32 ORT | kept in float |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        acc = r["accuracy"]
        lines.append(f"| {label} | {r['status']} | {acc:.4f} | {100 * (ref - acc):+.1f} | {r['top1_agreement']:.3f} "
                     f"| {r['size_bytes'] / 1e3:.0f} kB "
                     f"| {r['p50_ms']:.3f} | {r['x_onnx_fp32']:.2f} | {', '.join(r['kept_in_float']) or '-'} |")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"int8_cnn{'' if args.model == 'sample' else '_' + args.model}.json").write_text(json.dumps({"rows": rows, "reference": ref, "cpu": cpu_model(),
                                                         "settings": vars(args) | {"work": str(args.work),
                                                                                   "out": str(args.out)}},
                                                        indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
