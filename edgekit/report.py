"""Typed results as tables: :class:`Sheet` rows of plain text for convert, bench and matrix (the CLI
renders them for a terminal, a pipe, Markdown or CSV), rich tables for inspect. The library never prints."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
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


def num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


STATUS_STYLE = {"ok": "green", "failed": "red", "diverged": "red", "crashed": "red", "timeout": "yellow",
                "degraded": "yellow", "regressed": "red", "missing": "red", "new": "yellow"}


@dataclass(frozen=True)
class Column:
    """One column of a :class:`Sheet`; ``drop`` 0 is always shown, 1 and 2 give way (2 first) in a
    narrow terminal."""

    name: str
    justify: str = "right"
    drop: int = 0


@dataclass
class Sheet:
    """A table as plain text cells, rendered by the CLI as a terminal table, plain text, Markdown
    or CSV. The first column is the row's name (an artifact, a variant) and is never shortened."""

    title: str
    columns: list[Column]
    rows: list[list[str]] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)  # row index -> why it failed
    notes: list[str] = field(default_factory=list)  # lines under the table

    def add(self, *cells: str, reason: str | None = None) -> None:
        if reason:
            self.reasons[len(self.rows)] = reason
        self.rows.append([str(c) for c in cells])


def columns(spec: str) -> list[Column]:
    """``"artifact<0 status<0 size>2"``-style specs: name, ``<`` left or ``>`` right, drop level;
    ``_`` stands for a space in a name."""
    out = []
    for word in spec.split():
        for mark, justify in (("<", "left"), (">", "right")):
            if mark in word:
                name, level = word.rsplit(mark, 1)
                out.append(Column(name.replace("_", " "), justify, int(level)))
    return out


SECONDS_NOTE = "total s = this variant's share of the export + quantization + verification"


def artifacts_table(artifacts: Iterable[Artifact]) -> Sheet:
    from edgekit.optimize.bits import flag

    arts = list(artifacts)
    fp32 = {a.format: a.size_bytes for a in arts if a.precision.value == "fp32" and a.size_bytes}
    t = Sheet("edgekit convert", columns("artifact<0 status<0 size>0 x_fp32>2 max_abs_err>1 cosine_(worst)>1 "
                                        "top-1>2 metric_(delta)>0 total_s>1"), notes=[SECONDS_NOTE])
    for a in arts:
        v = a.verification
        worst = v.worst() if v else None
        base = fp32.get(a.format)
        metric = v.metric if v else None
        t.add(a.path.name, a.status, human_bytes(a.size_bytes or None),
              num(a.size_bytes / base, "{:.2f}x") if base and a.size_bytes else "-",
              num(max((o.max_abs_err for o in v.outputs), default=None), "{:.2e}") if v else "-",
              num(worst.min_cosine, "{:.6f}") if worst else "-",
              num(worst.top1_agreement, "{:.1%}") if worst and worst.top1_agreement is not None else "-",
              f"{metric['value']:.4f} ({metric['delta']:+.4f})" if metric else "-",
              num(a.seconds, "{:.1f}"), reason=a.reason if a.status != "ok" else
              flag(a.precision.value, a.quantized_fraction))  # "int4: 3% of weights 4-bit"
    return t


def bench_table(results: Iterable[BenchResult]) -> Sheet:
    t = Sheet("edgekit bench", columns("artifact<0 status<0 runtime/device<1 size>2 load_ms>2 first_ms>2 "
                                      "p50_ms>0 p90_ms>1 p99_ms>2 mean±std_ms>2 items/s>1 peak_RSS_MB>1 runs>2"))
    for r in results:
        lat = r.latency
        t.add(r.artifact.rsplit("/", 1)[-1], r.status, f"{r.runtime or '-'}/{r.device or '-'}",
              human_bytes(r.size_bytes), num(r.load_ms, "{:.1f}"), num(r.first_ms),
              num(lat.p50_ms if lat else None), num(lat.p90_ms if lat else None), num(lat.p99_ms if lat else None),
              f"{lat.mean_ms:.3f}±{lat.std_ms:.3f}" if lat else "-", num(r.throughput, "{:.1f}"),
              num(r.peak_rss_mb, "{:.0f}"), str(lat.runs) if lat else "-",
              reason=r.reason if r.status != "ok" else None)
    return t


def runtimes_table(rows: Iterable[dict[str, Any]], skip_device: str = "auto") -> Sheet:
    """``edgekit devices``: each runtime, its version, formats and devices, or how to install it."""
    t = Sheet("runtimes and devices on this machine", columns("runtime<0 version<0 formats<1 devices_(backends)<0"))
    for r in rows:
        devs = "; ".join(f"{d} ({', '.join(n)})" for d, n in r["devices"].items() if d != skip_device)
        t.add(r["runtime"], r["version"] or "not installed", ", ".join(r["formats"]), devs or r["install"] or "-")
    return t


def signature_table(sig: Signature, title: str = "signature") -> Table:
    t = Table(title=title, title_justify="left")
    for col in ("", "name", "dtype", "shape", "example shape"):
        t.add_column(col)
    for kind, specs in (("input", sig.inputs), ("output", sig.outputs)):
        for s in specs:
            t.add_row(kind, escape(s.name), escape(s.dtype), escape("[" + ", ".join(str(d) for d in s.shape) + "]"),
                      escape(str(list(s.example_shape))) if s.example_shape else "-")
    return t


def manifest_table(m: Manifest) -> Table:
    t = Table(title=escape(m.artifact), title_justify="left", show_header=False)
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
                         f"(worst {o.min_cosine:.6f}){top1}"
                         f"{f', {o.non_finite} NaN/inf values' if o.non_finite else ''}"))
        if v.metric:
            rows.append((f"  {v.metric['name']}", f"{v.metric['value']:.4f} vs original "
                         f"{v.metric['reference']:.4f} ({v.metric['delta']:+.4f}) on {v.metric['samples']}"))
    if m.preprocess:
        rows.append(("preprocess", ", ".join(f"{k}" for k in m.preprocess)))
    for k, val in rows:
        t.add_row(k, escape(str(val)))
    return t


def matrix_table(result: MatrixResult) -> Sheet:
    """The format x precision matrix: one row per variant, the PyTorch eager baseline first."""
    from edgekit.matrix import EAGER

    t = Sheet(f"edgekit matrix: {result.source.get('name')}  ({result.path})",
              columns("variant<0 status<0 size>1 metric_(delta)>0 cosine>2 p50_ms>0 p90_ms>2 items/s>1 "
                    "peak_RSS_MB>2 x_eager>0"))
    for r in result.rows:
        metric = f"{r.metric:.4f} ({r.metric_delta:+.4f})" if r.metric is not None and \
            r.metric_delta is not None else num(r.metric, "{:.4f}")
        t.add(r.label + (" (reused)" if r.reused else ""), r.status, human_bytes(r.size_bytes), metric,
              num(r.cosine, "{:.6f}") if r.format != EAGER else "ref", num(r.p50_ms), num(r.p90_ms),
              num(r.throughput, "{:.1f}"), num(r.peak_rss_mb, "{:.0f}"), num(r.speedup_vs_eager, "{:.2f}x") + (" noisy" if r.noisy else ""),
              reason=r.reason if r.status != "ok" else None)
    t.notes = [f"skipped {s.format}{'/' + s.precision if s.precision else ''}: {s.reason}"
               for s in result.skipped]
    if any(r.noisy for r in result.rows):
        t.notes.append("noisy = PyTorch eager p50 varied more than 2x between the row's interleaved timings "
                       "(a load burst): its x eager is the median of the pairs; re-run on a quiet machine")
    t.notes.append(f"x eager = median over interleaved pairs of PyTorch eager p50 / row p50 (same inputs, same run); converted "
                   f"{result.converted}, timed {result.benchmarked}, reused {result.reused}")
    return t
