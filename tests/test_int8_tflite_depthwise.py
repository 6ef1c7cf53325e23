"""TFLite keeps a depthwise convolution with a folded batch norm in float when asked (issue 15
item 3): LiteRT stores depthwise weights channel-last ([1, kh, kw, C]), which the per-channel
weight match now also tries, so the ai-edge-quantizer route finds the layer by its weight."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_quantizer")
from torch import nn  # noqa: E402

import edgekit  # noqa: E402

pytestmark = pytest.mark.slow


class Mobile(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.head = nn.Linear(32, 10)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):  # a non-trivial fold
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pw(self.dw(self.stem(x))).mean((2, 3)))


def test_tflite_int8_dynamic_keeps_the_folded_depthwise_layer_float(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    (art,) = edgekit.convert(Mobile().eval(), (torch.from_numpy(x),), input_names=["x"], output_names=["logits"],
                             targets=["tflite"], precisions=["int8-dynamic"], out=tmp_path,
                             options={"tflite": {"exclude_layers": ["stem.0", "dw.0"]}})
    ex = json.loads(art.manifest_path.read_text())["conversion"]["exclusions"]
    assert ex["applied"] == ["stem.0", "dw.0"] and ex["missing"] == []
    assert ex["native"]["dw.0"][0].startswith("DEPTHWISE_CONV_2D")
