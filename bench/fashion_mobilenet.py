"""A MobileNetV2-style CNN for Fashion-MNIST, the second model of ``bench/int8_cnn.py``.

Inverted residual blocks as in MobileNetV2 (1x1 expansion x4, 3x3 depthwise, linear 1x1
projection, batch norm, ReLU6, residual adds where the shape allows), a stride-2 stem (28 -> 14 ->
7 -> 4 pixels) and a 1x1 head to 256 channels: 0.12M parameters. It is trained on the 60,000
Fashion-MNIST training images by ``samples.image_classifier.train_fashion`` (the sample's own
training loop) and cached in ``~/.cache/edgekit/bench/fashion-mobilenet/``. Unlike the sample CNN
(plain depthwise-separable blocks), it has the parts that make MobileNetV2 hard to quantize: linear
bottlenecks whose outputs are not clipped, residual sums, and depthwise layers whose folded batch
norm leaves channels of very different ranges.

    fashion_mobilenet:mobilenet   # the factory, with bench/ on sys.path
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

FACTORY = "fashion_mobilenet:mobilenet"
CACHE = Path(os.environ.get("EDGEKIT_BENCH_CACHE", Path.home() / ".cache" / "edgekit" / "bench"))
MODEL_DIR = CACHE / "fashion-mobilenet"
STEM = 16
# (expansion, output channels, repeats, first stride) per stage, as in MobileNetV2's table
STAGES = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 48, 2, 2), (4, 64, 2, 1))
HEAD = 256


def mobilenet(num_classes: int = 10) -> Any:
    """The untrained network (load the cached weights into it)."""
    import torch
    from torch import nn

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers: list[nn.Module] = []
            if expand != 1:
                layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
            layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return x + y if self.residual else y

    layers: list[nn.Module] = [nn.Conv2d(1, STEM, 3, 2, 1, bias=False), nn.BatchNorm2d(STEM), nn.ReLU6()]
    cin = STEM
    for expand, cout, repeats, stride in STAGES:
        for i in range(repeats):
            layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
            cin = cout
    layers += [nn.Conv2d(cin, HEAD, 1, bias=False), nn.BatchNorm2d(HEAD), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(HEAD, num_classes)]
    return nn.Sequential(*layers)


def train(epochs: int = 3, retrain: bool = False, log: Any = print) -> Path:
    """The cached (or newly trained) ``model.safetensors``; ``training.json`` beside it."""
    from samples.image_classifier import train_fashion

    return train_fashion(MODEL_DIR, epochs=epochs, retrain=retrain, factory=FACTORY, log=log)


if __name__ == "__main__":  # train (or show) the cached model
    import json
    import sys

    HERE = Path(__file__).resolve().parent
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    weights = train(epochs=int(sys.argv[1]) if len(sys.argv) > 1 else 3)
    print(json.dumps(json.loads((weights.parent / "training.json").read_text()), indent=2))
