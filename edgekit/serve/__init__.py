"""``edgekit serve``: serve artifacts over HTTP with the protocols clients already speak.

- Open Inference Protocol (KServe v2) REST: ``/v2/health/*``, ``/v2/models/{name}[/ready|/infer]``,
  typed tensors in JSON or the binary extension, BYTES text/image inputs for task models;
- OpenAI-compatible ``/v1/models``, ``/v1/embeddings``, ``/v1/completions``, ``/v1/chat/completions``
  (GGUF, streaming);
- Prometheus ``/metrics``.

A thin layer over :class:`edgekit.runtime.Model` and :mod:`edgekit.tasks`: batching, admission and
metrics live here; loading, input checks, pre- and postprocessing are the runtime's. Needs
``pip install 'edgekit[serve]'`` (Starlette, uvicorn, prometheus-client; no torch).

>>> from edgekit.serve import Server, ServeConfig, find_artifacts
>>> Server(find_artifacts(["out/"]), ServeConfig(port=8080, max_batch=8)).run()  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekit.serve.config import ServeConfig

if TYPE_CHECKING:
    from edgekit.serve.app import create_app
    from edgekit.serve.registry import find_artifacts
    from edgekit.serve.server import Server

_LAZY = {"create_app": "edgekit.serve.app", "find_artifacts": "edgekit.serve.registry",
         "Server": "edgekit.serve.server"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit.serve' has no attribute {name!r}")


__all__ = ["ServeConfig", "Server", "create_app", "find_artifacts"]
