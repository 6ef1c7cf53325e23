"""``edgekit serve``: serve artifacts over HTTP (Open Inference Protocol, OpenAI-compatible, /metrics)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from edgekit.cli._common import err, errors, parse_kv


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on; another than loopback exposes the models to the network.")
@click.option("--port", default=8000, show_default=True, help="Port; 0 picks a free one.")
@click.option("--max-batch", default=8, show_default=True, help="Most rows run together in one model call.")
@click.option("--batch-timeout-ms", default=5.0, show_default=True,
              help="How long a request waits for others to batch with.")
@click.option("--batch-wait-idle/--no-batch-wait-idle", default=True, show_default=True,
              help="Whether a batchable request waits --batch-timeout-ms for company when the model is idle; "
              "--no-batch-wait-idle runs it at once and batches what arrives meanwhile (lower latency at low load).")
@click.option("--batch-regroup/--no-batch-regroup", default=True, show_default=True,
              help="Whether a gathered text batch is split into runs of similar length (less padding).")
@click.option("--queue-size", default=64, show_default=True,
              help="Requests waiting per model; more are answered 503 with Retry-After.")
@click.option("--request-timeout", "request_timeout_s", default=60.0, show_default=True,
              help="Seconds a request may wait and run before it is answered 504.")
@click.option("--max-body-mb", default=16.0, show_default=True, help="Largest request body, in MB.")
@click.option("--api-key", default=None, envvar="EDGEKIT_API_KEY", show_envvar=True,
              help="Require this key (Authorization: Bearer KEY or X-API-Key) on every route but health.")
@click.option("--cors", "cors", multiple=True, help="Allow browser pages of this origin (repeatable); off by default.")
@click.option("--device", default="cpu", show_default=True, help="cpu, gpu, npu or auto.")
@click.option("--threads", type=int, default=None, help="Inference threads per model (the runtime's default).")
@click.option("-O", "load_opts", multiple=True,
              help="Load option KEY=VALUE for every model, or RUNTIME.KEY=VALUE for one (-O llamacpp.n_ctx=2048).")
@click.option("--allow-unverified", is_flag=True,
              help="Also serve model files that have no manifest (their sha256 cannot be checked).")
def serve(paths: tuple[Path, ...], host: str, port: int, max_batch: int, batch_timeout_ms: float,
          batch_wait_idle: bool, batch_regroup: bool, queue_size: int, request_timeout_s: float, max_body_mb: float, api_key: str | None,
          cors: tuple[str, ...], device: str, threads: int | None, load_opts: tuple[str, ...],
          allow_unverified: bool) -> None:
    """Serve every artifact in PATHS (model files or folders of them) over HTTP.

    \b
    edgekit serve out/                                # every artifact in the folder
    edgekit serve out/m-int8.onnx out/lm-q4_k_m.gguf --port 8080 --max-batch 8
    Open Inference Protocol: /v2/models/NAME/infer    OpenAI: /v1/chat/completions, /v1/embeddings
    Prometheus: /metrics                              SIGTERM drains requests in flight, then exits.
    """
    from edgekit.serve import ServeConfig
    from edgekit.serve.registry import find_artifacts
    from edgekit.serve.server import Server

    with errors():
        config = ServeConfig(host=host, port=port, max_batch=max_batch, batch_timeout_ms=batch_timeout_ms,
                             batch_wait_idle=batch_wait_idle, batch_regroup=batch_regroup, queue_size=queue_size, request_timeout_s=request_timeout_s,
                             max_body_bytes=int(max_body_mb * 1024 * 1024), api_key=api_key or None,
                             cors_origins=cors, device=device, threads=threads,
                             load_options=dict(parse_kv(load_opts, "-O")))
        entries = find_artifacts(paths, allow_unverified=allow_unverified)
        for e in entries:
            if not e.verified:
                err.print(f"[yellow]warning:[/] {escape(e.ref.path.name)} has no manifest: served without a sha256 check")
        server = Server(entries, config, on_ready=lambda state: _ready(server, state))
        server.bind()
        if host not in ("127.0.0.1", "localhost", "::1"):
            err.print(f"[yellow]warning:[/] listening on {host}: other machines can reach the models"
                      + ("" if api_key else "; no --api-key is set"))
        err.print(f"edgekit serve: loading {len(entries)} model(s), listening at {server.url}", highlight=False)
        server.run()


def _ready(server: object, state: object) -> None:
    names = ", ".join(state.models)  # type: ignore[attr-defined]
    click.echo(f"edgekit serve: ready at {server.url} ({names})", err=True)  # type: ignore[attr-defined]
