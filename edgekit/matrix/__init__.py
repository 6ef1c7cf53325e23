"""``edgekit.matrix``: one source, every format x precision that applies, one table.

Each format is converted with ``edgekit.convert(..., keep_going=True)`` (so one failing format or
precision is a row with its reason, never the end of the run), each artifact is timed by the same
harness (``edgekit.harness.benchmark``, one fresh process per artifact by default) on the same
inputs, and accuracy comes from each artifact's manifest (``verification.metric``). A PyTorch
eager fp32 row, timed in this process with the same statistics, makes every speed a ratio measured
in the same run. Results go to ``OUT/matrix.json`` after every variant, so ``resume=True`` picks up
an interrupted run without converting or timing a finished variant again.

>>> res = edgekit.matrix.matrix("builtin:digits-cnn", targets=["onnx", "openvino"], out="m/")  # doctest: +SKIP
>>> [(r.label, r.status, r.speedup_vs_eager) for r in res.rows]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import ConfigError, EdgekitError
from edgekit.fsutil import sha256_file, write_json_atomic
from edgekit.matrix._pairs import NOISY_SPREAD, PAIRS, paired_ratio, time_pairs
from edgekit.matrix._plan import Skipped, Variant, plan, reason_of
from edgekit.matrix._rows import EAGER, SCHEMA, BenchSettings, MatrixResult, MatrixRow, now
from edgekit.types import (
    ArtifactStatus,
    BenchStatus,
    ExampleInputs,
    Format,
    ModelRef,
    Precision,
    ProgressFn,
    RowStatus,
)

if TYPE_CHECKING:
    from edgekit.conversion import Artifact
    from edgekit.evaluate import Evaluator
    from edgekit.sources import ModelSource

RESULTS_FILE = "matrix.json"
PLOT_FILE = "matrix.png"
DEGRADED_STAGE = "int8 target"  # MatrixRow.stage of a degraded variant: its reason says what it missed


def matrix(
    source: ModelRef = None,
    example_inputs: ExampleInputs = None,
    *,
    targets: Sequence[str | Format] | str | None = None,
    precisions: Sequence[str | Precision] | str | None = None,
    calib: str | Path | None = None,
    eval_data: str | Path | None = None,
    out: str | Path = "edgekit-matrix",
    resume: bool = False,
    bench: BenchSettings | None = None,
    inputs: Mapping[str, Any] | str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    name: str | None = None,
    weights: str | Path | None = None,
    seq_len: int | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    preprocess: Mapping[str, Any] | None = None,
    evaluator: str | Evaluator | Callable[..., float] | None = None,
    plot: bool = True,
    progress: ProgressFn | None = None,
    ray: str | None = None,
    max_parallel: int | None = None,
) -> MatrixResult:
    """Convert ``source`` to every format x precision that applies, evaluate and time each.

    ``targets=None`` means every registered format (one whose converter's packages are missing
    is a row with the install line); ``precisions=None`` means each converter's precisions that
    apply (static int8 only with calibration data). Asked-for variants that cannot be built are
    failed rows with the reason. ``inputs`` (an .npz path or arrays) replaces the inputs
    synthesized from the source's examples with ``bench.batch``/``bench.dims``; every row,
    the eager baseline included, is timed on the same feed. The source arguments, ``options``,
    ``name``, ``preprocess`` and ``evaluator`` mean what they mean for
    ``edgekit.conversion.convert_source``.

    ``ray`` (``"local"``, ``"auto"`` or ``"ray://host:10001"``) runs every conversion and benchmark
    as a Ray task instead (``edgekit.matrix._ray``), at most ``max_parallel`` at a time;
    ``bench.on`` (a saved device name) times every artifact on that device instead of here.

    >>> res = matrix("builtin:digits-cnn", targets="onnx,tflite", bench=BenchSettings(runs=50))  # doctest: +SKIP
    >>> res.path  # doctest: +SKIP
    PosixPath('edgekit-matrix/matrix.json')
    """
    from edgekit.calib import check_data_files

    settings = bench or BenchSettings()
    from edgekit.deps import require

    require("torch", "convert", "the conversion matrix")  # a runtime-only install has nothing to convert with
    check_data_files(calib=calib, eval_data=eval_data)  # before the source loads
    if ray is not None:
        require("ray", "ray", "running the matrix on Ray (--ray)")
    out_dir = Path(out)
    from edgekit.host import host_info

    host = host_info()  # before anything runs: the load average a measurement starts from
    spec = SourceSpec(source, example_inputs, dict(input_names=input_names, output_names=output_names,
                      dynamic_axes=dynamic_axes, weights=weights, seq_len=seq_len),
                      preprocess, calib, eval_data)
    src = spec.resolve(progress)
    variants, skipped = plan(src, targets, precisions, src.calibration is not None)
    feed = _feed(src, inputs, settings)
    result = MatrixResult([], skipped, src.describe(), settings,
                          {k: list(v.shape) for k, v in feed.items()}, out_dir / RESULTS_FILE, host=host)
    previous = _previous(result) if resume else {}
    run = _Run(result, [(EAGER, Precision.FP32.value)] + [(v.format.value, v.precision.value)
                                                         for v in variants], progress)
    base = previous.get((EAGER, Precision.FP32.value))
    if base is not None:
        base.reused = True
    run.put(base or _eager_row(src, feed, settings))
    convert_options = dict(options=options, name=name, evaluator=evaluator)
    if ray is not None:  # every row a Ray task; the same rows, JSON and resume
        from edgekit.matrix._ray import run_on_ray

        run_on_ray(run, src, variants, previous, feed, convert_options, address=ray, max_parallel=max_parallel,
                   spec=spec)
    else:
        for fmt in dict.fromkeys(v.format for v in variants):
            _one_format(run, src, [v for v in variants if v.format is fmt], previous, feed, convert_options)
    _fill_baseline_metric(result, src, evaluator)
    run.finish(plot, f"{src.name}: edgekit matrix")
    return result


def connect_ray(address: str, max_parallel: int | None = None) -> Any:
    """Start (``local``) or join (``auto``, ``ray://host:10001``) Ray once, for several matrices in a row;
    ``matrix(..., ray=address)`` then reuses it instead of starting one per call."""
    from edgekit.matrix._ray import connect

    return connect(address, max_parallel)


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """How the matrix's source was asked for, so another process (a Ray worker) can rebuild the
    same :class:`ModelSource` when the resolved one cannot be pickled (a ``.pt2`` program)."""

    source: Any
    example_inputs: Any
    options: dict[str, Any]  # resolve_source keywords
    preprocess: Mapping[str, Any] | None = None
    calib: str | Path | None = None
    eval_data: str | Path | None = None

    def absolute(self) -> SourceSpec:
        """The same spec with every file path absolute, for a process in another working directory."""
        def fix(v: Any) -> Any:
            return str(Path(v).resolve()) if isinstance(v, (str, Path)) and Path(v).exists() else v

        options = {**self.options, "weights": fix(self.options.get("weights"))}
        return dataclasses.replace(self, source=fix(self.source), options=options, calib=fix(self.calib),
                                   eval_data=fix(self.eval_data))

    def resolve(self, progress: ProgressFn | None = None) -> ModelSource:
        """The source with its calibration and evaluation data read (and tokenized) once."""
        from edgekit.calib import load_calibration, load_eval
        from edgekit.sources import resolve_source

        src = resolve_source(self.source, self.example_inputs, progress=progress, **self.options)
        if self.preprocess:
            from edgekit.sources.module import with_preprocess

            src = with_preprocess(src, self.preprocess)
        calibration = load_calibration(self.calib, src) if self.calib is not None else src.calibration
        evaluation = load_eval(self.eval_data, src) if self.eval_data is not None else src.evaluation
        # one source for every format: data is read and tokenized once, not once per convert call
        return dataclasses.replace(src, calibration=calibration, evaluation=evaluation)


class _Run:
    """The rows so far, in plan order, written to ``matrix.json`` after every change."""

    def __init__(self, result: MatrixResult, order: list[tuple[str, str]], progress: ProgressFn | None):
        self.result, self.order, self.progress = result, order, progress
        self._rows: dict[tuple[str, str], MatrixRow] = {}

    def put(self, row: MatrixRow) -> None:
        self._rows[row.key] = row
        self.result.rows = [self._rows[k] for k in self.order if k in self._rows]
        _speedups(self.result.rows)
        write_json_atomic(self.result.path, self.result.to_dict())
        if self.progress:
            done = sum(1 for r in self.result.rows if r.status is not RowStatus.CONVERTED)
            self.progress("matrix", done, len(self.order))

    def finish(self, plot: bool, title: str) -> None:
        res = self.result
        if plot:
            try:
                from edgekit.deps import require
                from edgekit.matrix._plot import plot_matrix

                require("matplotlib", "convert", "the matrix plot")
                res.plot_points = plot_matrix(res.rows, res.path.with_name(PLOT_FILE), title)
                res.plot_path = res.path.with_name(PLOT_FILE)
            except EdgekitError as e:  # the measurements stand without their picture
                res.plot_error = reason_of(e)
        if res.host is not None:
            from edgekit.host import host_info

            res.host = host_info(since=res.host)  # the load average after, and when it finished
        res.complete = True
        _speedups(res.rows)
        write_json_atomic(res.path, res.to_dict())


def _one_format(run: _Run, src: ModelSource, cells: list[Variant], previous: dict[tuple[str, str], MatrixRow],
                feed: dict[str, np.ndarray], convert_options: dict[str, Any]) -> None:
    """Reuse what a previous run finished, convert the rest in one call, then time each artifact."""
    out_dir = run.result.path.parent
    todo: list[Precision] = []
    to_time: list[MatrixRow] = []
    for v in cells:
        convert_it, untimed = _settle(run, v, previous)
        if convert_it:
            todo.append(v.precision)
        elif untimed is not None:
            to_time.append(untimed)
    if todo:
        run.result.converted += len(todo)
        for row in _convert(src, cells[0].format, todo, out_dir, convert_options, run.progress):
            run.put(row)
            if row.status is RowStatus.CONVERTED:
                to_time.append(row)
    for row in to_time:
        _time_paired(row, src, out_dir, feed, run.result.settings)
        run.result.benchmarked += 1
        run.put(row)


def _settle(run: _Run, v: Variant, previous: dict[tuple[str, str], MatrixRow]) -> tuple[bool, MatrixRow | None]:
    """Put a variant the plan refused, or one a previous run finished, in the table now. Returns
    (True, None) when it must be converted, else (False, the reused row when it still needs timing)."""
    if v.problem is not None:
        run.put(MatrixRow(v.format.value, v.precision.value, RowStatus.FAILED, v.problem, v.stage))
        return False, None
    prev = previous.get((v.format.value, v.precision.value))
    if prev is None or not _intact(prev, run.result.path.parent):
        return True, None
    prev.reused = prev.status is RowStatus.OK  # a converted-but-untimed row is timed in this run
    run.put(prev)
    run.result.reused += prev.status is RowStatus.OK
    # converted before an interruption, never timed
    return False, prev if prev.status is RowStatus.CONVERTED else None


def _convert(src: ModelSource, fmt: Format, precisions: list[Precision], out_dir: Path,
             convert_options: dict[str, Any], progress: ProgressFn | None) -> list[MatrixRow]:
    from edgekit.conversion import convert_source

    try:
        arts = convert_source(src, targets=[fmt], precisions=precisions, out=out_dir, keep_going=True,
                              progress=progress, **convert_options)
    except EdgekitError as e:  # a VerificationError still carries every variant's row
        arts = getattr(e, "artifacts", None) or []
        if not arts:
            return [MatrixRow(fmt.value, p.value, RowStatus.FAILED, reason_of(e), "convert") for p in precisions]
    return [_from_artifact(a) for a in arts]


def _from_artifact(a: Artifact) -> MatrixRow:
    """A converted variant's row: size, parity and the task metric, as its manifest records them."""
    v = a.verification
    metric = (v.metric if v else None) or {}
    worst = v.worst() if v else None
    # a degraded variant (static int8 short of its accuracy target) is usable: timed, shown as degraded
    degraded = a.status is ArtifactStatus.DEGRADED
    ok = a.status is ArtifactStatus.OK or degraded
    row = MatrixRow(a.format.value, a.precision.value, RowStatus.CONVERTED if ok else RowStatus(a.status), a.reason,
                    DEGRADED_STAGE if degraded else None if ok else "convert", artifact=str(a.path), size_bytes=a.size_bytes or None,
                    metric_name=metric.get("name"), metric=metric.get("value"),
                    metric_reference=metric.get("reference"), metric_delta=metric.get("delta"),
                    metric_higher_is_better=metric.get("higher_is_better"),
                    cosine=worst.min_cosine if worst else None, build_seconds=round(a.seconds_parts.get("build", a.seconds), 3),
                    route=a.route or None)
    if ok:
        from edgekit.manifest import read_manifest

        manifest = read_manifest(a.path)
        row.export_seconds = manifest.conversion.get("export_seconds") if manifest else None
        row.artifact_sha256 = sha256_file(a.path)
        row.manifest_sha256 = sha256_file(a.manifest_path)
    return row


def _time(row: MatrixRow, out_dir: Path, feed: dict[str, np.ndarray], s: BenchSettings) -> None:
    """Time one artifact with the harness (on this machine, or on the device ``s.on``) and fill the row
    (a failed run is a failed row); ``bench_window`` records when, so overlaps can be checked. On a
    device one SSH connection serves the timing and the parity check."""
    import time

    from edgekit.harness import benchmark

    path = out_dir / Path(row.artifact or "").name
    started = time.time()
    with _device(s.on) as device:
        r = benchmark(path, device=s.device, runtime=s.runtime, threads=s.threads, inputs=feed, batch=s.batch,
                      dims=s.dims, warmup=s.warmup, runs=s.runs, min_time=s.min_time, isolated=s.isolated,
                      timeout=s.timeout, **({"on": device} if device is not None else {}))
        row.bench_window = [round(started, 3), round(time.time(), 3)]
        row.runtime, row.device, row.mode, row.measured_at = r.runtime, r.device, r.mode, now()
        if r.status is not BenchStatus.OK or r.latency is None:
            row.status, row.reason, row.stage = (RowStatus(r.status) if r.status is not BenchStatus.OK
                                                 else RowStatus.FAILED, r.reason, "bench")
            return
        lat = r.latency
        row.status = RowStatus.DEGRADED if row.stage == DEGRADED_STAGE else RowStatus.OK
        row.p50_ms, row.p90_ms, row.p99_ms, row.mean_ms, row.std_ms = (
            lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.mean_ms, lat.std_ms)
        row.first_ms, row.load_ms, row.runs = r.first_ms, r.load_ms, lat.runs
        row.throughput, row.peak_rss_mb = r.throughput, r.peak_rss_mb
        if device is not None:
            _device_parity(row, path, feed, device, s)


def _device(on: str | None) -> AbstractContextManager[Any]:
    """A connected :class:`edgekit.devices.Device` for ``on`` (closed on exit), or None here."""
    if on is None:
        return nullcontext(None)
    from edgekit.devices import connect

    return connect(on)


def _device_parity(row: MatrixRow, path: Path, feed: dict[str, np.ndarray], device: Any, s: BenchSettings) -> None:
    """The device's outputs on the benchmark feed against this machine's: a runtime that computes
    wrong numbers on one platform only makes the row ``diverged``, with the figures."""
    from edgekit.devices.parity import device_parity

    try:
        par = device_parity(device, path, [feed], runtime=s.runtime)
    except EdgekitError as e:
        row.device_parity = {"agree": None, "error": reason_of(e)}
        return
    worst = min((p["min_cosine"] for p in par.parity), default=None)
    row.device_parity = {"agree": par.agree, "worst_cosine": worst,
                         "max_abs_err": max((p["max_abs_err"] for p in par.parity), default=None)}
    if par.agree is False:
        row.status, row.stage = RowStatus.DIVERGED, "device"
        row.reason = (f"outputs on {s.on} differ from this machine's on the same inputs (worst cosine "
                      f"{worst:.4f}): the device's runtime computes other numbers")


def _eager_row(src: ModelSource, feed: dict[str, np.ndarray], s: BenchSettings) -> MatrixRow:
    """PyTorch eager fp32 on the source module, in this process, timed by ``time_calls``.

    Peak memory is left empty: this process also holds the converters, so its high-water mark
    says nothing about the model.
    """
    import torch

    from edgekit.harness import LatencyStats, time_calls

    row = MatrixRow(EAGER, Precision.FP32.value, runtime=f"torch {torch.__version__}", device="cpu",
                    mode="in-process", size_bytes=_state_bytes(src.module), cosine=1.0,
                    metric_delta=None, measured_at=now())
    args = [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in src.input_names]
    threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(s.threads)
    try:
        with torch.inference_mode():
            first, samples = time_calls(lambda: src.module(*args), warmup=s.warmup, runs=s.runs,
                                        min_time=s.min_time)
    except Exception as e:  # torch raises many types on a feed the module cannot take
        row.status, row.stage = RowStatus.FAILED, "bench"
        row.reason = f"PyTorch eager failed on the benchmark inputs: {str(e).strip().splitlines()[0]}"
        return row
    finally:
        torch.set_num_threads(threads)
    lat = LatencyStats.from_ns(samples)
    items = int(args[0].shape[0]) if args and args[0].ndim else 1
    row.p50_ms, row.p90_ms, row.p99_ms, row.mean_ms, row.std_ms = (
        lat.p50_ms, lat.p90_ms, lat.p99_ms, lat.mean_ms, lat.std_ms)
    row.first_ms, row.runs, row.throughput = first / 1e6, lat.runs, items * 1000.0 / lat.mean_ms
    return row


def _state_bytes(module: Any) -> int:
    """Bytes of the module's parameters and buffers, each storage counted once (tied weights)."""
    seen: dict[int, int] = {}
    for t in module.state_dict().values():
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
    return sum(seen.values())


def _fill_baseline_metric(result: MatrixResult, src: ModelSource, evaluator: Any) -> None:
    """The eager row's metric is the reference every artifact was compared with."""
    from edgekit.matrix._plot import y_axis

    base = result.baseline
    if base is None or base.metric is not None:
        return
    attr, name = y_axis([r for r in result.rows if r.format != EAGER])
    ref = next((r for r in result.rows if attr == "metric" and r.metric_name == name
                and r.metric_reference is not None), None)
    if ref is not None:
        base.metric_name, base.metric, base.metric_delta = name, ref.metric_reference, 0.0
        base.metric_reference, base.metric_higher_is_better = ref.metric_reference, ref.metric_higher_is_better
    elif src.evaluation is not None:  # no variant got as far as its accuracy check
        from edgekit.verify import Reference

        scored = Reference.build(src, [], src.evaluation, evaluator)
        if scored.evaluator is not None and scored.eval_accuracy is not None:
            value = scored.eval_accuracy
            base.metric_name, base.metric, base.metric_reference, base.metric_delta = (
                scored.evaluator.name, value, value, 0.0)
            base.metric_higher_is_better = scored.evaluator.higher_is_better


def _time_paired(row: MatrixRow, src: ModelSource, out_dir: Path, feed: dict[str, np.ndarray],
                 s: BenchSettings) -> None:
    """Eager and the artifact timed in ``PAIRS`` interleaved pairs (``min_time`` shared among them):
    on a shared host load comes in bursts, and one eager figure taken during one would make the
    ratio a comparison of two moments. On a device the ratio would compare two machines: one timing."""
    if getattr(s, "on", None) is not None:
        _time(row, out_dir, feed, s)
        return
    share = dataclasses.replace(s, min_time=s.min_time / PAIRS)
    timed: list[MatrixRow] = []

    def artifact() -> float | None:
        _time(row, out_dir, feed, share)
        timed.append(dataclasses.replace(row))  # this pair's statistics, whole
        return row.p50_ms if row.status in (RowStatus.OK, RowStatus.DEGRADED) else None

    paired = time_pairs(lambda: _eager_row(src, feed, share).p50_ms, artifact)
    if paired.pairs and all(t.status in (RowStatus.OK, RowStatus.DEGRADED) for t in timed):
        # the row shows the timing with the median p50, and that timing's p90/p99 with it
        median = sorted(timed, key=lambda r: r.p50_ms or 0.0)[(len(timed) - 1) // 2]
        for f in dataclasses.fields(row):
            setattr(row, f.name, getattr(median, f.name))
        row.eager_pairs = [list(p) for p in paired.pairs]
        row.eager_p50_ms, row.noisy = paired.eager_p50_ms, paired.noisy


def _speedups(rows: list[MatrixRow]) -> None:
    """Eager p50 over the row's p50: the median of the ratios of the row's interleaved pairs where
    it has them, else the baseline's eager p50 over the row's."""
    base = next((r for r in rows if r.format == EAGER and r.p50_ms), None)
    for r in rows:
        if r.eager_pairs:
            r.speedup_vs_eager = paired_ratio(*zip(*r.eager_pairs)).ratio
            continue
        eager = r.eager_p50_ms or (base.p50_ms if base else None)
        r.speedup_vs_eager = round(eager / r.p50_ms, 4) if eager and r.p50_ms else None


def _feed(src: ModelSource, inputs: Mapping[str, Any] | str | Path | None,
          s: BenchSettings) -> dict[str, np.ndarray]:
    """The one feed every row is timed on: the user's, or synthesized like ``edgekit bench`` does."""
    from edgekit.inputs import synthesize
    from edgekit.types import Signature, TensorSpec, merge_shapes

    if isinstance(inputs, (str, Path)):
        from edgekit.io import read_npz

        return read_npz(Path(inputs))
    if inputs is not None:
        return {k: np.asarray(v) for k, v in inputs.items()}
    specs = tuple(TensorSpec(n, str(src.example_inputs[n].dtype),
                             merge_shapes(src.example_inputs[n].shape, src.dynamic_axes.get(n, {})))
                  for n in src.input_names)
    return synthesize(Signature(specs).with_examples(src.example_inputs), batch=s.batch, dims=s.dims)


def _previous(result: MatrixResult) -> dict[tuple[str, str], MatrixRow]:
    """Rows of an earlier run in the same directory that may be reused: same source, same timing
    settings, same inputs; only finished (or converted but untimed) rows."""
    path = result.path
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot resume from {path}: {e}",
                          fix="delete it, or run without --resume to start over") from e
    if data.get("schema") != SCHEMA:
        raise ConfigError(f"cannot resume from {path}: schema {data.get('schema')!r}, this edgekit writes {SCHEMA}",
                          fix="run without --resume to start over")
    differs = [what for what, same in (
        ("source", data.get("source") == result.source),
        ("benchmark settings", result.settings.same_measurement(data.get("settings") or {})),
        ("inputs", data.get("inputs") == result.inputs)) if not same]
    if differs:
        raise ConfigError(f"cannot resume from {path}: it was measured with other {' and '.join(differs)}",
                          fix="use the same source and options, another --out, or run without --resume")
    rows = [MatrixRow.from_dict(d) for d in data.get("rows", [])]
    return {r.key: r for r in rows if r.status in (RowStatus.OK, RowStatus.CONVERTED, RowStatus.DEGRADED)}


def _intact(row: MatrixRow, out_dir: Path) -> bool:
    """The eager row always; an artifact row while its model file and manifest are unchanged."""
    if row.format == EAGER:
        return True
    if not row.artifact or not row.artifact_sha256 or not row.manifest_sha256:
        return False
    from edgekit.manifest import manifest_path

    model = out_dir / Path(row.artifact).name
    manifest = manifest_path(model)
    if not model.is_file() or not manifest.is_file():
        return False
    return sha256_file(model) == row.artifact_sha256 and sha256_file(manifest) == row.manifest_sha256


__all__ = ["matrix", "connect_ray", "SourceSpec", "BenchSettings", "MatrixRow", "MatrixResult", "Skipped", "SCHEMA", "EAGER",
           "RESULTS_FILE", "PLOT_FILE", "PAIRS", "NOISY_SPREAD", "paired_ratio"]
