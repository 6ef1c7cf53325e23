"""One loaded model behind the server: its batcher, its thread and the operations routes call.

Everything model-specific is the runtime's: inputs are checked by the model's own
:class:`~edgekit.inputs.InputChecker`, text and images go through the artifact's task pipeline
(:mod:`edgekit.tasks`: tokenizer, padding, pooling, labels), generation through the GGUF
backend's ``generate``/``chat``. This module only groups requests and times the stages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.serve.batching import Batcher, ModelThread
from edgekit.serve.buckets import regroup, restore

if TYPE_CHECKING:
    from edgekit.runtime import Model
    from edgekit.serve.config import ServeConfig
    from edgekit.serve.metrics import Metrics
    from edgekit.serve.registry import Entry

Timing = dict[str, float]


def _ms(t0: float, t1: float) -> float:
    return (t1 - t0) * 1000.0


def _dynamic(dim: Any) -> bool:
    return not isinstance(dim, int) or dim <= 0


class ServedModel:
    """A model, the task pipeline of its artifact (if any) and the queue in front of it."""

    def __init__(self, entry: Entry, model: Model, config: ServeConfig, metrics: Metrics) -> None:
        from edgekit.inputs import InputChecker
        from edgekit.runtime import Model
        from edgekit.tasks import PIPELINES, pipeline_for, task_of

        self.name, self.entry, self.model = entry.name, entry, model
        self.task = task_of(model)
        self.pipeline = pipeline_for(model) if self.task in PIPELINES else None
        # a runtime that implements generate() (llama.cpp), with or without a manifest
        self.generates = type(model).generate is not Model.generate
        self.check = InputChecker(model.signature)
        sig = model.signature
        # merging requests along axis 0 needs a dynamic batch axis on every input and output
        self.batchable = bool(sig.inputs) and all(s.rank and _dynamic(s.shape[0]) for s in (*sig.inputs, *sig.outputs))
        self._thread = ModelThread(f"edgekit-{self.name}")
        self._metrics = metrics
        self.batcher = Batcher(self.name, self._run_batch, self._thread, max_batch=config.max_batch,
                               timeout_s=config.batch_timeout_ms / 1000.0, queue_size=config.queue_size,
                               on_batch=self._observe_batch, wait_when_idle=config.batch_wait_idle)
        self.timeout_s = config.request_timeout_s
        # text batches may be cut into length runs only where the sequence axis is dynamic
        self.regroup = config.batch_regroup and self.pipeline is not None and self.input_kind == "text" \
            and self.pipeline.fixed_batch is None and all(s.rank == 2 and _dynamic(s.shape[1]) for s in sig.inputs)

    # -- what routes call ----------------------------------------------------------------------
    async def infer(self, feed: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Timing]:
        """Run checked tensors (merged with others of the same shape when the model allows)."""
        checked = self.check(feed)
        rows = next(iter(checked.values())).shape[0] if checked and self.batchable else 1
        key: Hashable = ("tensor", tuple((k, v.dtype.str, v.shape[1:]) for k, v in checked.items())) \
            if self.batchable and rows > 0 else None
        return await self.batcher.submit(("tensor", checked, None), rows=max(rows, 1), key=key,
                                         timeout_s=self.timeout_s)

    async def classify(self, items: list[Any], top_k: int = 1) -> tuple[list[dict[str, Any]], Timing]:
        """Labels for texts or images through the artifact's pipeline (``Model.classify``'s)."""
        from edgekit.tasks import check_verb

        check_verb(self.model, "classify", self.task)
        return await self.batcher.submit(("classify", items, top_k), rows=max(len(items), 1),
                                         key=("classify", top_k), timeout_s=self.timeout_s)

    async def embed(self, texts: list[str]) -> tuple[np.ndarray, Timing]:
        """Sentence vectors through the artifact's pipeline (``Model.embed``'s)."""
        from edgekit.tasks import check_verb

        check_verb(self.model, "embed", self.task)
        return await self.batcher.submit(("embed", texts, None), rows=max(len(texts), 1), key=("embed",),
                                         timeout_s=self.timeout_s)

    async def call(self, work: Callable[[], Any], timeout_s: float | None = None) -> tuple[Any, Timing]:
        """Run ``work`` in the model's thread, alone, after the requests queued before it
        (generation: it streams through its own channel)."""
        return await self.batcher.submit(("call", work, None), key=None, timeout_s=timeout_s)

    @property
    def input_kind(self) -> str | None:
        return self.pipeline.input_kind if self.pipeline is not None else None

    def start(self) -> None:
        self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self._thread.shutdown()
        self.model.close()

    # -- in the model's thread -------------------------------------------------------------------
    def _run_batch(self, payloads: list[tuple[str, Any, Any]]) -> list[tuple[Any, Timing]]:
        op = payloads[0][0]
        return _OPS[op](self, payloads)

    def _tensors(self, payloads: list[tuple[str, Any, Any]]) -> list[tuple[Any, Timing]]:
        feeds = [p[1] for p in payloads]
        t0 = time.perf_counter()
        if len(feeds) == 1:
            out = self.model.run(feeds[0])
            return [(out, {"inference_ms": _ms(t0, time.perf_counter())})]
        counts = [next(iter(f.values())).shape[0] for f in feeds]
        merged = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        t1 = time.perf_counter()
        out = self.model.run(merged)
        t2 = time.perf_counter()
        total, cuts = sum(counts), np.cumsum(counts)[:-1]
        if any(v.shape[:1] != (total,) for v in out.values()):
            raise ValueError("an output lost the batch axis")  # the batcher re-runs each request alone
        parts = {k: np.split(v, cuts) for k, v in out.items()}
        t3 = time.perf_counter()
        timing = {"preprocess_ms": _ms(t0, t1), "inference_ms": _ms(t1, t2), "postprocess_ms": _ms(t2, t3)}
        return [({k: parts[k][i] for k in out}, timing) for i in range(len(feeds))]

    def _task(self, payloads: list[tuple[str, Any, Any]]) -> list[tuple[Any, Timing]]:
        """Every request's items through the pipeline as one batch (padded as the pipeline pads;
        a text batch in runs of similar length, buckets.py), the answers split back by request."""
        p = self.pipeline
        items = [x for _, batch, _ in payloads for x in batch]
        options = {"top_k": payloads[0][2]} if payloads[0][0] == "classify" else {}
        t0 = time.perf_counter()
        prepared = p.preprocess(items, batch_size=max(len(items), 1))
        runs = regroup(prepared) if self.regroup else None  # rows by length, each run padded to its own longest
        if runs is not None:
            prepared, order = runs
        t1 = time.perf_counter()
        outputs = p.infer(prepared)
        t2 = time.perf_counter()
        answers = p.postprocess(prepared, outputs, **options)
        t3 = time.perf_counter()
        timing = {"preprocess_ms": _ms(t0, t1), "inference_ms": _ms(t1, t2), "postprocess_ms": _ms(t2, t3),
                  "calls": float(len(prepared.feeds))}
        tokens = _token_counts(prepared)
        if runs is not None:
            answers, tokens = restore(answers, order), restore(tokens, order)
        out, start = [], 0
        for _, batch, _ in payloads:
            n = len(batch)
            out.append((answers[start:start + n], {**timing, "tokens": float(sum(tokens[start:start + n]))}))
            start += n
        return out

    def _call(self, payloads: list[tuple[str, Any, Any]]) -> list[tuple[Any, Timing]]:
        t0 = time.perf_counter()
        result = payloads[0][1]()
        return [(result, {"inference_ms": _ms(t0, time.perf_counter())})]

    def _observe_batch(self, requests: int, depth: int) -> None:
        self._metrics.child(self._metrics.batch, self.name).observe(requests)

    def describe(self) -> dict[str, Any]:
        m = self.model.manifest
        return {"name": self.name, "artifact": self.model.path.name, "format": self.model.format.value,
                "precision": m.precision.value if m else None, "task": self.task,
                "sha256_verified": self.entry.verified, "dynamic_batching": self.batchable or self.pipeline is not None,
                **self.model.describe()}


def _token_counts(prepared: Any) -> list[int]:
    """Real (unpadded) tokens of each row of a text pipeline's batches; zeros for images."""
    counts: list[int] = []
    for feed, rows in zip(prepared.feeds, prepared.rows):
        mask = feed.get("attention_mask")
        counts += [int(x) for x in mask[:rows].sum(axis=1)] if mask is not None else [0] * rows
    return counts


_OPS: dict[str, Callable[[ServedModel, list[tuple[str, Any, Any]]], list[tuple[Any, Timing]]]] = {
    "tensor": ServedModel._tensors, "classify": ServedModel._task, "embed": ServedModel._task,
    "call": ServedModel._call,
}


def load_served(entry: Entry, config: ServeConfig, metrics: Metrics) -> ServedModel:
    """Load ``entry`` with :func:`edgekit.load` (which probes crash-prone runtimes in a child process
    first) and wrap it; the model is closed again if its pipeline cannot be built."""
    from edgekit.runtime import load, runtime_for

    runtime = runtime_for(entry.ref.format).name
    options = dict(getattr(runtime_for(entry.ref.format), "serve_options", {}))  # e.g. llama.cpp: 4 sequences at once
    for key, value in config.load_options.items():  # "n_ctx": every model; "llamacpp.n_ctx": one runtime's
        scope, dot, name = key.partition(".")
        if not dot:
            options[key] = value
        elif scope == runtime:
            options[name] = value
    model = load(entry.ref.path, device=config.device, threads=config.threads, **options)
    try:
        return ServedModel(entry, model, config, metrics)
    except Exception:
        model.close()
        raise
