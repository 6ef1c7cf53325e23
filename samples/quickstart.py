"""Quickstart: the Python API end to end on the built-in digits CNN.

    python samples/quickstart.py [--out quickstart-out]

Converts the model (trained on the spot on scikit-learn's 8x8 digits) to ONNX fp32, int8 and
int4, checks each variant's accuracy on the held-out digits, runs one through the runtime API
and benchmarks all of them with the same harness.
"""

from __future__ import annotations

import argparse

import numpy as np

import edgekit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="quickstart-out", help="output directory")
    args = parser.parse_args()

    artifacts = edgekit.convert("builtin:digits-cnn", targets=["onnx"], precisions=["fp32", "int8", "int4"],
                                out=args.out)
    for art in artifacts:
        v = art.verification
        acc = v.metric
        print(f"{art.path.name:28s} {art.size_bytes / 1024:7.1f} KB  worst cosine {v.worst().min_cosine:.5f}  "
              f"accuracy {acc['value']:.4f} ({acc['delta']:+.4f} vs PyTorch)")

    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[-8:] / 16.0).astype(np.float32)[:, None]
    with edgekit.load(artifacts[1].path, device="cpu", threads=1) as model:
        logits = model.run({"pixels": x})["logits"]
        print("int8 predictions:", logits.argmax(1).tolist(), " truth:", digits.target[-8:].tolist())
        stats = model.benchmark(warmup=10, min_time=1.0).latency
        print(f"int8 in-process: p50 {stats.p50_ms * 1000:.1f} us over {stats.runs} runs")

    for art in artifacts:
        r = edgekit.benchmark(art.path, isolated=True, min_time=1.0)
        print(f"{art.path.name:28s} isolated: load {r.load_ms:.1f} ms, first {r.first_ms:.3f} ms, "
              f"p50 {r.latency.p50_ms:.4f} ms, p99 {r.latency.p99_ms:.4f} ms, peak RSS {r.peak_rss_mb:.0f} MB")


if __name__ == "__main__":
    main()
