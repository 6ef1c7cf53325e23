"""Compare two result files, ``edgekit bench`` (``edgekit.bench/1``) or ``edgekit matrix``
(``edgekit.matrix/1``) JSON, row by row: the CI gate behind ``edgekit compare``.

Rows are matched by the artifact's sha256 first (the same bytes measured twice, e.g. on two
machines), then by artifact name (a rebuilt model). A row regresses when its p50 latency grew,
or its task metric got worse (lower accuracy, higher perplexity), by more than the allowed share
of the old value, when it failed where it used to pass, or when it is missing from the new file.

>>> c = compare("main.json", "pr.json", max_regression=0.10)  # doctest: +SKIP
>>> c.regressed, [d.name for d in c.deltas if d.regressions]  # doctest: +SKIP
(True, ['digits-cnn-int8.onnx'])
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError

SCHEMA = "edgekit.compare/1"
BENCH, MATRIX, MATRIX_SET = "edgekit.bench/1", "edgekit.matrix/1", "edgekit.matrix-set/1"


@dataclass(frozen=True)
class Point:
    """One row of a result file, reduced to what is compared."""

    name: str  # the artifact's file name (a matrix row without an artifact: format/precision)
    sha256: str | None
    status: str
    p50_ms: float | None
    metric_name: str | None = None
    metric: float | None = None
    higher_is_better: bool = True
    reason: str | None = None


@dataclass
class Delta:
    """An old row and its new counterpart (either may be missing), the changes and what regressed."""

    name: str
    old: Point | None
    new: Point | None
    matched_by: str | None = None  # "sha256" | "name" | None (unmatched)
    latency_change: float | None = None  # new p50 / old p50 - 1: +0.20 is 20 % slower
    metric_change: float | None = None  # share of the old metric lost: +0.05 is 5 % worse
    regressions: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.regressions:
            return "missing" if self.new is None else "regressed"
        if self.old is None:
            return "new"
        return "failed" if self.new is not None and self.new.status != "ok" else "ok"  # failed before too

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "matched_by": self.matched_by, "verdict": self.verdict,
                "latency_change": self.latency_change, "metric_change": self.metric_change,
                "regressions": self.regressions,
                "old": self.old.__dict__ if self.old else None, "new": self.new.__dict__ if self.new else None}


@dataclass
class Comparison:
    """Every delta, the thresholds and both files' host blocks."""

    old_path: str
    new_path: str
    max_regression: float
    max_metric_drop: float
    deltas: list[Delta]
    old_host: dict[str, Any] | None = None
    new_host: dict[str, Any] | None = None

    @property
    def regressed(self) -> bool:
        return any(d.regressions for d in self.deltas)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "old": self.old_path, "new": self.new_path,
                "max_regression": self.max_regression, "max_metric_drop": self.max_metric_drop,
                "regressed": self.regressed, "deltas": [d.to_dict() for d in self.deltas],
                "hosts": {"old": self.old_host, "new": self.new_host}}


def parse_share(text: str, what: str = "--max-regression") -> float:
    """``"10%"`` or ``"10"`` -> 0.10; ``"0.5%"`` -> 0.005."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", str(text))
    if m is None:
        raise ConfigError(f"{what} {text!r} is not a percentage", fix=f"write e.g. {what} 10%")
    return float(m.group(1)) / 100


def read_points(path: str | Path) -> tuple[list[Point], dict[str, Any] | None]:
    """The rows of a bench or matrix JSON file, and its host block (None in older files)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read results file {p}: {e}",
                          fix="pass a file written by edgekit bench --save/--json or edgekit matrix") from None
    schema = data.get("schema") if isinstance(data, Mapping) else None
    if schema == BENCH:
        rows = [_bench_point(r) for r in data.get("results", [])]
    elif schema == MATRIX:
        rows = [_matrix_point(r) for r in data.get("rows", [])]
    elif schema == MATRIX_SET:  # edgekit matrix A B ...: one matrix per source
        matrices = data.get("matrices", [])
        rows = [_matrix_point(r, (m.get("source") or {}).get("name")) for m in matrices for r in m.get("rows", [])]
        data = {"host": next((m.get("host") for m in matrices if m.get("host")), None)}
    else:
        raise ConfigError(f"{p} is not an edgekit bench or matrix result (schema {schema!r})",
                          fix=f"pass JSON with schema {BENCH} (edgekit bench --save), {MATRIX} "
                          f"(edgekit matrix's matrix.json) or {MATRIX_SET} (edgekit matrix A B --save)")
    host = data.get("host")
    if host is None:  # bench rows measured on a device carry their own
        host = next((r.get("host") for r in data.get("results", []) if r.get("host")), None)
    return rows, host


def _bench_point(r: Mapping[str, Any]) -> Point:
    lat = r.get("latency") or {}
    return Point(Path(str(r.get("artifact", "?"))).name, r.get("sha256"), r.get("status", "ok"),
                 lat.get("p50_ms"), reason=r.get("reason"))


def _matrix_point(r: Mapping[str, Any], source: str | None = None) -> Point:
    """A matrix row; one without an artifact (the eager baseline, a failed plan) is named
    ``format/precision``, prefixed with its source's name in a matrix set."""
    art = r.get("artifact")
    name = Path(art).name if art else f"{source + ':' if source else ''}{r.get('format')}/{r.get('precision')}"
    hib = r.get("metric_higher_is_better")
    return Point(name, r.get("artifact_sha256"), r.get("status", "ok"), r.get("p50_ms"), r.get("metric_name"),
                 r.get("metric"), True if hib is None else bool(hib), r.get("reason"))


def _pair(old: list[Point], new: list[Point]) -> list[Delta]:
    """Match by sha256, then by name; unmatched rows on either side become one-sided deltas."""
    left = list(new)
    deltas = []
    for o in old:
        match, how = next((n for n in left if o.sha256 and n.sha256 == o.sha256), None), "sha256"
        if match is None:
            match, how = next((n for n in left if n.name == o.name), None), "name"
        if match is not None:
            left.remove(match)
        deltas.append(Delta(o.name, o, match, how if match else None))
    return deltas + [Delta(n.name, None, n) for n in left]


def _judge(d: Delta, max_regression: float, max_metric_drop: float) -> None:
    o, n = d.old, d.new
    if o is None:
        return
    if n is None:
        if o.status == "ok":
            d.regressions.append("missing from the new results")
        return
    if o.status == "ok" and n.status != "ok":
        d.regressions.append(f"{n.status} (was ok): {n.reason or 'no reason given'}")
    if o.p50_ms and n.p50_ms is not None:
        d.latency_change = n.p50_ms / o.p50_ms - 1
        if d.latency_change > max_regression:
            d.regressions.append(f"p50 {o.p50_ms:.3f} -> {n.p50_ms:.3f} ms ({d.latency_change:+.1%}, "
                                 f"more than {max_regression:.0%})")
    if o.metric is not None and n.metric is not None and o.metric_name == n.metric_name and o.metric:
        worse = (o.metric - n.metric) if o.higher_is_better else (n.metric - o.metric)
        d.metric_change = worse / abs(o.metric)
        if d.metric_change > max_metric_drop:
            d.regressions.append(f"{o.metric_name} {o.metric:.4f} -> {n.metric:.4f} ({d.metric_change:.1%} worse, "
                                 f"more than {max_metric_drop:.1%})")


def compare(old: str | Path, new: str | Path, *, max_regression: float = 0.10,
            max_metric_drop: float | None = None) -> Comparison:
    """Compare result file ``new`` against ``old``; shares are fractions (0.10 = 10 %).
    ``max_metric_drop`` defaults to ``max_regression``."""
    old_rows, old_host = read_points(old)
    new_rows, new_host = read_points(new)
    drop = max_regression if max_metric_drop is None else max_metric_drop
    deltas = _pair(old_rows, new_rows)
    for d in deltas:
        _judge(d, max_regression, drop)
    return Comparison(str(old), str(new), max_regression, drop, deltas, old_host, new_host)


def artifact_sha256(path: str | Path) -> str | None:
    """The sha256 of an artifact file: from its manifest when it has one (no re-hashing of a large
    model), else hashed; None for what is not a readable file."""
    from edgekit.errors import EdgekitError
    from edgekit.fsutil import sha256_file
    from edgekit.manifest import read_manifest

    p = Path(path)
    try:
        m = read_manifest(p)
    except EdgekitError:
        m = None
    recorded = next((f.get("sha256") for f in (m.files if m else []) if f.get("path") == p.name), None)
    if recorded:
        return str(recorded)
    try:
        return sha256_file(p) if p.is_file() else None
    except OSError:
        return None


def host_line(host: Mapping[str, Any] | None) -> str:
    """``Intel Xeon ..., 16 cores, Ubuntu 24.04, Python 3.12, load 0.5 -> 0.7``: for notes under tables."""
    if not host:
        return "no host block"
    load = host.get("load_before")
    after = host.get("load_after")
    parts = [host.get("cpu_model") or host.get("arch") or "?", f"{host.get('cores')} cores", host.get("os") or "?",
             f"Python {host.get('python')}",
             f"load {load[0] if load else '?'} -> {after[0] if after else '?'}"]
    return ", ".join(str(p) for p in parts)
