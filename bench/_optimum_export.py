"""Optimum's side of ``bench/peer_optimum.py``: run with the Python of Optimum's own virtualenv
(never edgekit's), it exports one model with Optimum the way its documentation shows and writes
each file plus a JSON record of what it did. It imports nothing from edgekit.

    <optimum-venv>/bin/python bench/_optimum_export.py SPEC.json

SPEC: {"model": HF dir, "task": "feature-extraction" | "text-classification", "out": folder,
"calibration": [texts], "seq_len": 128, "variants": [names below]}. Writes ``out/<variant>/``
and ``out/optimum.json`` ({variant: {"path", "route", "seconds"} or {"error"}}, versions).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

# variant -> (file inside its folder, how Optimum builds it)
FILES = {"onnx-fp32": "model.onnx", "onnx-int8-dynamic": "model_quantized.onnx",
         "onnx-int8-dynamic-avx2": "model_quantized.onnx",
         "openvino-fp32": "openvino_model.xml", "openvino-int8-weights": "openvino_model.xml",
         "openvino-int8": "openvino_model.xml", "openvino-int4": "openvino_model.xml"}
ONNX_CLASSES = {"feature-extraction": "ORTModelForFeatureExtraction",
                "text-classification": "ORTModelForSequenceClassification"}
OV_CLASSES = {"feature-extraction": "OVModelForFeatureExtraction",
              "text-classification": "OVModelForSequenceClassification"}


def _onnx_fp32(spec: dict[str, Any], out: Path) -> str:
    from optimum.exporters.onnx import main_export

    main_export(spec["model"], out, task=spec["task"], library_name="transformers")
    return "optimum.exporters.onnx.main_export (TorchScript torch.onnx.export, dynamo=False)"


def _dynamic(config: str, **kwargs: Any) -> Callable[[dict[str, Any], Path], str]:
    """ORTQuantizer with one of Optimum's AutoQuantizationConfig presets, dynamic activations."""
    def build(spec: dict[str, Any], out: Path) -> str:
        from optimum.onnxruntime import ORTQuantizer
        from optimum.onnxruntime.configuration import AutoQuantizationConfig

        quantizer = ORTQuantizer.from_pretrained(out.parent / "onnx-fp32", file_name="model.onnx")
        qconfig = getattr(AutoQuantizationConfig, config)(is_static=False, **kwargs)
        quantizer.quantize(save_dir=out, quantization_config=qconfig)
        return (f"ORTQuantizer, AutoQuantizationConfig.{config}(is_static=False{''.join(f', {k}={v}' for k, v in kwargs.items())}) "
                f"(weights {qconfig.weights_dtype.name}, per_channel {qconfig.per_channel}, "
                f"reduce_range {qconfig.reduce_range}, ops {qconfig.operators_to_quantize})")
    return build


def _ov_model(spec: dict[str, Any], **kwargs: Any) -> Any:
    import optimum.intel as oi

    return getattr(oi, OV_CLASSES[spec["task"]]).from_pretrained(spec["model"], export=True, compile=False, **kwargs)


def _openvino_fp32(spec: dict[str, Any], out: Path) -> str:
    _ov_model(spec, load_in_8bit=False).save_pretrained(out)
    return "OVModelFor*.from_pretrained(export=True, load_in_8bit=False) (TorchScript route, fp32 weights)"


def _weights(bits: int) -> Callable[[dict[str, Any], Path], str]:
    def build(spec: dict[str, Any], out: Path) -> str:
        from optimum.intel import OVWeightQuantizationConfig

        cfg = OVWeightQuantizationConfig(bits=bits)  # Optimum's defaults: asymmetric; int4 group 128
        _ov_model(spec, quantization_config=cfg).save_pretrained(out)
        return f"OVModelFor*.from_pretrained(export=True, quantization_config=OVWeightQuantizationConfig(bits={bits}))"
    return build


def _openvino_int8(spec: dict[str, Any], out: Path) -> str:
    import nncf
    import numpy as np
    from optimum.intel import OVConfig, OVQuantizationConfig, OVQuantizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = _ov_model(spec, load_in_8bit=False)
    names = {i.get_any_name() for i in model.model.inputs}
    items = []
    for text in spec["calibration"]:
        enc = tok([text], padding="max_length", truncation=True, max_length=spec["seq_len"], return_tensors="np")
        items.append({k: v.astype(np.int64) for k, v in enc.items() if k in names})
    quantizer = OVQuantizer.from_pretrained(model)
    quantizer.quantize(calibration_dataset=nncf.Dataset(items), save_directory=out,
                       ov_config=OVConfig(quantization_config=OVQuantizationConfig()))
    return f"OVQuantizer.quantize(OVQuantizationConfig() defaults, {len(items)} calibration texts)"


BUILDERS: dict[str, Callable[[dict[str, Any], Path], str]] = {
    # the README's example (avx512_vnni, per_channel=False), and the preset for this AVX2 host's kind
    "onnx-fp32": _onnx_fp32, "onnx-int8-dynamic": _dynamic("avx512_vnni", per_channel=False),
    "onnx-int8-dynamic-avx2": _dynamic("avx2"), "openvino-fp32": _openvino_fp32,
    "openvino-int8-weights": _weights(8), "openvino-int4": _weights(4), "openvino-int8": _openvino_int8}


def main(spec_path: str) -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"versions": {p: version(p) for p in (
        "optimum", "optimum-onnx", "optimum-intel", "transformers", "torch", "onnx", "onnxruntime",
        "openvino", "nncf")}, "variants": {}}
    done = json.loads((out / "optimum.json").read_text())["variants"] if (out / "optimum.json").is_file() else {}
    for name in spec["variants"]:
        folder = out / name
        if spec.get("reuse") and Path(done.get(name, {}).get("path", "")).is_file():
            record["variants"][name] = done[name]  # --reuse: built by an earlier run
            continue
        t0 = time.perf_counter()
        try:
            route = BUILDERS[name](spec, folder)
            record["variants"][name] = {"path": str(folder / FILES[name]), "route": route,
                                        "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # keep the other variants; the driver reports the failure
            record["variants"][name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0],
                                        "traceback": traceback.format_exc()[-2000:]}
        print(f"  optimum {name}: {record['variants'][name].get('error', 'ok')}", file=sys.stderr, flush=True)
    (out / "optimum.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
