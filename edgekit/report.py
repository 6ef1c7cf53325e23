"""Rendering typed results as rich tables (the CLI's job; the library never prints)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from edgekit.conversion import Artifact
    from edgekit.harness import BenchResult
    from edgekit.manifest import Manifest
    from edgekit.matrix import MatrixResult
    from edgekit.types import Signature


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _f(value: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


STATUS_STYLE = {"ok": "green", "failed": "red", "diverged": "red", "crashed": "red", "timeout": "yellow"}


def _status(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def artifacts_table(artifacts: Iterable[Artifact]) -> Table:
    arts = list(artifacts)
    fp32 = {a.format: a.size_bytes for a in arts if a.precision.value == "fp32" and a.size_bytes}
    t = Table(title="edgekit convert", title_justify="left")
    for col in ("artifact", "status", "size", "x fp32", "max abs err", "cosine (worst)", "top-1",
                "metric (delta)", "seconds"):
        t.add_column(col, justify="left" if col in ("artifact", "status") else "right")
    for a in arts:
        v = a.verification
        worst = v.worst() if v else None
        base = fp32.get(a.format)
        metric = v.metric if v else None
        t.add_row(
            a.path.name if a.status != "failed" else f"{a.path.name}\n[red]{escape(a.reason or '')}[/]",
            _status(a.status), human_bytes(a.size_bytes or None),
            _f(a.size_bytes / base, "{:.2f}x") if base and a.size_bytes else "-",
            _f(max((o.max_abs_err for o in v.outputs), default=None), "{:.2e}") if v else "-",
            _f(worst.min_cosine, "{:.6f}") if worst else "-",
            _f(worst.top1_agreement, "{:.1%}") if worst and worst.top1_agreement is not None else "-",
            f"{metric['value']:.4f} ({metric['delta']:+.4f})" if metric else "-",
            _f(a.seconds, "{:.1f}"))
    return t


def bench_table(results: Iterable[BenchResult]) -> Table:
    t = Table(title="edgekit bench", title_justify="left")
    cols = ("artifact", "status", "runtime/device", "size", "load ms", "first ms", "p50 ms", "p90 ms",
            "p99 ms", "mean±std ms", "items/s", "peak RSS MB", "runs")
    for col in cols:
        t.add_column(col, justify="left" if col in ("artifact", "status", "runtime/device") else "right")
    for r in results:
        lat = r.latency
        name = r.artifact.rsplit("/", 1)[-1]
        t.add_row(
            name if r.status == "ok" else f"{name}\n[red]{escape(r.reason or '')}[/]", _status(r.status),
            f"{r.runtime or '-'}/{r.device or '-'}", human_bytes(r.size_bytes), _f(r.load_ms, "{:.1f}"),
            _f(r.first_ms), _f(lat.p50_ms if lat else None), _f(lat.p90_ms if lat else None),
            _f(lat.p99_ms if lat else None),
            f"{lat.mean_ms:.3f}±{lat.std_ms:.3f}" if lat else "-", _f(r.throughput, "{:.1f}"),
            _f(r.peak_rss_mb, "{:.0f}"), str(lat.runs) if lat else "-")
    return t


def signature_table(sig: Signature, title: str = "signature") -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("", "name", "dtype", "shape", "example shape"):
        t.add_column(col)
    for kind, specs in (("input", sig.inputs), ("output", sig.outputs)):
        for s in specs:
            t.add_row(kind, escape(s.name), s.dtype, escape("[" + ", ".join(str(d) for d in s.shape) + "]"),
                      escape(str(list(s.example_shape))) if s.example_shape else "-")
    return t


def manifest_table(m: Manifest) -> Table:
    t = Table(title=f"{m.artifact}", title_justify="left", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    rows: list[tuple[str, Any]] = [
        ("format / precision", f"{m.format.value} / {m.precision.value}"),
        ("task", m.task or "-"),
        ("size", human_bytes(m.size_bytes)),
        ("route", m.conversion.get("route", "-")),
        ("source", f"{m.source.get('kind')}: {m.source.get('location') or m.source.get('name')}"),
        ("weights sha256", ", ".join(w["sha256"][:16] for w in m.source.get("weights", [])) or "-"),
        ("created", m.created),
        ("versions", ", ".join(f"{k} {v}" for k, v in m.versions.items() if v and k != "platform")),
    ]
    if m.verification:
        v = m.verification
        rows.append(("verification", f"{'passed' if v.passed else 'FAILED'} on {v.samples} samples"
                     f"{' (gated)' if v.gated else ' (reported)'}"))
        for o in v.outputs:
            top1 = f", top-1 {o.top1_agreement:.1%}" if o.top1_agreement is not None else ""
            rows.append((f"  {o.name}", f"max abs {o.max_abs_err:.2e}, cosine {o.cosine:.6f} "
                         f"(worst {o.min_cosine:.6f}){top1}"))
        if v.metric:
            rows.append((f"  {v.metric['name']}", f"{v.metric['value']:.4f} vs original "
                         f"{v.metric['reference']:.4f} ({v.metric['delta']:+.4f}) on {v.metric['samples']}"))
    if m.preprocess:
        rows.append(("preprocess", ", ".join(f"{k}" for k in m.preprocess)))
    for k, val in rows:
        t.add_row(k, escape(str(val)))
    return t


def matrix_table(result: MatrixResult) -> Table:
    """The format x precision matrix: one row per variant, the PyTorch eager baseline first."""
    from edgekit.matrix import EAGER

    rows = result.rows
    t = Table(title=f"edgekit matrix: {result.source.get('name')}  ({result.path})", title_justify="left")
    for col in ("variant", "status", "size", "metric (delta)", "cosine", "p50 ms", "p90 ms", "items/s",
                "peak RSS MB", "x eager"):
        t.add_column(col, justify="left" if col in ("variant", "status") else "right")
    for r in rows:
        name = r.label + (" [dim](reused)[/]" if r.reused else "")
        metric = f"{r.metric:.4f} ({r.metric_delta:+.4f})" if r.metric is not None and \
            r.metric_delta is not None else _f(r.metric, "{:.4f}")
        t.add_row(name if r.status == "ok" else f"{name}\n[red]{escape(r.reason or '')}[/]", _status(r.status),
                  human_bytes(r.size_bytes), metric, _f(r.cosine, "{:.6f}") if r.format != EAGER else "ref",
                  _f(r.p50_ms), _f(r.p90_ms), _f(r.throughput, "{:.1f}"), _f(r.peak_rss_mb, "{:.0f}"),
                  _f(r.speedup_vs_eager, "{:.2f}x"))
    notes = [f"skipped {s.format}{'/' + s.precision if s.precision else ''}: {escape(s.reason)}"
             for s in result.skipped]
    notes.append(f"x eager = PyTorch eager p50 / row p50 (same inputs, same run); converted "
                 f"{result.converted}, timed {result.benchmarked}, reused {result.reused}")
    t.caption, t.caption_justify = "\n".join(notes), "left"
    return t
