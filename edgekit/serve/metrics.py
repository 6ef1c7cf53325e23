"""Prometheus metrics of one server, in a registry of its own (``GET /metrics``).

Per model: requests by endpoint and status, latency split into queue, preprocess, inference and
postprocess, end-to-end latency, batch sizes, queue depth, and for LLMs prompt and generated
tokens and generation speed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

STAGES = ("queue", "preprocess", "inference", "postprocess")
_STAGE_KEYS = tuple((stage, f"{stage}_ms") for stage in STAGES)
LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SPEED_BUCKETS = (1, 5, 10, 25, 50, 100, 200, 400, 800, 1600)


class Metrics:
    """The server's counters, histograms and gauges (``prometheus-client``)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("edgekit_requests", "Requests answered, by model, endpoint and HTTP status",
                                ["model", "endpoint", "status"], registry=r)
        self.latency = Histogram("edgekit_request_seconds", "End-to-end latency of successful requests",
                                 ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("edgekit_stage_seconds", "Latency by stage: queue, preprocess, inference, "
                               "postprocess", ["model", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("edgekit_batch_size", "Requests run together in one model call", ["model"],
                               buckets=BATCH_BUCKETS, registry=r)
        self.queue = Gauge("edgekit_queue_depth", "Requests waiting for the model", ["model"], registry=r)
        self.ready = Gauge("edgekit_model_ready", "1 when the model is loaded and serving", ["model"], registry=r)
        self.prompt_tokens = Counter("edgekit_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generated_tokens = Counter("edgekit_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.tokens_per_s = Histogram("edgekit_generation_tokens_per_second", "Generation speed per request",
                                      ["model"], buckets=SPEED_BUCKETS, registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per label set (it is on every request's path)."""
        key = (metric, *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_stages(self, model: str, timing: Mapping[str, float]) -> None:
        """Record a request's stage times (``{"queue_ms": ..., "inference_ms": ...}``)."""
        for stage, key in _STAGE_KEYS:
            ms = timing.get(key)
            if ms is not None:
                self.child(self.stage, model, stage).observe(ms / 1000.0)

    def observe_tokens(self, model: str, prompt: int, generated: int, seconds: float) -> None:
        self.prompt_tokens.labels(model).inc(prompt)
        self.generated_tokens.labels(model).inc(generated)
        if generated and seconds > 0:
            self.tokens_per_s.labels(model).observe(generated / seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
