"""ONNX static int8 folds ReLU and ReLU6 (Clip) into the quantized op before them.

Left out of the quantizer's op list, each Relu/Clip kept its own QuantizeLinear with a range of
its own, so at run time every convolution ended in a DequantizeLinear -> QuantizeLinear
requantization pair (the sample CNN's int8 took 1.3-1.6x fp32's time; ``bench/int8_cnn.py``). With
Relu and Clip listed, ONNX Runtime's quantizer removes them after a quantized op and gives that
op their range: no activation node and no requantization pair is left, at the same accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from torch import nn  # noqa: E402

import edgekit  # noqa: E402

pytestmark = pytest.mark.slow  # two conversions: ~15 s on a quiet 2-core host
OLD_OPS = "Conv,ConvTranspose,MatMul,Gemm,Gather"  # the list before Relu and Clip were added


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.stem(pixels))
        x = torch.relu(self.dw(x))
        x = nn.functional.relu6(self.pw(x))
        return self.head(x.mean((2, 3)))


def _convert(out: Path, calib: Path, **options: Any) -> Any:
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32))
    (art,) = edgekit.convert(Net().eval(), (x,), input_names=["pixels"], output_names=["logits"], targets=["onnx"],
                             precisions=["int8"], out=out, calib=calib,
                             options={"onnx": {"int8_loop": False, **options}})
    return art


def _requantize_pairs(path: Path, tmp: Path) -> int:
    """QuantizeLinear nodes fed by a DequantizeLinear in the graph ONNX Runtime runs (after its
    QDQ fusions, before hardware-specific layout changes)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp / f"{path.stem}-optimized.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    graph = onnx.load(so.optimized_model_filepath).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    return sum(1 for n in graph.node if n.op_type == "QuantizeLinear" and made_by.get(n.input[0]) == "DequantizeLinear")


@pytest.fixture(scope="module")
def arts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("act")
    calib = tmp / "calib.npz"
    np.savez(calib, pixels=np.random.default_rng(1).standard_normal((16, 3, 16, 16)).astype(np.float32))
    return {"new": _convert(tmp / "new", calib), "old": _convert(tmp / "old", calib, int8_op_types=OLD_OPS),
            "tmp": tmp}


def test_activations_folded_into_the_quantized_op(arts: dict[str, Any]) -> None:
    new, old, tmp = arts["new"], arts["old"], arts["tmp"]
    ops = {n.op_type for n in onnx.load(str(new.path)).graph.node}
    assert not ops & {"Relu", "Clip"}
    assert {n.op_type for n in onnx.load(str(old.path)).graph.node} >= {"Relu", "Clip"}
    # between the three convolutions: a requantization pair each before, none now
    assert _requantize_pairs(old.path, tmp) == 2
    assert _requantize_pairs(new.path, tmp) == 0


def test_same_accuracy_and_smaller(arts: dict[str, Any]) -> None:
    new, old = arts["new"], arts["old"]
    assert new.status == "ok"
    (o_new,), (o_old,) = new.verification.outputs, old.verification.outputs
    assert o_new.min_cosine > 0.99 and o_new.min_cosine >= o_old.min_cosine - 0.005
    assert new.size_bytes <= old.size_bytes  # fewer quantization parameters
