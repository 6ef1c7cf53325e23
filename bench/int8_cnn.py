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
3. Per format (ONNX, OpenVINO, TFLite): fp32; static int8 with the loop off (``int8_loop=false``,
   "plain"); static int8 with edgekit's loop alone ("loop": its default target with labelled
   ``--eval`` data, accuracy at most one point below the original's). OpenVINO also: NNCF's
   ``quantize_with_accuracy_control`` alone ("nncf": ``max_accuracy_drop=0.01``, loop off) and
   both ("nncf+loop": NNCF first, then edgekit's loop checks the result). ``--plain-only``: fp32
   and plain int8 only, plus ONNX int8 with the quantizer op list of before Relu/Clip were in it
   ("old ops"), for speed runs.
4. ``--outlier GAIN``: the trained model behind :func:`with_outlier` (an unread input channel of
   GAIN x the image: the same function in float, one int8 activation range must span both), a
   model on which plain static int8 misses the one-point target and layers must go back to float.
5. Accuracy: each artifact's test accuracy as edgekit's verification records it (``--eval``),
   top-1 agreement with fp32 PyTorch, the layers kept in float, conversion time.
6. Speed: in ONE process every artifact through ``edgekit.load`` at each ``--batches`` size
   (test images), timed round-robin (blocks of calls per variant and batch, order rotating),
   wall and process CPU time per call, medians; ratios to fp32 ONNX Runtime at the same batch.

    .venv/bin/python bench/int8_cnn.py --outlier 40 --eval-items 1000 --rounds 15 --batches 1,16,64
    .venv/bin/python bench/int8_cnn.py [--model mobilenet] --plain-only --batches 1,16,64 [--size 112]
    # markdown table; JSON in bench/results/int8_cnn_<model>[_outlier40][_plain].json
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

FORMATS = ("onnx", "openvino", "tflite")
MAX_DROP = 0.01
OLD_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Gather")  # ONNX int8_op_types before Relu, Clip


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


def with_outlier(net: Any, gain: float) -> Any:
    """``net`` with an input channel of ``gain`` x the range that no layer reads: the same function
    in float, but one int8 activation range (per tensor) must span both channels, so the image's
    own channel gets ~255/``gain`` levels. A 1x1 ``spread`` conv writes the image to channel 0 and
    ``gain`` x the image to channel 1; the first convolution reads channel 0 (its channel-1 weights
    are zero). Outlier channels of this kind (one channel's range decades above the rest) are what
    per-tensor minmax activation ranges cannot hold."""
    from collections import OrderedDict

    import torch
    from torch import nn

    parent, key, first = next((m, k, c) for m in net.modules() for k, c in m.named_children()
                              if isinstance(c, nn.Conv2d))
    wide = nn.Conv2d(2, first.out_channels, first.kernel_size, first.stride, first.padding,
                     bias=first.bias is not None)
    spread = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, :1] = first.weight
        if first.bias is not None:
            wide.bias.copy_(first.bias)
        spread.weight.copy_(torch.tensor([1.0, gain]).reshape(2, 1, 1, 1))
        spread.bias.zero_()
    setattr(parent, key, wide)
    return nn.Sequential(OrderedDict(spread=spread, net=net)).eval()  # layer names "spread", "net.0", ...


def _resized(x: np.ndarray, size: int) -> np.ndarray:
    """Images (N, 1, 28, 28) upsampled to ``size`` x ``size`` (bilinear): a larger input for speed runs."""
    import torch

    t = torch.nn.functional.interpolate(torch.as_tensor(x), size=(size, size), mode="bilinear", align_corners=False)
    return t.numpy().astype(np.float32)


def setup(model: str, epochs: int, work: Path, eval_items: int, outlier: float = 0.0, size: int = 28) -> Setup:
    """Train (or reuse) ``model``, write calibration and ``eval_items`` test images with labels;
    ``outlier`` > 0 wraps the trained model by :func:`with_outlier`; ``size`` != 28 upsamples
    every image (the networks end in global pooling, so they take any size)."""
    import importlib

    from edgekit.sources import resolve_source
    from edgekit.sources.factory import load_state_dict
    from samples.image_classifier import convert_kwargs, write_data

    factory, name, train = MODELS[model]
    weights = train(epochs)
    eval_npz, calib_npz = write_data(work / "data")
    z = np.load(eval_npz)
    pick = np.random.default_rng(0).permutation(len(z["labels"]))[:eval_items]
    small_eval = work / "data" / "fashion-eval.npz"
    pixels, labels = z["pixels"][pick], z["labels"][pick]
    if size != 28:
        pixels = _resized(pixels, size)
        small_eval = work / "data" / f"fashion-eval-{size}.npz"
        calib_big = work / "data" / f"fashion-calib-{size}.npz"
        np.savez(calib_big, pixels=_resized(np.load(calib_npz)["pixels"], size))
        calib_npz = calib_big
    np.savez(small_eval, pixels=pixels, labels=labels)
    kwargs = convert_kwargs(weights) | {"name": name}
    example = kwargs.pop("example_inputs")
    if size != 28:
        example = tuple(_resized(np.asarray(e), size) for e in example)
    source: Any = factory
    if outlier > 0:
        mod, _, attr = factory.partition(":")
        net = getattr(importlib.import_module(mod), attr)()
        net.load_state_dict(load_state_dict(weights))
        source = with_outlier(net.eval(), outlier)
        kwargs.pop("weights")
        kwargs["name"] = f"{name}-outlier"
    src = resolve_source(source, example, weights=kwargs.get("weights"), input_names=["pixels"],
                         output_names=["logits"])
    top1 = np.concatenate([src.reference({"pixels": pixels[i:i + 250]})["logits"].argmax(1)
                           for i in range(0, len(pixels), 250)])
    return Setup(source, example, kwargs, calib_npz, small_eval, pixels, labels, top1)


def agreement(path: str | Path, s: Setup) -> float:
    """Top-1 agreement of an artifact with the fp32 PyTorch model on the eval images (batch 1)."""
    import edgekit

    with edgekit.load(path) as m:
        got = np.array([int(m.run({"pixels": s.pixels[i:i + 1]})["logits"].argmax()) for i in range(len(s.pixels))])
    return float((got == s.torch_top1).mean())


def _variants(formats: list[str], plain_only: bool = False) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """label -> (format, precision, converter options); ONNX fp32 always (the speed baseline).
    ``loop`` is edgekit's loop alone (its default target with labelled --eval data: accuracy drop
    <= 0.01); ``nncf`` is NNCF's accuracy control alone, ``nncf+loop`` both (NNCF first)."""
    out: dict[str, tuple[str, str, dict[str, Any]]] = {"onnx fp32": ("onnx", "fp32", {})}
    for fmt in formats:
        out[f"{fmt} fp32"] = (fmt, "fp32", {})
        out[f"{fmt} int8 plain"] = (fmt, "int8", {"int8_loop": False})
        if not plain_only:
            out[f"{fmt} int8 loop"] = (fmt, "int8", {})
    if "onnx" in formats and plain_only:  # the QDQ placement before Relu/Clip were quantizer op types
        out["onnx int8 old ops"] = ("onnx", "int8", {"int8_loop": False, "int8_op_types": list(OLD_OPS)})
    if "openvino" in formats and not plain_only:
        out["openvino int8 nncf"] = ("openvino", "int8", {"max_accuracy_drop": MAX_DROP, "int8_loop": False})
        out["openvino int8 nncf+loop"] = ("openvino", "int8", {"max_accuracy_drop": MAX_DROP})
    return out


def kept_in_float(conv: dict[str, Any]) -> list[str]:
    """The layers a variant keeps in float: edgekit's loop's PyTorch modules, then NNCF's reverted
    OpenVINO ops (as their PyTorch module where known)."""
    kept = list((conv.get("accuracy_loop") or {}).get("excluded") or [])
    for op, module in ((conv.get("accuracy_control") or {}).get("kept_in_float_modules") or {}).items():
        name = module or op
        if name not in kept:
            kept.append(name)
    return kept


def timed(runners: dict[str, Any], rounds: int, block: dict[str, int]) -> dict[str, dict[str, list[int]]]:
    """Round robin, the order rotating: ``block[k]`` calls of each runner per round; wall and
    process CPU time (all threads) per call, in ns."""
    order = list(runners)
    out: dict[str, dict[str, list[int]]] = {k: {"wall": [], "cpu": []} for k in order}
    for r in range(rounds):
        for k in order[r % len(order):] + order[:r % len(order)]:
            fn = runners[k]
            for _ in range(block[k]):
                w0, c0 = time.perf_counter_ns(), time.process_time_ns()
                fn()
                out[k]["cpu"].append(time.process_time_ns() - c0)
                out[k]["wall"].append(time.perf_counter_ns() - w0)
    return out


def speed(rows: dict[str, dict[str, Any]], s: Setup, batches: list[int], args: argparse.Namespace) -> list[float]:
    """Time every variant at every batch size in one interleaved run; fills ``rows[label]["speed"]``
    (per batch: wall and CPU medians per call and per image, ratios to fp32 ONNX Runtime at that
    batch). Returns the 1-minute load average before and after."""
    import os

    import edgekit

    load = [os.getloadavg()[0]]
    models = {label: edgekit.load(r["path"], threads=args.threads) for label, r in rows.items()}
    runners, block = {}, {}
    for label, m in models.items():
        for b in batches:
            feed = {"pixels": s.pixels[:b]}
            runners[(label, b)] = lambda m=m, feed=feed: m.run(feed)
            block[(label, b)] = max(3, round(args.block / b ** 0.5))
            for _ in range(args.warmup):
                runners[(label, b)]()
    got = timed(runners, args.rounds, block)
    for label, r in rows.items():
        r["speed"] = {}
        for b in batches:
            wall, cpu = (float(np.median(got[(label, b)][c])) / 1e6 for c in ("wall", "cpu"))
            base_w, base_c = (float(np.median(got[("onnx fp32", b)][c])) / 1e6 for c in ("wall", "cpu"))
            r["speed"][b] = {"p50_ms": round(wall, 4), "cpu_p50_ms": round(cpu, 4),
                             "ms_per_image": round(wall / b, 4), "x_onnx_fp32": round(wall / base_w, 3),
                             "cpu_x_onnx_fp32": round(cpu / base_c, 3), "calls": len(got[(label, b)]["wall"])}
        models[label].close()
    load.append(os.getloadavg()[0])
    return load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="sample")
    ap.add_argument("--epochs", type=int, default=2, help="training epochs when no cached weights exist")
    ap.add_argument("--eval-items", type=int, default=1000)
    ap.add_argument("--formats", default=",".join(FORMATS), help="comma separated, of: " + ", ".join(FORMATS))
    ap.add_argument("--outlier", type=float, default=0.0,
                    help="wrap the model with an unread input channel of this gain (with_outlier; 0: off)")
    ap.add_argument("--plain-only", action="store_true", help="fp32 and plain static int8 only (speed runs)")
    ap.add_argument("--size", type=int, default=28, help="upsample every image to SIZE x SIZE (speed runs)")
    ap.add_argument("--batches", default="1", help="comma separated batch sizes to time (e.g. 1,16,64)")
    add_timing_args(ap, warmup=5, rounds=20, block=10)
    ap.add_argument("--work", type=Path, default=HERE / "results" / "int8_cnn")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    offline_quiet()

    import edgekit

    batches = [int(b) for b in args.batches.split(",")]
    s = setup(args.model, args.epochs, args.work, max(args.eval_items, *batches), args.outlier, args.size)
    tag = (args.model + (f"_outlier{args.outlier:g}" if args.outlier else "") + ("_plain" if args.plain_only else "")
           + (f"_{args.size}px" if args.size != 28 else ""))
    rows: dict[str, dict[str, Any]] = {}
    for label, (fmt, precision, opts) in _variants(args.formats.split(","), args.plain_only).items():
        t0 = time.perf_counter()
        (art,) = edgekit.convert(s.source, s.example, targets=[fmt], precisions=[precision], calib=s.calib,
                                 eval_data=s.eval_npz, out=args.work / tag / label.replace(" ", "-"),
                                 options={fmt: opts}, **s.kwargs)
        conv = json.loads(art.manifest_path.read_text())["conversion"]
        metric = art.verification.metric or {}
        rows[label] = {"format": fmt, "precision": precision, "options": opts, "status": str(art.status),
                       "path": str(art.path), "size_bytes": art.size_bytes, "accuracy": metric.get("value"),
                       "reference": metric.get("reference"), "route": art.route, "kept_in_float": kept_in_float(conv),
                       "loop_steps": len((conv.get("accuracy_loop") or {}).get("steps", [])),
                       "nncf_kept_in_float_ops": (conv.get("accuracy_control") or {}).get("kept_in_float"),
                       "convert_s": round(time.perf_counter() - t0, 1), "top1_agreement": agreement(art.path, s)}
        print(f"{label}: {rows[label]['status']} accuracy {metric.get('value')} size {art.size_bytes} "
              f"kept {rows[label]['kept_in_float']} in {rows[label]['convert_s']} s", file=sys.stderr, flush=True)

    load = speed(rows, s, batches, args)
    ref = next(r["reference"] for r in rows.values() if r["reference"] is not None)
    head = " | ".join(f"x fp32 ORT b{b} (CPU)" for b in batches)
    lines = [f"Fashion-MNIST {tag} CNN, {len(s.labels)} test images (fp32 PyTorch accuracy {ref:.4f}); "
             f"batches {args.batches}, {args.threads} threads, {args.rounds} interleaved rounds; {cpu_model()}; "
             f"load average {load[0]:.1f} -> {load[1]:.1f}", "",
             f"| variant | status | accuracy | drop (points) | top-1 agreement | size | convert s | kept in float | "
             f"ms/image b{batches[0]} | {head} |", "|---|" * 1 + "---|" * (8 + len(batches))]
    for label, r in rows.items():
        acc, sp = r["accuracy"], r["speed"]
        kept = f"{len(r['kept_in_float'])}: {', '.join(r['kept_in_float'])}" if r["kept_in_float"] else "-"
        ratios = " | ".join(f"{sp[b]['x_onnx_fp32']:.2f} ({sp[b]['cpu_x_onnx_fp32']:.2f})" for b in batches)
        lines.append(f"| {label} | {r['status']} | {acc:.4f} | {100 * (ref - acc):+.1f} | {r['top1_agreement']:.3f} "
                     f"| {r['size_bytes'] / 1e3:.0f} kB | {r['convert_s']:.0f} | {kept} "
                     f"| {sp[batches[0]]['ms_per_image']:.3f} | {ratios} |")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "reference": ref, "cpu": cpu_model(), "loadavg_1min": load,
              "settings": vars(args) | {"work": str(args.work), "out": str(args.out)}}
    (args.out / f"int8_cnn_{tag}.json").write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
