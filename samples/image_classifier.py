"""Image classifier: a mobile-style CNN trained on Fashion-MNIST, converted to every format.

    python samples/image_classifier.py [--out samples-out/image-classifier] [--retrain]

1. Trains ``samples.image_net:fashion_cnn`` (depthwise-separable blocks, 0.1M parameters) on the
   60,000 Fashion-MNIST training images (Debian ``dataset-fashion-mnist``) on the CPU for a few
   epochs, and saves the weights as safetensors in ``~/.cache/edgekit/samples/fashion-cnn/``
   (reused on the next run; ``--retrain`` trains again).
2. Writes the 10,000 test images as labelled evaluation data (``.npz``: ``pixels`` + ``labels``)
   and 512 training images as calibration data.
3. ``edgekit.convert("samples.image_net:fashion_cnn", weights=..., targets=[onnx, openvino,
   tflite])`` with each converter's default precisions (fp32, a calibrated int8, int4 where the
   format has one); every variant is verified against PyTorch and scored on the test split.
4. Prints a table: size and accuracy of PyTorch and of each variant, then classifies a few test
   images from their uint8 pixels with the int8 ONNX model through ``edgekit.load``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as `python samples/image_classifier.py`: make `samples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samples import data  # noqa: E402
from samples.image_net import IMAGE_PREPROCESS, MEAN, STD  # noqa: E402
from samples.report import artifact_rows, print_table  # noqa: E402

CACHE = Path(os.environ.get("EDGEKIT_SAMPLES_CACHE", Path.home() / ".cache" / "edgekit" / "samples"))
MODEL_DIR = CACHE / "fashion-cnn"
FACTORY = "samples.image_net:fashion_cnn"
TARGETS = ("onnx", "openvino", "tflite")
CALIB_ITEMS = 512


def normalise(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> the float32 (N, 1, 28, 28) the network takes."""
    return ((images.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]


def train_fashion(out: Path = MODEL_DIR, *, epochs: int = 2, batch_size: int = 128, lr: float = 3e-3,
                  retrain: bool = False, threads: int = 2, seed: int = 0, log: Any = print,
                  factory: str = FACTORY) -> Path:
    """Train a CNN (``factory``, ``package.module:function``; default the sample's) on Fashion-MNIST;
    ``out/model.safetensors`` (+ ``training.json``), reused if there."""
    weights = out / "model.safetensors"
    if not retrain and weights.is_file() and (out / "training.json").is_file():
        return weights
    import importlib

    import torch
    from safetensors.torch import save_file

    module_name, _, function = factory.partition(":")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images, labels = data.fashion_mnist("train")
    test_images, test_labels = data.fashion_mnist("test")
    x, y = torch.from_numpy(normalise(images)), torch.from_numpy(labels)
    model = getattr(importlib.import_module(module_name), function)().to(memory_format=torch.channels_last)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        losses = []
        for idx in torch.randperm(len(x)).split(batch_size):
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5  # clothes are left-right symmetric enough
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb).contiguous(memory_format=torch.channels_last)
            loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        acc = torch_accuracy(model, test_images, test_labels)
        log(f"epoch {epoch + 1}/{epochs}  loss {np.mean(losses):.4f}  test accuracy {acc:.4f}  "
            f"{time.perf_counter() - t0:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    record = {"factory": factory, "data": "Fashion-MNIST train (60,000)", "epochs": epochs, "batch_size": batch_size,
              "lr": lr, "threads": threads, "train_seconds": round(time.perf_counter() - t0, 1),
              "test_accuracy": acc, "params": sum(p.numel() for p in model.parameters())}
    (out / "training.json").write_text(json.dumps(record, indent=2))
    return weights


def torch_accuracy(model: Any, images: np.ndarray, labels: np.ndarray, batch_size: int = 1000) -> float:
    import torch

    model.eval()
    with torch.inference_mode():
        preds = [model(torch.from_numpy(normalise(images[i:i + batch_size]))).argmax(1).numpy()
                 for i in range(0, len(images), batch_size)]
    return float((np.concatenate(preds) == labels).mean())


def write_data(folder: Path) -> tuple[Path, Path]:
    """The test split as ``fashion-test.npz`` (pixels + labels), calibration as ``fashion-calib.npz``."""
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = data.fashion_mnist("test")
    eval_npz = folder / "fashion-test.npz"
    np.savez(eval_npz, pixels=normalise(images), labels=labels)
    train, _ = data.fashion_mnist("train")
    pick = np.random.default_rng(1).permutation(len(train))[:CALIB_ITEMS]
    calib_npz = folder / "fashion-calib.npz"
    np.savez(calib_npz, pixels=normalise(train[pick]))
    return eval_npz, calib_npz


def convert_kwargs(weights: Path) -> dict[str, Any]:
    """The source arguments of ``edgekit.convert`` / ``edgekit.matrix.matrix`` for the trained CNN."""
    return {"weights": weights, "example_inputs": (normalise(data.fashion_mnist("test")[0][:2]),),
            "input_names": ["pixels"], "output_names": ["logits"], "name": "fashion-cnn"}


# what Model.classify needs to take uint8 images and answer with class names
PREPROCESS = {"image": IMAGE_PREPROCESS, "id2label": list(data.FASHION_CLASSES)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("samples-out/image-classifier"))
    ap.add_argument("--retrain", action="store_true", help="train again even if cached weights exist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated formats")
    args = ap.parse_args(argv)
    try:
        weights = train_fashion(epochs=args.epochs, retrain=args.retrain)
    except data.NotInstalled as e:
        sys.exit(str(e))
    record = json.loads((weights.parent / "training.json").read_text())
    print(f"model: {FACTORY} + {weights} ({record['params']:,} parameters, {record['epochs']} epochs, "
          f"{record['train_seconds']:.0f} s; PyTorch test accuracy {record['test_accuracy']:.4f})")
    import edgekit

    eval_npz, calib_npz = write_data(args.out / "data")
    t0 = time.perf_counter()
    artifacts = edgekit.convert(FACTORY, targets=args.targets.split(","), out=args.out, calib=calib_npz,
                                eval_data=eval_npz, keep_going=True, preprocess=PREPROCESS,
                                **convert_kwargs(weights))
    print(f"converted {len(artifacts)} variants in {time.perf_counter() - t0:.0f} s")
    print_table(artifact_rows(artifacts), reference_size=weights.stat().st_size)
    ok = next((a for a in artifacts if a.status == "ok" and a.format.value == "onnx"
               and a.precision.value.startswith("int8")), None)
    if ok is not None:
        images, labels = data.fashion_mnist("test")
        with edgekit.load(ok.path) as m:  # uint8 pixels in, class names out, as the manifest records
            got = [r["label"] for r in m.classify(list(images[:6]))]
        for g, t in zip(got, labels[:6]):
            print(f"  {ok.path.name}: {g:12s} (truth {data.FASHION_CLASSES[t]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
