"""ONNX int8 weights stay exact on x86 CPUs without VNNI.

ONNX Runtime's AVX2 / AVX-512F int8 kernels add u8 x s8 products in pairs into int16
(``vpmaddubsw``): two products of 255 x 127 overflow it and the sum saturates. A layer whose
inputs sit at the top of their range and whose weights are all large and of one sign hits that on
every output. edgekit quantizes ONNX weights to 7 bits by default (``reduce_range``), which is
exact on every CPU; on a VNNI or ARM host both settings pass, on an AVX2 host only 7 bits does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

import edgekit  # noqa: E402


class Saturating(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 8)
        with torch.no_grad():
            self.fc.weight.copy_(torch.linspace(0.9, 1.0, 64 * 8).reshape(8, 64))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _x(n: int, seed: int) -> np.ndarray:  # every input near the top of the batch's range
    return np.random.default_rng(seed).uniform(0.95, 1.0, (n, 64)).astype(np.float32)


@pytest.mark.parametrize("precision", ["int8-dynamic", "int8"])
def test_onnx_int8_is_exact_where_int16_pairs_would_saturate(precision: str, tmp_path: Path) -> None:
    np.savez(tmp_path / "calib.npz", x=_x(16, 1))
    (art,) = edgekit.convert(Saturating().eval(), (torch.from_numpy(_x(4, 0)),), input_names=["x"],
                             output_names=["y"], targets=["onnx"], precisions=[precision], out=tmp_path,
                             calib=tmp_path / "calib.npz")
    out = art.verification.outputs[0]
    # saturated: every output clipped near 32767 * scales, ~40% too small; exact: 7-bit rounding only
    assert out.max_abs_err < 0.5 and out.min_cosine > 0.9999, (out.max_abs_err, out.min_cosine)
    assert json.loads(art.manifest_path.read_text())["conversion"]["reduce_range"] is True
