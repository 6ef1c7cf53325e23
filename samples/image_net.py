"""A small mobile-style CNN for 28x28 grey images (Fashion-MNIST), in plain torch.

``fashion_cnn`` is the factory edgekit imports by name: ``samples.image_net:fashion_cnn`` with the
weights file the image classifier sample trains (``edgekit convert samples.image_net:fashion_cnn
--weights ...``). A standard 3x3 convolution stem, then MobileNet-style blocks (3x3 depthwise +
1x1 pointwise, batch norm, ReLU6), global average pooling and a linear classifier: 31k parameters, 2M multiply-adds per image.

The model takes ``pixels`` (N, 1, 28, 28) float32, already normalised: ``(grey / 255 - MEAN) / STD``
(``IMAGE_PREPROCESS`` says the same to ``Model.classify``).
"""

from __future__ import annotations

from typing import Any

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training split, pixel values scaled to 0..1
IMAGE_PREPROCESS: dict[str, Any] = {"size": [28, 28], "channels": 1, "scale": 1 / 255, "mean": [MEAN],
                                    "std": [STD], "layout": "NCHW", "resize": None, "crop": None}
STEM = 16  # channels of the first (full) 3x3 convolution
# (output channels, stride) per depthwise-separable block: 28x28 -> 14x14 -> 7x7
BLOCKS = ((32, 2), (64, 1), (128, 2), (128, 1))


def fashion_cnn(num_classes: int = 10) -> Any:
    """The untrained network (load the sample's weights into it)."""
    from torch import nn

    def separable(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin),
            nn.ReLU6(),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())

    layers: list[nn.Module] = [nn.Conv2d(1, STEM, 3, padding=1, bias=False), nn.BatchNorm2d(STEM), nn.ReLU6()]
    cin = STEM
    for cout, stride in BLOCKS:
        layers.append(separable(cin, cout, stride))
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)
