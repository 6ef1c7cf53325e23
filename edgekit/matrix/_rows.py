"""The matrix's typed results: timing settings, one row per variant, the whole result.

``MatrixResult.to_dict()`` is the ``edgekit.matrix/1`` JSON written to ``OUT/matrix.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError
from edgekit.matrix._plan import Skipped
from edgekit.types import RowStatus

SCHEMA = "edgekit.matrix/1"
EAGER = "pytorch"  # the format name of the baseline row


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class BenchSettings:
    """How every row is timed (the harness's options); rows are only reused under equal settings."""

    device: str = "cpu"
    runtime: str | None = None
    threads: int | None = None
    batch: int = 1
    dims: Mapping[str, int] = field(default_factory=dict)
    warmup: int = 10
    runs: int | None = None
    min_time: float = 2.0
    isolated: bool = True
    timeout: float = 600.0
    on: str | None = None  # a device (saved name or ssh://...) every artifact is timed on, else here

    def __post_init__(self) -> None:
        object.__setattr__(self, "dims", {str(k): int(v) for k, v in dict(self.dims).items()})
        bad = [(n, v) for n, v, ok in (("batch", self.batch, self.batch >= 1),
                                        ("warmup", self.warmup, self.warmup >= 0),
                                        ("runs", self.runs, self.runs is None or self.runs >= 1),
                                        ("min_time", self.min_time, self.min_time > 0),
                                        ("threads", self.threads, self.threads is None or self.threads >= 1))
               if not ok]
        if bad:
            name, value = bad[0]
            raise ConfigError(f"benchmark setting {name}={value} is out of range",
                              fix="batch, runs and threads are at least 1, warmup at least 0, min_time above 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same_measurement(self, other: Mapping[str, Any]) -> bool:
        """True when ``other`` (a stored settings dict) times rows the same way; timeout aside."""
        mine = {k: v for k, v in self.to_dict().items() if k != "timeout"}
        return mine == {k: other.get(k) for k in mine}


@dataclass
class MatrixRow:
    """One variant of the matrix (or the eager baseline): status, size, accuracy, speed, memory."""

    format: str
    precision: str
    status: RowStatus = RowStatus.OK
    reason: str | None = None
    stage: str | None = None  # where a row failed: plan | dependencies | convert | bench
    artifact: str | None = None
    size_bytes: int | None = None
    metric_name: str | None = None
    metric: float | None = None
    metric_reference: float | None = None
    metric_delta: float | None = None
    metric_higher_is_better: bool | None = None
    cosine: float | None = None  # worst per-sample cosine to PyTorch over the parity feeds
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    first_ms: float | None = None
    load_ms: float | None = None
    runs: int | None = None
    throughput: float | None = None  # items per second
    peak_rss_mb: float | None = None
    speedup_vs_eager: float | None = None  # eager p50 / this row's p50: above 1 is faster
    eager_p50_ms: float | None = None  # median eager p50 of the row's interleaved pairs (the ratio's numerator)
    eager_pairs: list[list[float]] | None = None  # [eager p50, artifact p50] of each interleaved pair
    noisy: bool = False  # the pairs' eager p50s disagree by more than 2x: the ratio is not trustworthy
    runtime: str | None = None
    device: str | None = None
    mode: str | None = None  # isolated | in-process
    export_seconds: float | None = None  # torch.export + the format's export, shared by its precisions
    build_seconds: float | None = None  # this precision's build (quantization) alone
    route: str | None = None
    artifact_sha256: str | None = None
    manifest_sha256: str | None = None
    measured_at: str | None = None
    reused: bool = False  # taken from a previous run's matrix.json (resume)
    bench_window: list[float] | None = None  # [start, end] of the artifact's timing, epoch seconds
    device_parity: dict[str, Any] | None = None  # with --on: the device's outputs vs this machine's

    def __post_init__(self) -> None:
        self.status = RowStatus(self.status)  # a matrix.json being resumed holds the string

    @property
    def key(self) -> tuple[str, str]:
        return self.format, self.precision

    @property
    def label(self) -> str:
        return f"{self.format}/{self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": RowStatus(self.status).value}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MatrixRow:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class MatrixResult:
    """Every row in table order (the eager baseline first), what was skipped, and the files."""

    rows: list[MatrixRow]
    skipped: list[Skipped]
    source: dict[str, Any]
    settings: BenchSettings
    inputs: dict[str, list[int]]
    path: Path
    plot_path: Path | None = None
    plot_points: list[str] = field(default_factory=list)
    plot_error: str | None = None
    converted: int = 0  # variants handed to edgekit.convert in this run
    benchmarked: int = 0  # variants timed in this run
    reused: int = 0  # variants taken from a previous run (resume)
    complete: bool = False
    created: str = field(default_factory=now)
    host: dict[str, Any] | None = None  # edgekit.host.host_info(): the machine, load before and after

    @property
    def baseline(self) -> MatrixRow | None:
        return next((r for r in self.rows if r.format == EAGER), None)

    @property
    def failed(self) -> list[MatrixRow]:
        return [r for r in self.rows if r.status not in (RowStatus.OK, RowStatus.DEGRADED, RowStatus.SKIPPED)]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "created": self.created, "complete": self.complete, "host": self.host,
                "source": self.source, "settings": self.settings.to_dict(), "inputs": self.inputs,
                "counts": {"rows": len(self.rows), "ok": len(self.rows) - len(self.failed),
                           "failed": len(self.failed), "converted": self.converted,
                           "benchmarked": self.benchmarked, "reused": self.reused},
                "rows": [r.to_dict() for r in self.rows],
                "skipped": [s.to_dict() for s in self.skipped],
                "plot": {"path": str(self.plot_path) if self.plot_path else None,
                         "points": self.plot_points, "error": self.plot_error}}
