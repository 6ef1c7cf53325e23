"""Parity on the device: the same inputs run there and here, outputs compared per output.

This catches runtimes that compute wrong numbers on one platform only (tflite-runtime 2.14's int8
on ARM). fp32 must agree within the conversion's fp32 tolerance; other precisions must keep the
direction (cosine) and the top-1 answer, since int8 kernels legitimately differ across CPUs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import MissingDependencyError

if TYPE_CHECKING:
    from edgekit.devices.remote import Device

Feed = dict[str, np.ndarray]
QUANTIZED_MIN_COSINE = 0.99


@dataclass
class DeviceParity:
    """Outputs from the device, and how they compare with a local run (None when no local runtime)."""

    device: str
    artifact: str
    outputs: list[Feed]
    local: list[Feed] | None
    parity: list[dict[str, Any]]
    agree: bool | None
    host: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "artifact": self.artifact, "agree": self.agree, "parity": self.parity,
                "host": self.host}


def compare_outputs(expected: list[Feed], got: list[Feed], fp32: bool) -> tuple[list[dict[str, Any]], bool]:
    """Per output: max/mean abs error, cosine (mean, worst), top-1 agreement; and whether they agree."""
    from edgekit.types import Precision
    from edgekit.verify import output_parity, within_tolerance

    rows, ok = [], True
    for name in expected[0]:
        exp, out = [e[name] for e in expected], [g[name] for g in got]
        top1 = exp[0].dtype.kind == "f" and exp[0].ndim >= 1 and exp[0].shape[-1] > 1
        p = output_parity(name, exp, out, top1)
        if fp32:
            scale = max(float(np.abs(e[np.isfinite(e)]).max(initial=0.0)) for e in exp)
            good = within_tolerance(p, Precision.FP32, scale)
        else:
            good = (not p.non_finite and p.min_cosine >= QUANTIZED_MIN_COSINE
                    and (p.top1_agreement is None or p.top1_agreement == 1.0))
        rows.append({**asdict(p), "agree": good})
        ok = ok and good
    return rows, ok


def device_parity(device: Device, path: str | Path, feeds: list[Feed], **options: Any) -> DeviceParity:
    """Run ``feeds`` on the device and here (both isolated) and compare the outputs."""
    from edgekit.isolation import run_isolated
    from edgekit.runtime import resolve_artifact
    from edgekit.types import Precision

    there, _ = device.run(path, feeds, **options)
    try:
        here, _ = run_isolated(path, feeds, **options)
    except MissingDependencyError:
        return DeviceParity(device.name, str(path), there, None, [], None, device.last_host)
    manifest = resolve_artifact(path).manifest
    fp32 = manifest is None or manifest.precision is Precision.FP32
    parity, agree = compare_outputs(here, there, fp32)
    return DeviceParity(device.name, str(path), there, here, parity, agree, device.last_host)
