"""Why static int8 loses accuracy on a depthwise CNN, one factor at a time, per format.

Every row is plain static int8 (``-O int8_loop=false``: no layer kept in float) of the same trained
model (``--model``, as in ``bench/int8_cnn.py``) on the same 512 calibration images, with one
setting changed from the format's default (or a combination, marked +). Figures: accuracy on
``--eval-items`` Fashion-MNIST test images and top-1 agreement with the fp32 PyTorch model on them.

- ONNX (ORT ``quantize_static``): edgekit's defaults (per-channel weights, 7-bit weights
  ``reduce_range``, minmax activation ranges), ORT's own defaults (per-tensor, 8-bit), each factor
  alone, and edgekit's module fixes (``int8_cle``, ``int8_bias_correction``).
- OpenVINO (NNCF): edgekit's defaults (performance preset, fast bias correction), then NNCF called
  directly on the same fp32 IR with one of its defaults switched to ORT's choice (no bias correction,
  global minmax activation ranges, 8-bit first layer), and CLE on the module.
- TFLite (PT2E): the default and the module fixes.

    .venv/bin/python bench/int8_calibration.py --model mobilenet   # JSON in bench/results/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from _common import cpu_model, offline_quiet  # noqa: E402
from int8_cnn import MODELS, Setup, agreement, setup  # noqa: E402

OFF = {"int8_loop": False}
FIXES = {"cle": {"int8_cle": True}, "bias correction": {"int8_bias_correction": True},
         "cle + bias correction": {"int8_cle": True, "int8_bias_correction": True}}
STUDY: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "onnx": [("edgekit default", {}), ("ORT defaults (per-tensor, 8-bit)", {"per_channel": False, "reduce_range": False}),
             ("reduce_range=false (8-bit weights)", {"reduce_range": False}), ("per_channel=false", {"per_channel": False}),
             ("calibration=mean-minmax", {"calibration": "mean-minmax"}),
             ("calibration=percentile", {"calibration": "percentile"}),
             *FIXES.items(),
             ("+ mean-minmax, cle, bias correction", {"calibration": "mean-minmax", **FIXES["cle + bias correction"]})],
    "openvino": [("edgekit default (performance preset)", {}), ("cle", {"int8_cle": True})],
    "tflite": [("edgekit default (PT2E)", {}), *FIXES.items()],
}
# NNCF on the fp32 IR with one of its defaults set to what ORT does
NNCF_SWITCHES = {"nncf: no bias correction": {"disable_bias_correction": True},
                 "nncf: global minmax activation ranges": {"minmax": True},
                 "nncf: 8-bit first layer (overflow fix off)": {"overflow": "disable"}}


def convert(s: Setup, fmt: str, precision: str, opts: dict[str, Any], out: Path) -> dict[str, Any]:
    import edgekit

    t0 = time.perf_counter()
    (art,) = edgekit.convert(s.source, s.example, targets=[fmt], precisions=[precision], calib=s.calib,
                             eval_data=s.eval_npz, out=out, options={fmt: opts}, **s.kwargs)
    conv = json.loads(art.manifest_path.read_text())["conversion"]
    return {"format": fmt, "options": opts, "status": str(art.status), "path": str(art.path),
            "accuracy": (art.verification.metric or {}).get("value"), "size_bytes": art.size_bytes,
            "top1_agreement": agreement(art.path, s), "int8_prep": conv.get("int8_prep"),
            "seconds": round(time.perf_counter() - t0, 1)}


def nncf_direct(s: Setup, fp32_xml: str, switch: dict[str, Any], out: Path) -> dict[str, Any]:
    """NNCF's quantize on the fp32 IR edgekit exported, edgekit's preset and data, one switch flipped."""
    import nncf
    import numpy as np
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    calib = np.load(s.calib)["pixels"][:300]
    adv: dict[str, Any] = {"disable_bias_correction": bool(switch.get("disable_bias_correction"))}
    if switch.get("minmax"):
        adv["activations_range_estimator_params"] = RangeEstimatorParametersSet.MINMAX
    if "overflow" in switch:
        adv["overflow_fix"] = OverflowFix(switch["overflow"])
    model = nncf.quantize(ov.Core().read_model(fp32_xml), nncf.Dataset([{"pixels": c[None]} for c in calib]),
                          preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calib),
                          advanced_parameters=AdvancedQuantizationParameters(**adv))
    out.mkdir(parents=True, exist_ok=True)
    xml = out / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = np.array([int(compiled({"pixels": s.pixels[i:i + 1]})[0].argmax()) for i in range(len(s.pixels))])
    return {"format": "openvino", "options": switch, "status": "direct", "path": str(xml),
            "accuracy": float((got == s.labels).mean()), "top1_agreement": float((got == s.torch_top1).mean()),
            "size_bytes": xml.stat().st_size + xml.with_suffix(".bin").stat().st_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="mobilenet")
    ap.add_argument("--epochs", type=int, default=1, help="training epochs when no cached weights exist")
    ap.add_argument("--eval-items", type=int, default=1000)
    ap.add_argument("--formats", default="onnx,openvino,tflite")
    ap.add_argument("--work", type=Path, default=HERE / "results" / "int8_calibration")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)
    offline_quiet()
    s = setup(args.model, args.epochs, args.work, args.eval_items)
    ref = float((s.torch_top1 == s.labels).mean())
    rows: dict[str, dict[str, Any]] = {}
    for fmt in args.formats.split(","):
        fp32 = convert(s, fmt, "fp32", {}, args.work / args.model / f"{fmt}-fp32")
        rows[f"{fmt} fp32"] = fp32
        for label, opts in STUDY[fmt]:
            key = f"{fmt} int8 {label}"
            rows[key] = convert(s, fmt, "int8", OFF | opts, args.work / args.model / key.replace(" ", "-"))
            print(f"{key}: {rows[key]['accuracy']:.4f} top-1 {rows[key]['top1_agreement']:.3f} "
                  f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        if fmt == "openvino":
            for label, switch in NNCF_SWITCHES.items():
                rows[f"openvino int8 {label}"] = nncf_direct(s, fp32["path"], switch,
                                                             args.work / args.model / label.replace(" ", "-"))
                print(f"{label}: top-1 {rows[f'openvino int8 {label}']['top1_agreement']:.3f}", file=sys.stderr,
                      flush=True)
    load = os.getloadavg()
    lines = [f"Fashion-MNIST {args.model} CNN, {args.eval_items} test images, fp32 PyTorch accuracy {ref:.4f}; "
             f"static int8 with the loop off; {cpu_model()}; load average at the end {load[0]:.1f}", "",
             "| variant | accuracy | drop (points) | top-1 agreement | size |", "|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['accuracy']:.4f} | {100 * (ref - r['accuracy']):+.1f} | {r['top1_agreement']:.3f} "
                     f"| {r['size_bytes'] / 1e3:.0f} kB |")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"int8_calibration_{args.model}.json").write_text(json.dumps(
        {"rows": rows, "reference_accuracy": ref, "cpu": cpu_model(), "loadavg": load,
         "settings": vars(args) | {"work": str(args.work), "out": str(args.out)}}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
