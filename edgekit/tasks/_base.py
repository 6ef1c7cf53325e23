"""What every task pipeline shares: preprocess -> infer -> postprocess, batching and ranking.

The three stages are separate methods so the harness can time them apart
(:func:`edgekit.harness.measure_task`); calling a pipeline runs them in turn.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgekit.errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    from edgekit.runtime import Model

Feed = dict[str, np.ndarray]


@dataclass
class Prepared:
    """Model-ready batches and what postprocessing needs to read their outputs back."""

    feeds: list[Feed]
    rows: list[int]  # real rows of each batch (a fixed-batch artifact gets padded batches)
    extras: list[Any] = field(default_factory=list)  # per batch, e.g. the attention mask

    @property
    def count(self) -> int:
        return sum(self.rows)


class Pipeline(ABC):
    """One task's preprocessing and postprocessing around ``model.run``."""

    task: ClassVar[str]
    verbs: ClassVar[tuple[str, ...]]  # the Model methods it serves, e.g. ("classify",)
    input_kind: ClassVar[str]  # "text" | "image": what ``edgekit run/bench`` passes it
    default_batch: ClassVar[int] = 32

    def __init__(self, model: Model) -> None:
        self.model = model
        self.spec: dict[str, Any] = dict(model.manifest.preprocess) if model.manifest else {}
        first = model.signature.inputs[0] if model.signature.inputs else None
        # an artifact with a fixed batch (an NPU reshape) takes exactly that many rows per call
        self.fixed_batch = first.shape[0] if first is not None and first.rank and \
            isinstance(first.shape[0], int) and first.shape[0] > 0 else None

    # -- the three stages ------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, inputs: Any, *, batch_size: int | None = None) -> Prepared:
        """Turn user inputs into model feeds, in batches."""

    def infer(self, prepared: Prepared) -> list[dict[str, np.ndarray]]:
        """Run every batch through the model."""
        return [self.model.run(feed) for feed in prepared.feeds]

    @abstractmethod
    def postprocess(self, prepared: Prepared, outputs: list[dict[str, np.ndarray]], **options: Any) -> Any:
        """Turn model outputs into the task's answer."""

    def __call__(self, inputs: Any, *, batch_size: int | None = None, **options: Any) -> Any:
        prepared = self.preprocess(inputs, batch_size=batch_size)
        return self.postprocess(prepared, self.infer(prepared), **options)

    # -- helpers for pipelines -------------------------------------------------------------
    def batch_size(self, asked: int | None) -> int:
        if asked is not None and asked < 1:
            raise ConfigError(f"batch_size must be at least 1, got {asked}", fix="pass batch_size=1 or more")
        return self.fixed_batch or asked or self.default_batch

    def chunks(self, items: Sequence[Any], asked: int | None) -> Iterator[Sequence[Any]]:
        size = self.batch_size(asked)
        for start in range(0, len(items), size):
            yield items[start:start + size]

    def fill(self, feed: Feed, rows: int) -> Feed:
        """Pad a short last batch with copies of its last row for a fixed-batch artifact."""
        if self.fixed_batch is None or rows >= self.fixed_batch:
            return feed
        extra = self.fixed_batch - rows
        return {k: np.concatenate([v, np.repeat(v[-1:], extra, axis=0)]) for k, v in feed.items()}

    def asset(self, key: str, what: str, fix: str) -> Path:
        """A file named by ``preprocess[key]`` inside the artifact's assets directory."""
        name, folder = self.spec.get(key), self.spec.get("assets_dir")
        if not name:
            raise ArtifactError(f"{self.model.path.name} records no {what} (manifest preprocess.{key})", fix=fix)
        path = self.model.path.parent / (folder or "") / name
        if not path.is_file():
            raise ArtifactError(f"{self.model.path.name} needs its {what} {path}, which is missing",
                                fix=f"copy the {folder or 'assets'} folder next to the model file")
        return path

    def output(self, preferred: str) -> str:
        """The output named ``preferred``, else the model's first output."""
        names = self.model.signature.output_names
        return preferred if preferred in names else names[0]


def rows_of(outputs: list[dict[str, np.ndarray]], name: str, prepared: Prepared) -> np.ndarray:
    """One output over every batch, the padding rows of fixed batches dropped."""
    parts = [out[name][:rows] for out, rows in zip(outputs, prepared.rows)]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


ACTIVATIONS = ("softmax", "sigmoid")


def rank(logits: np.ndarray, id2label: Mapping[str, str], top_k: int,
         activation: str = "softmax") -> list[dict[str, Any]]:
    """Per row of ``logits``: the best label, its score and index, and the ``top_k`` best."""
    if not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k!r}", fix="pass e.g. top_k=3")
    x = np.asarray(logits, dtype=np.float64).reshape(len(logits), -1)
    if activation == "sigmoid":  # multi-label: each class scored on its own
        scores = 1.0 / (1.0 + np.exp(-x))
    else:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        scores = e / e.sum(axis=1, keepdims=True)
    k = min(top_k, x.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    results = []
    for row, idx in zip(scores, order):
        top = [{"label": str(id2label.get(str(i), str(i))), "score": float(row[i]), "index": int(i)} for i in idx]
        results.append({**top[0], "top": top})
    return results


def as_items(inputs: Any, single: tuple[type, ...]) -> list[Any]:
    """``inputs`` as a list: one item of a ``single`` type (a string, an image) becomes a list of one."""
    if isinstance(inputs, single) or not hasattr(inputs, "__iter__"):
        return [inputs]
    return list(inputs)


class Classifier(Pipeline):
    """Logits -> labels and scores (``id2label`` and the activation from the manifest); the text
    and image classifiers differ only in their preprocessing."""

    verbs = ("classify",)

    def _labels(self) -> None:
        self.logits = self.output("logits")
        self.id2label: dict[str, str] = {str(k): str(v) for k, v in (self.spec.get("id2label") or {}).items()}
        activation = self.spec.get("activation", "softmax")
        self.activation = activation if activation in ACTIVATIONS else "softmax"

    def postprocess(self, prepared: Prepared, outputs: list[dict[str, np.ndarray]], *, top_k: int = 1,
                    **options: Any) -> list[dict[str, Any]]:
        if not prepared.feeds:
            return []
        return rank(rows_of(outputs, self.logits, prepared), self.id2label, top_k, self.activation)
