"""Text embedding: texts -> tokenizer -> hidden states -> pooled, L2-normalised vectors (``Model.embed``).

Pooling follows the source model (``preprocess["pooling"]``, read from a sentence-transformers
``1_Pooling/config.json`` at conversion): ``mean`` averages the token states under the attention
mask, ``cls`` takes the first token, ``max`` the masked maximum. An artifact whose output is
already one vector per text (rank 2) is not pooled again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgekit.errors import ArtifactError
from edgekit.tasks import PIPELINES
from edgekit.tasks._base import Pipeline, Prepared, as_items
from edgekit.tasks._text import TextEncoder


def _mean(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)


def _cls(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return h[:, 0]


def _max(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask[..., None] > 0, h, -np.inf).max(axis=1)


POOLING: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {"mean": _mean, "cls": _cls, "max": _max}


@PIPELINES.register("feature-extraction")
class Embedder(Pipeline):
    """``m.embed(["some text", ...])`` -> float32 array (N, D), rows L2-normalised."""

    task = "feature-extraction"
    verbs = ("embed",)
    input_kind = "text"

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.encoder = TextEncoder(self)
        self.hidden = self.output("last_hidden_state")
        name = str(self.spec.get("pooling") or "mean")
        if name not in POOLING:
            raise ArtifactError(f"{model.path.name} records pooling {name!r}, which edgekit does not know",
                                fix=f"pooling is one of: {', '.join(POOLING)}")
        self.pool = POOLING[name]
        self.normalize = bool(self.spec.get("normalize", True))

    def preprocess(self, inputs: Any, *, batch_size: int | None = None) -> Prepared:
        texts = as_items(inputs, (str,))
        prepared = Prepared([], [])
        for chunk in self.chunks(texts, batch_size):
            feed = self.fill(self.encoder.encode(chunk), len(chunk))
            prepared.feeds.append(feed)
            prepared.rows.append(len(chunk))
            prepared.extras.append(feed.get("attention_mask", np.ones_like(next(iter(feed.values())))))
        return prepared

    def postprocess(self, prepared: Prepared, outputs: list[dict[str, np.ndarray]], *,
                    normalize: bool | None = None, **options: Any) -> np.ndarray:
        if not prepared.feeds:
            dim = self.model.signature.outputs[0].shape[-1] if self.model.signature.outputs else 0
            return np.zeros((0, dim if isinstance(dim, int) else 0), dtype=np.float32)
        pooled = []
        for out, rows, mask in zip(outputs, prepared.rows, prepared.extras):
            h = np.asarray(out[self.hidden], dtype=np.float32)[:rows]
            pooled.append(h if h.ndim == 2 else self.pool(h, mask[:rows, :h.shape[1]]))
        vectors = np.concatenate(pooled) if len(pooled) > 1 else pooled[0]
        if self.normalize if normalize is None else normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors.astype(np.float32)
