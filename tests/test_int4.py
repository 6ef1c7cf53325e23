"""int4 builders: OpenVINO int4 on layers whose input width the group size (128) does not divide
(NNCF's "Failed to apply group-wise quantization"), the int4 mode and the ONNX MatMulNBits
compute type recorded in the manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import edgekit  # noqa: E402
from edgekit.errors import ConfigError, QuantizationError  # noqa: E402
from edgekit.optimize.bits import NoLowBitWeights  # noqa: E402

pytestmark = pytest.mark.slow  # each test converts a model (5-30 s on a loaded 2-core host)


class Narrow(nn.Module):
    """A 96-wide and a 64-wide layer (neither divisible by 128), then a head NNCF keeps at 8 bit."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(96, 64)
        self.b = nn.Linear(64, 128)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def _convert(out: Path, target: str, **options: Any) -> Any:
    (art,) = edgekit.convert(Narrow().eval(), (torch.randn(8, 96, generator=torch.Generator().manual_seed(1)),),
                             input_names=["x"], output_names=["logits"], targets=[target], precisions=["int4"],
                             out=out, options={target: options})
    return art


def _conversion(art: Any) -> dict[str, Any]:
    return json.loads(art.manifest_path.read_text())["conversion"]


def test_openvino_int4_adjusts_the_group_size_of_narrow_layers(tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    art = _convert(tmp_path, "openvino")
    conv = _conversion(art)
    assert art.status == "ok" and conv["group_fallback"] == "adjust" and conv["mode"] == "int4_asym"
    # 96 -> groups of 32 (the largest power of two dividing it), 64 -> one group of 64
    assert conv["group_sizes"] == {"32": 1, "64": 1}
    weights = {"a": 96 * 64, "b": 64 * 128, "head": 128 * 10}
    assert conv["quantized_fraction"]["4"] == pytest.approx((weights["a"] + weights["b"]) / sum(weights.values()),
                                                            abs=1e-3)
    assert art.verification.outputs[0].cosine > 0.98


def test_openvino_int4_group_fallback_modes(tmp_path: Path) -> None:
    pytest.importorskip("nncf")
    with pytest.raises(QuantizationError, match="not a multiple of int4_block_size=128"):
        _convert(tmp_path / "error", "openvino", int4_group_fallback="error")
    # ignore keeps both narrow layers in float: no 4-bit weight is left, so the name would lie
    with pytest.raises(NoLowBitWeights):
        _convert(tmp_path / "ignore", "openvino", int4_group_fallback="ignore")
    with pytest.raises(ConfigError, match="int4_group_fallback"):
        _convert(tmp_path / "bad", "openvino", int4_group_fallback="shrink")


def test_onnx_int4_runs_matmul_nbits_with_int8_compute_by_default(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")

    def levels(art: Any) -> list[int]:
        nodes = [n for n in onnx.load(str(art.path)).graph.node if n.op_type == "MatMulNBits"]
        return [next((a.i for a in n.attribute if a.name == "accuracy_level"), 0) for n in nodes]

    art = _convert(tmp_path / "default", "onnx")
    conv = _conversion(art)
    assert conv["accuracy_level"] == 4 and levels(art) == [4, 4, 4]  # a, b and the head
    unset = _convert(tmp_path / "unset", "onnx", int4_accuracy_level=0)
    assert _conversion(unset)["accuracy_level"] == 0 and levels(unset) == [0, 0, 0]  # attribute left out
    # int8 activations cost little: both stay close to PyTorch, and to each other
    for a in (art, unset):
        assert a.status == "ok" and a.verification.outputs[0].min_cosine > 0.99
    with pytest.raises(ConfigError, match="int4_accuracy_level"):
        _convert(tmp_path / "bad", "onnx", int4_accuracy_level=5)
