"""Built-in models that need no files: the default for ``edgekit convert`` with no arguments.

``digits-cnn`` is a small CNN trained on the spot (a few seconds) on scikit-learn's 8x8 digits,
with the training split as calibration data and the test split as labelled evaluation data.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgekit.errors import ConfigError
from edgekit.sources import ModelSource
from edgekit.types import ProgressFn

DEFAULT = "digits-cnn"
# scikit-learn's digits are 8x8 counts of ink pixels (0..16, ink high) from 32x32 bitmaps in 4x4
# blocks; the model takes count / 16. An image file (0..255 grey) is box-downsampled to 8x8 and
# mapped linearly to 0..16 (pixel_max), so white ink on black matches; dark ink on white paper
# must be inverted first (PIL.ImageOps.invert). A float array is taken as counts 0..16.
DIGITS_IMAGE = {"size": [8, 8], "channels": 1, "scale": 1 / 16, "mean": [0.0], "std": [1.0],
                "layout": "NCHW", "resize": None, "crop": None, "resample": "box", "pixel_max": 16.0}


EPOCHS = 12


def _digits_cnn(progress: ProgressFn | None = None) -> ModelSource:
    import torch
    from torch import nn

    from edgekit.calib import CalibrationSet, EvalSet
    from edgekit.deps import require
    from edgekit.sources.module import from_module

    datasets = require("sklearn.datasets", "convert", "the built-in digits model")
    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    model.train()
    task = "train builtin digits-cnn"
    for epoch in range(EPOCHS):
        if progress:
            progress(task, epoch, EPOCHS)
        for idx in torch.randperm(len(xt)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    if progress:
        progress(task, EPOCHS, EPOCHS)
    model.eval()
    example = x[test[:2]]
    return from_module(
        model, (example,), input_names=["pixels"], output_names=["logits"], name="digits-cnn",
        kind="builtin",
        task="image-classification", location="builtin:digits-cnn",
        preprocess={"id2label": {str(i): str(i) for i in range(10)}, "image": DIGITS_IMAGE},
        calibration=CalibrationSet({"pixels": x[train[:256]]}, "sklearn digits, train split"),
        evaluation=EvalSet(CalibrationSet({"pixels": x[test]}, "sklearn digits, test split"),
                           y[test]),
    )


BUILTINS: dict[str, Callable[[ProgressFn | None], ModelSource]] = {"digits-cnn": _digits_cnn}


def from_builtin(name: str, progress: ProgressFn | None = None) -> ModelSource:
    """The built-in model ``name``; ``progress`` hears about training (task, epoch, epochs)."""
    factory = BUILTINS.get(name)
    if factory is None:
        raise ConfigError(f"no built-in model {name!r}",
                          fix=f"use one of: {', '.join('builtin:' + n for n in BUILTINS)}")
    return factory(progress)
