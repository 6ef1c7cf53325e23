"""Text classification: texts -> tokenizer -> logits -> labels and scores (``Model.classify``)."""

from __future__ import annotations

from typing import Any

from edgekit.tasks import PIPELINES
from edgekit.tasks._base import Classifier, Prepared, as_items
from edgekit.tasks._text import TextEncoder


@PIPELINES.register("text-classification")
class TextClassifier(Classifier):
    """``m.classify(["some text", ...], top_k=1)`` -> one ``{"label", "score", "index", "top"}`` per text."""

    task = "text-classification"
    input_kind = "text"

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.encoder = TextEncoder(self)
        self._labels()

    def preprocess(self, inputs: Any, *, batch_size: int | None = None) -> Prepared:
        texts = as_items(inputs, (str,))
        prepared = Prepared([], [])
        for chunk in self.chunks(texts, batch_size):
            prepared.feeds.append(self.fill(self.encoder.encode(chunk), len(chunk)))
            prepared.rows.append(len(chunk))
        return prepared
