"""The server's settings: one frozen dataclass, checked on creation (``edgekit serve`` builds it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import ConfigError

API_KEY_ENV = "EDGEKIT_API_KEY"  # read when --api-key is not given


@dataclass(frozen=True)
class ServeConfig:
    """How ``edgekit serve`` listens, batches and admits requests.

    >>> ServeConfig(port=8080, max_batch=8, batch_timeout_ms=5)  # doctest: +SKIP
    """

    host: str = "127.0.0.1"  # loopback unless the user names another interface
    port: int = 8000
    max_batch: int = 8  # rows gathered into one run (tensor models with a dynamic batch axis, text tasks)
    batch_timeout_ms: float = 5.0  # how long the first request of a batch waits for company
    # True: a batchable first request waits up to batch_timeout_ms for company even on an idle
    # model (as Triton's dynamic batcher does); False: an idle model takes it at once and batches
    # form from what queues while it runs (lower latency at low load; docs/serving.md)
    batch_wait_idle: bool = True
    # True: a gathered text batch runs as length runs padded to their own longest row (buckets.py)
    batch_regroup: bool = True
    queue_size: int = 64  # requests waiting per model; one more is answered 503 + Retry-After
    request_timeout_s: float = 60.0  # a request waiting or running longer is answered 504
    max_body_bytes: int = 16 * 1024 * 1024
    api_key: str | None = None  # checked in constant time; None: no key needed
    cors_origins: tuple[str, ...] = ()  # CORS off unless origins are named
    device: str = "cpu"
    threads: int | None = None
    max_tokens_limit: int = 4096  # the largest max_tokens an LLM request may ask for
    retry_after_s: int = 1
    drain_timeout_s: float = 30.0  # SIGTERM: how long requests in flight may take to finish
    load_options: dict[str, Any] = field(default_factory=dict)  # passed to edgekit.load
    name: str = "server"  # what the server calls itself in its answers ("kiosk" for the sample)

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port <= 65535, f"port must be from 0 to 65535, got {self.port}", "pass e.g. --port 8000"),
            (self.max_batch >= 1, f"max_batch must be at least 1, got {self.max_batch}", "pass --max-batch 1 or more"),
            (self.batch_timeout_ms >= 0, f"batch_timeout_ms must be 0 or more, got {self.batch_timeout_ms}",
             "pass e.g. --batch-timeout-ms 5"),
            (self.queue_size >= 1, f"queue_size must be at least 1, got {self.queue_size}", "pass --queue-size 1 or more"),
            (self.request_timeout_s > 0, f"request_timeout_s must be positive, got {self.request_timeout_s}",
             "pass e.g. --request-timeout 60"),
            (self.max_body_bytes >= 1024, f"max_body_bytes must be at least 1024, got {self.max_body_bytes}",
             "pass e.g. --max-body-mb 16"),
            (self.api_key is None or len(self.api_key) >= 8, "the API key is shorter than 8 characters",
             "use a long random key, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"),
            (self.threads is None or self.threads >= 1, f"threads must be at least 1, got {self.threads}",
             "pass --threads 1 or more"),
        ]
        for ok, problem, fix in checks:
            if not ok:
                raise ConfigError(problem, fix=fix)

    @classmethod
    def with_env_key(cls, **kwargs: Any) -> ServeConfig:
        """A config whose API key falls back to ``$EDGEKIT_API_KEY``."""
        if kwargs.get("api_key") is None and os.environ.get(API_KEY_ENV):
            kwargs["api_key"] = os.environ[API_KEY_ENV]
        return cls(**kwargs)
