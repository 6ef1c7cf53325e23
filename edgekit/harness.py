"""The latency harness: the same statistics for every format, runtime and device.

Warm-up calls, then a fixed run count or as many runs as fit in ``min_time`` (at least
``MIN_RUNS``), each timed with ``perf_counter_ns``. Reported: load time, first inference,
mean/std/min/p50/p90/p95/p99/max, throughput, peak RSS and artifact size. ``isolated=True``
measures in a fresh subprocess: cold start is real and a crash becomes a failed row.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.isolation import run_child
from edgekit.types import BenchStatus, ProgressFn

if TYPE_CHECKING:
    from edgekit.runtime import Model

SCHEMA = "edgekit.bench/1"
MIN_RUNS = 10


@dataclass(frozen=True)
class LatencyStats:
    """Order statistics of per-call latencies, in milliseconds."""

    runs: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def from_ns(cls, samples: Sequence[int]) -> LatencyStats:
        ms = np.asarray(samples, dtype=np.float64) / 1e6
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
        return cls(len(ms), float(ms.mean()), float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
                   float(ms.min()), float(p50), float(p90), float(p95), float(p99), float(ms.max()))


@dataclass
class BenchResult:
    """One benchmark row; a failed or crashed artifact is a row too, with ``reason``."""

    artifact: str
    status: BenchStatus = BenchStatus.OK
    reason: str | None = None
    format: str | None = None
    precision: str | None = None
    runtime: str | None = None
    device: str | None = None
    threads: int | None = None
    batch: int = 1
    mode: str = "in-process"  # or "isolated"
    size_bytes: int | None = None
    load_ms: float | None = None
    first_ms: float | None = None
    latency: LatencyStats | None = None
    throughput: float | None = None  # items per second (batch / mean latency)
    peak_rss_mb: float | None = None
    inputs: dict[str, list[int]] = field(default_factory=dict)
    task: str | None = None  # set by a task benchmark (measure_task): latency is then end to end
    stages: dict[str, LatencyStats] = field(default_factory=dict)  # preprocess, inference, postprocess
    host: dict[str, Any] | None = None  # where it ran: edgekit.host.host_info(), a device's for --on
    sha256: str | None = None  # of the artifact file, so runs compare by content (edgekit compare)
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        self.status = BenchStatus(self.status)  # from_dict and older callers pass the string

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = BenchStatus(self.status).value
        d["latency"] = asdict(self.latency) if self.latency else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        lat = d.get("latency")
        stages = {k: LatencyStats(**v) for k, v in (d.get("stages") or {}).items()}
        return cls(**{**d, "latency": LatencyStats(**lat) if lat else None, "stages": stages})

    def row(self) -> dict[str, Any]:
        """Flat view for tables and matrices: the latency fields inlined."""
        d = self.to_dict()
        lat = d.pop("latency") or {}
        d.pop("inputs", None)
        stages = {f"{k}_p50_ms": v["p50_ms"] for k, v in (d.pop("stages", None) or {}).items()}
        return {**d, **lat, **stages}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    On Linux this is ``VmHWM`` of the current address space: ``ru_maxrss`` would carry over the
    high-water mark of a forking parent (a benchmark child of a torch-loaded process would
    report the parent's hundreds of MB).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def time_calls(fn: Callable[[], Any], *, warmup: int = 10, runs: int | None = None,
               min_time: float = 2.0, max_runs: int = 1_000_000,
               progress: ProgressFn | None = None) -> tuple[int, list[int]]:
    """Call ``fn`` ``warmup`` times (the first timed apart), then time ``runs`` calls, or as many
    as fit in ``min_time`` seconds (at least ``MIN_RUNS``). Returns (first call ns, samples)."""
    clock = time.perf_counter_ns
    t = clock()
    fn()
    first = clock() - t
    for _ in range(max(warmup - 1, 0)):
        fn()
    samples: list[int] = []
    target = runs if runs is not None else max_runs
    deadline = clock() + int(min_time * 1e9)
    report_every = max(1, (runs or 50) // 50)
    while len(samples) < target:
        t = clock()
        fn()
        samples.append(clock() - t)
        if runs is None and len(samples) >= MIN_RUNS and t >= deadline:
            break
        if progress is not None and len(samples) % report_every == 0:
            progress("benchmark", len(samples), runs)
    return first, samples


def measure_model(model: Model, inputs: Mapping[str, Any] | None = None, *, warmup: int = 10,
                  runs: int | None = None, min_time: float = 2.0, batch: int = 1,
                  dims: Mapping[str, int] | None = None, load_ms: float | None = None,
                  progress: ProgressFn | None = None) -> BenchResult:
    """Benchmark an already-loaded model (in this process)."""
    from edgekit.inputs import synthesize

    feed = dict(inputs) if inputs is not None else synthesize(model.signature, batch=batch, dims=dims)
    checked = model._check(feed)  # check once, so bad inputs fail before the clock starts
    items = int(next(iter(checked.values())).shape[0]) if checked and next(iter(checked.values())).ndim else 1
    first, samples = time_calls(lambda: model.run(checked), warmup=warmup, runs=runs,
                                min_time=min_time, progress=progress)
    return _row(model, LatencyStats.from_ns(samples), first, items, checked, load_ms)


def _row(model: Model, stats: LatencyStats, first_ns: int, items: int, feed: Mapping[str, np.ndarray],
         load_ms: float | None, **extra: Any) -> BenchResult:
    """One ok row for a loaded model: where it came from, its statistics, this process's peak RSS."""
    m = model.manifest
    return BenchResult(
        artifact=str(model.path), format=model.format.value,
        precision=m.precision.value if m else None, runtime=model.name, device=model.device,
        threads=model.threads, batch=items, size_bytes=model.size_bytes, load_ms=load_ms,
        first_ms=first_ns / 1e6, latency=stats, throughput=items * 1000.0 / stats.mean_ms,
        peak_rss_mb=peak_rss_mb(), inputs={k: list(v.shape) for k, v in feed.items()}, **extra)


STAGES = ("preprocess", "inference", "postprocess")


def measure_task(model: Model, inputs: Any, *, warmup: int = 5, runs: int | None = None,
                 min_time: float = 2.0, load_ms: float | None = None,
                 progress: ProgressFn | None = None) -> BenchResult:
    """Benchmark the artifact's task end to end on ``inputs`` (texts, or images for an image
    model): ``latency`` is the whole call, ``stages`` times preprocess, inference, postprocess."""
    from edgekit.tasks import pipeline_for, task_of

    pipe = pipeline_for(model)
    pipe(inputs)  # fails before the clock starts on inputs the pipeline cannot take
    clock = time.perf_counter_ns
    spans: list[tuple[int, int, int]] = []

    def call() -> None:
        t0 = clock()
        prepared = pipe.preprocess(inputs)
        t1 = clock()
        outputs = pipe.infer(prepared)
        t2 = clock()
        pipe.postprocess(prepared, outputs)
        spans.append((t1 - t0, t2 - t1, clock() - t2))

    first, samples = time_calls(call, warmup=warmup, runs=runs, min_time=min_time, progress=progress)
    timed = spans[-len(samples):]
    stages = {name: LatencyStats.from_ns([s[i] for s in timed]) for i, name in enumerate(STAGES)}
    stats = LatencyStats.from_ns([sum(s) for s in timed])
    prepared = pipe.preprocess(inputs)
    return _row(model, stats, first, prepared.count, prepared.feeds[0], load_ms,
                task=task_of(model), stages=stages)


def benchmark(path: str | Path, *, device: str = "cpu", runtime: str | None = None,
              threads: int | None = None, inputs: Mapping[str, Any] | str | Path | None = None,
              batch: int = 1, dims: Mapping[str, int] | None = None, warmup: int = 10,
              runs: int | None = None, min_time: float = 2.0, isolated: bool = False,
              timeout: float = 600.0, progress: ProgressFn | None = None,
              options: Mapping[str, Any] | None = None,
              task_inputs: Sequence[str] | None = None, on: Any = None) -> BenchResult:
    """Load and benchmark one artifact; never raises for a bad artifact, returns a failed row
    (settings that cannot time anything, such as ``runs=0``, raise :class:`ConfigError`).

    ``on`` measures on a device instead (a saved name, ``ssh://user@host``, or a connected
    :class:`edgekit.devices.Device`): the artifact is pushed and the same harness runs there, isolated.

    ``task_inputs`` (texts, or image paths for an image model) measure the artifact's task end to
    end instead of bare ``run`` calls: see :func:`measure_task`.

    ``options`` are the runtime's own load options (e.g. ``{"static_shapes": "input_ids=1x128"}``
    for OpenVINO), passed to :func:`edgekit.load` as keywords; in isolated mode they must be JSON.

    >>> r = edgekit.benchmark("out/digits-cnn-int8.onnx", isolated=True)  # doctest: +SKIP
    >>> r.latency.p50_ms  # doctest: +SKIP
    """
    from edgekit.values import threads_value, timing_values

    timing_values(warmup=warmup, runs=runs, min_time=min_time, batch=batch)
    threads = threads_value(threads)
    kwargs = dict(device=device, runtime=runtime, threads=threads, batch=batch, dims=dict(dims or {}),
                  warmup=warmup, runs=runs, min_time=min_time, options=dict(options or {}),
                  task_inputs=list(task_inputs) if task_inputs is not None else None)
    if on is not None:
        from edgekit.devices.remote import bench_on

        result = bench_on(on, path, inputs=inputs, timeout=timeout, **kwargs)
    elif isolated:
        result = _isolated(path, inputs, kwargs, timeout)
    else:
        result = _in_process(path, inputs, kwargs, progress)
    if result.sha256 is None:  # rows of two runs match by content first (edgekit compare)
        from edgekit.compare import artifact_sha256

        result.sha256 = artifact_sha256(path)
    return result


def _in_process(path: str | Path, inputs: Any, kw: dict[str, Any], progress: ProgressFn | None) -> BenchResult:
    from edgekit.runtime import load

    try:
        feed = _read_inputs(inputs)
        t = time.perf_counter_ns()
        model = load(path, device=kw["device"], runtime=kw["runtime"], threads=kw["threads"], **kw["options"])
        load_ms = (time.perf_counter_ns() - t) / 1e6
        timing = dict(warmup=kw["warmup"], runs=kw["runs"], min_time=kw["min_time"], load_ms=load_ms,
                      progress=progress)
        with model:
            if kw["task_inputs"] is not None:
                return measure_task(model, kw["task_inputs"], **timing)
            return measure_model(model, feed, batch=kw["batch"], dims=kw["dims"], **timing)
    except EdgekitError as e:
        return BenchResult(artifact=str(path), status=BenchStatus.FAILED, reason=e.problem, device=kw["device"],
                           threads=kw["threads"], batch=kw["batch"])


def _read_inputs(inputs: Mapping[str, Any] | str | Path | None) -> dict[str, Any] | None:
    if inputs is None or isinstance(inputs, Mapping):
        return dict(inputs) if inputs is not None else None
    from edgekit.io import read_npz

    return read_npz(Path(inputs))


def _isolated(path: str | Path, inputs: Any, kwargs: dict[str, Any], timeout: float) -> BenchResult:
    """Run :func:`benchmark` in a fresh interpreter; a signal or timeout becomes a row."""
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        if isinstance(inputs, Mapping):
            np.savez(Path(tmp) / "inputs.npz", **{k: np.asarray(v) for k, v in inputs.items()})
            inputs = Path(tmp) / "inputs.npz"
        job = {"path": str(path), "inputs": str(inputs) if inputs is not None else None, **kwargs}
        child = run_child("edgekit._bench_worker", job, timeout)
    if child.timed_out:
        return BenchResult(artifact=str(path), status=BenchStatus.TIMEOUT, mode="isolated",
                           reason=f"no result within {timeout:.0f} s")
    if child.signal:
        return BenchResult(artifact=str(path), status=BenchStatus.CRASHED, mode="isolated",
                           reason=f"the runtime killed the process with {child.signal}" +
                           (f": {child.stderr_tail}" if child.stderr_tail else ""))
    if not child.ok:
        return BenchResult(artifact=str(path), status=BenchStatus.FAILED, mode="isolated",
                           reason=f"benchmark process exited with {child.returncode}: {child.problem()}")
    result = BenchResult.from_dict(child.reply)
    result.mode = "isolated"
    return result
