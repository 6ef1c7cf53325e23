"""The table the classifier samples print: one row per converted variant, PyTorch first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def artifact_rows(artifacts: Sequence[Any]) -> list[dict[str, Any]]:
    """One dict per ``edgekit.Artifact``: name, status, size, accuracy against PyTorch, worst cosine."""
    rows = []
    for a in artifacts:
        v = a.verification
        metric = (v.metric or {}) if v else {}
        worst = v.worst() if v else None
        rows.append({"variant": f"{a.format.value}/{a.precision.value}", "file": a.path.name, "status": a.status,
                     "reason": a.reason, "size_bytes": a.size_bytes, "accuracy": metric.get("value"),
                     "reference": metric.get("reference"), "delta": metric.get("delta"),
                     "samples": metric.get("samples"), "min_cosine": worst.min_cosine if worst else None,
                     "build_seconds": a.seconds})
    return rows


def print_table(rows: Sequence[dict[str, Any]], *, reference_size: int) -> None:
    """Print ``rows`` as a text table; sizes also as a ratio of ``reference_size`` (fp32 weights)."""
    reference = next((r["reference"] for r in rows if r["reference"] is not None), None)
    samples = next((r["samples"] for r in rows if r["samples"]), None)
    print(f"\n{'variant':22s} {'size MB':>8s} {'x fp32':>7s} {'accuracy':>9s} {'delta':>7s} "
          f"{'worst cos':>9s}  status")
    if reference is not None:
        print(f"{'pytorch/fp32':22s} {reference_size / 1e6:8.2f} {1.0:7.2f} {reference:9.4f} {0.0:+7.4f} "
              f"{1.0:9.5f}  reference ({samples} test items)")
    for r in rows:
        if r["status"] == "failed":
            print(f"{r['variant']:22s} {'':>8s} {'':>7s} {'':>9s} {'':>7s} {'':>9s}  failed: {r['reason']}")
            continue
        acc = f"{r['accuracy']:9.4f}" if r["accuracy"] is not None else f"{'-':>9s}"
        delta = f"{r['delta']:+7.4f}" if r["delta"] is not None else f"{'-':>7s}"
        cos = f"{r['min_cosine']:9.5f}" if r["min_cosine"] is not None else f"{'-':>9s}"
        print(f"{r['variant']:22s} {r['size_bytes'] / 1e6:8.2f} {r['size_bytes'] / reference_size:7.2f} {acc} "
              f"{delta} {cos}  {r['status']}")
