"""Image classification: paths, PIL images or arrays -> resize/crop/normalise -> labels (``Model.classify``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ArtifactError, ConfigError
from edgekit.tasks import PIPELINES
from edgekit.tasks._base import Classifier, Prepared, as_items
from edgekit.tasks._image import ImageSpec, load_pixels, to_tensor


@PIPELINES.register("image-classification")
class ImageClassifier(Classifier):
    """``m.classify("photo.jpg" | bytes | file object | PIL image | array | a list of them, top_k=1)``
    -> one result per image."""

    task = "image-classification"
    input_kind = "image"
    default_batch = 16

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        from edgekit.deps import require

        require("PIL", model.extra, "image pipelines")
        raw = self.spec.get("image")
        if not raw:
            raise ArtifactError(f"{model.path.name} records no image preprocessing (manifest preprocess.image)",
                                fix="convert with preprocess={'image': {'size': [H, W], ...}} (see docs/tasks.md), "
                                "or call run() with arrays")
        try:
            self.image = ImageSpec.parse(raw)
        except ConfigError as e:
            raise ArtifactError(f"{model.path.name}: {e.problem}", fix=e.fix) from e
        inputs = model.signature.inputs
        if len(inputs) != 1 or inputs[0].rank != 4:
            raise ArtifactError(f"{model.path.name} does not take one image batch (rank 4)",
                                fix="call run() with arrays")
        self.input = inputs[0].name
        self.layout = self._artifact_layout(inputs[0].shape)
        self._labels()

    def _artifact_layout(self, shape: tuple[Any, ...]) -> str:
        """The layout the artifact takes: a TFLite file converted with layout=nhwc takes (N, H, W, C)
        whatever the source took; the signature tells where it can, else the manifest's layout."""
        c, (h, w) = self.image.channels, self.image.size

        def fits(dims: tuple[Any, ...], want: tuple[int, ...]) -> bool:
            return all(not isinstance(d, int) or d == x for d, x in zip(dims, want))

        nchw, nhwc = fits(shape[1:], (c, h, w)), fits(shape[1:], (h, w, c))
        if nchw != nhwc:
            return "NCHW" if nchw else "NHWC"
        return self.image.layout

    def _items(self, inputs: Any) -> list[Any]:
        if isinstance(inputs, np.ndarray):
            single = inputs.ndim == 2 or (inputs.ndim == 3 and inputs.shape[-1] in (1, 3, 4)
                                          and inputs.shape[-1] != inputs.shape[0])
            return [inputs] if single else list(inputs)
        if hasattr(inputs, "read"):  # a file object iterates over lines: it is one image
            return [inputs]
        return as_items(inputs, (str, Path, bytes, bytearray, np.ndarray) + _pil_types())

    def preprocess(self, inputs: Any, *, batch_size: int | None = None) -> Prepared:
        items = self._items(inputs)
        prepared = Prepared([], [])
        for chunk in self.chunks(items, batch_size):
            x = to_tensor([load_pixels(item, self.image) for item in chunk], self.image, self.layout)
            prepared.feeds.append(self.fill({self.input: x}, len(chunk)))
            prepared.rows.append(len(chunk))
        return prepared


def _pil_types() -> tuple[type, ...]:
    from PIL import Image

    return (Image.Image,)
