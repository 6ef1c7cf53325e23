"""Matrix rows as Ray tasks: conversions anywhere in the cluster, benchmarks where their device is.

The unit of work is one row. A conversion task builds one (format, precision) of the source in a
scratch folder on whichever node Ray picks and returns the row plus the artifact's files packed as
one object; the driver publishes them into ``OUT`` atomically and hands the same object to the
benchmark task, so a row that moves between nodes is never converted again. A benchmark task
needs one unit of a custom resource: ``edgekit_bench`` (a node's own CPU; advertise 1 per node, so
two local benchmarks never overlap) or ``edgekit_device_<name>`` for a device reached with ``--on``
(advertised by the node that can reach it: ``ray start --resources '{"edgekit_device_pi5": 1}'``).
On a benchmark node the files are unpacked once into a cache keyed by the model's sha256.

Rows stream into the same ``matrix.json`` through the caller's ``_Run``; resume works across local
and Ray runs because both write and read the same rows.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import ConfigError, EdgekitError
from edgekit.types import RowStatus

if TYPE_CHECKING:
    import numpy as np

    from edgekit.matrix import SourceSpec, _Run
    from edgekit.matrix._plan import Variant
    from edgekit.matrix._rows import BenchSettings, MatrixRow
    from edgekit.sources import ModelSource

BENCH_RESOURCE = "edgekit_bench"
DEVICE_RESOURCE = "edgekit_device_{}"
LOCAL_ADDRESSES = ("local", "")


def device_resource(device: str | None) -> str:
    """The custom resource a benchmark of ``device`` (None: the node itself) needs one unit of."""
    if device is None:
        return BENCH_RESOURCE
    if not device.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"--on {device!r} with --ray: a Ray resource needs a saved device name",
                          fix="save it first with `edgekit devices add NAME ssh://...` and pass --on NAME")
    return DEVICE_RESOURCE.format(device)


def connect(address: str, max_parallel: int | None = None) -> Any:
    """Start (``local``) or join (``auto``, ``ray://host:10001``, ``host:6379``) a Ray cluster.

    A local instance advertises one ``edgekit_bench`` so its benchmarks run one at a time.
    """
    from edgekit.deps import require

    require("ray", "ray", "running the matrix on Ray (--ray)")
    import ray

    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": False}
    if address in LOCAL_ADDRESSES:
        cpus = max(1, max_parallel or os.cpu_count() or 1)
        # address="local": a new instance even when a cluster already runs on this machine
        ray.init(address="local", num_cpus=cpus, resources={BENCH_RESOURCE: 1}, **kwargs)
    else:
        try:
            ray.init(address=address, **kwargs)
        except Exception as e:  # ConnectionError, RuntimeError, ValueError: Ray's own wording
            raise ConfigError(f"cannot join the Ray cluster at {address!r}: {str(e).strip().splitlines()[0]}",
                              fix="start one with `ray start --head` (then --ray auto), give its "
                              "ray://HOST:10001 address, or use --ray local") from e
    return ray


def check_resources(ray: Any, needed: set[str]) -> None:
    """Every resource a benchmark will wait for must exist somewhere, or the sweep would hang."""
    have = set(ray.cluster_resources())
    missing = sorted(needed - have)
    if missing:
        raise ConfigError(
            f"no node of the Ray cluster advertises {', '.join(missing)}",
            fix="on the node that runs benchmarks (or reaches the device) start Ray with "
            + " ".join(f"--resources '{{\"{m}\": 1}}'" for m in missing[:1])
            + " (docs/scale.md); --ray local advertises edgekit_bench itself")


# -- the tasks (module level, so Ray workers import them by name) ----------------------------------
def convert_task(src: ModelSource | SourceSpec, fmt: str, precision: str,
                 convert_options: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """Build one variant in a scratch folder; return its row and its files packed as a tar."""
    import tempfile

    from edgekit.matrix import _convert
    from edgekit.types import Format, Precision

    with tempfile.TemporaryDirectory(prefix="edgekit-ray-") as tmp:
        rows = _convert(_resolved(src), Format.parse(fmt), [Precision.parse(precision)], Path(tmp), convert_options, None)
        row = rows[0]
        packed = _pack(Path(row.artifact)) if row.status is RowStatus.CONVERTED and row.artifact else None
        row.artifact = Path(row.artifact).name if row.artifact else None
        return row.to_dict(), packed


def bench_task(src: ModelSource | SourceSpec | None, packed: bytes, row: dict[str, Any], feed: dict[str, np.ndarray],
               settings: BenchSettings) -> dict[str, Any]:
    """Time one artifact on this node (with a paired eager timing) or on ``settings.on`` over SSH."""
    from edgekit.matrix import _time, _time_paired
    from edgekit.matrix._rows import MatrixRow

    r = MatrixRow.from_dict(row)
    folder = _unpack(packed)
    if settings.on is None and src is not None:  # eager and artifact in interleaved pairs, as locally
        _time_paired(r, _resolved(src), folder, feed, settings)
    else:
        _time(r, folder, feed, settings)
    return r.to_dict()


def _pack(model: Path) -> bytes:
    """The model file, its manifest and companions (siblings named after it), as one tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(model.parent.iterdir()):
            if p.name.startswith(model.name) or p.name.startswith(model.stem + "."):
                tar.add(p, arcname=p.name)
    return buf.getvalue()


def _unpack(packed: bytes) -> Path:
    """Unpack into ``~/.cache/edgekit/ray/<sha256 of the pack>/`` once; later rows on this node reuse it.

    The key covers the names and the manifest as well as the model, so the same weights under another
    name or with another manifest are another entry."""
    import hashlib
    import shutil
    import tempfile

    key = hashlib.sha256(packed).hexdigest()
    root = Path(os.environ.get("EDGEKIT_CACHE", Path.home() / ".cache" / "edgekit")) / "ray"
    dest = root / key
    if (dest / ".complete").is_file():
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=root))
    try:
        with tarfile.open(fileobj=io.BytesIO(packed), mode="r") as tar:
            tar.extractall(tmp, filter="data")  # names are flat; "data" refuses links and ../
        (tmp / ".complete").touch()
        try:
            os.replace(tmp, dest)
        except OSError:  # another task on this node got there first
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# -- the driver -----------------------------------------------------------------------------------
def run_on_ray(run: _Run, src: ModelSource, variants: list[Variant], previous: dict[tuple[str, str], MatrixRow],
               feed: dict[str, np.ndarray], convert_options: dict[str, Any], *, address: str,
               max_parallel: int | None = None, spec: SourceSpec | None = None) -> None:
    """Run every variant's conversion and benchmark as Ray tasks; rows go to ``run`` as they finish.

    The resolved source travels through the object store; one that cannot be pickled (a ``.pt2``
    program) travels as ``spec`` and each task rebuilds it (paths must then exist on every node)."""
    started_here = address in LOCAL_ADDRESSES and not _initialized()
    ray = connect(address, max_parallel)
    try:
        check_resources(ray, {device_resource(run.result.settings.on)})
        _schedule(ray, run, _shareable(ray, src, spec), variants, previous, feed, convert_options, max_parallel)
    finally:
        if started_here:  # a Ray started for this sweep ends with it
            ray.shutdown()


def _shareable(ray: Any, src: ModelSource, spec: SourceSpec | None) -> Any:
    """An object-store reference to the source, or to its spec when the source does not pickle."""
    try:
        return ray.put(src)
    except Exception as e:  # cloudpickle's TypeError/PicklingError, wrapped by Ray in its own types
        if spec is None:
            raise ConfigError(f"this source cannot be sent to Ray workers: {str(e).splitlines()[0]}",
                              fix="give the source as a path or builtin: name, which each worker loads") from e
        return ray.put(spec.absolute())


def _resolved(src: Any) -> ModelSource:
    from edgekit.matrix import SourceSpec

    return src.resolve() if isinstance(src, SourceSpec) else src


def _initialized() -> bool:
    from edgekit.deps import available

    if not available("ray"):
        return False
    import ray

    return bool(ray.is_initialized())


def _schedule(ray: Any, run: _Run, src_ref: Any, variants: list[Variant],
              previous: dict[tuple[str, str], MatrixRow], feed: dict[str, np.ndarray],
              convert_options: dict[str, Any], max_parallel: int | None) -> None:
    """Submit conversions, then each finished conversion's benchmark, at most ``max_parallel`` at once."""
    from edgekit.fsutil import publish, staging_dir
    from edgekit.matrix import _settle
    from edgekit.matrix._rows import MatrixRow

    out_dir = run.result.path.parent
    settings = run.result.settings
    on = settings.on
    feed_ref = ray.put(feed)
    convert_remote = ray.remote(convert_task).options(
        num_cpus=1, memory=_memory_request(run), max_retries=2, num_returns=2, name="edgekit.convert")
    bench_remote = ray.remote(bench_task).options(
        num_cpus=1, resources={device_resource(on): 1}, max_retries=1, name="edgekit.bench")
    limit = max(1, max_parallel or int(ray.cluster_resources().get("CPU", 1)))
    pending: dict[Any, tuple[str, Any]] = {}  # ref -> (kind, context)
    queue: list[tuple[str, Any]] = []

    for v in variants:
        convert_it, untimed = _settle(run, v, previous)
        if convert_it:
            queue.append(("convert", v))
            run.result.converted += 1
        elif untimed is not None:
            queue.append(("bench", (untimed, ray.put(_pack(out_dir / Path(untimed.artifact or "").name)))))

    def submit(kind: str, ctx: Any) -> None:
        if kind == "convert":
            row_ref, files_ref = convert_remote.remote(src_ref, ctx.format.value, ctx.precision.value,
                                                       convert_options)
            pending[row_ref] = ("converted", (ctx, files_ref))
        else:
            row, files_ref = ctx
            ref = bench_remote.remote(src_ref if on is None else None, files_ref, row.to_dict(), feed_ref,
                                      settings)
            pending[ref] = ("timed", row)

    while queue or pending:
        while queue and len(pending) < limit:
            submit(*queue.pop(0))
        done, _ = ray.wait(list(pending), num_returns=1)
        ref = done[0]
        kind, ctx = pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as e:  # a task that kept failing after its retries: a failed row, the sweep goes on
            if kind == "timed":
                row, stage = ctx, "bench"
            else:
                row, stage = MatrixRow(ctx[0].format.value, ctx[0].precision.value), "convert"
            row.status, row.reason, row.stage = RowStatus.FAILED, _task_error(e), stage
            run.put(row)
            continue
        row = MatrixRow.from_dict(result)
        if kind == "converted":
            if row.status is RowStatus.CONVERTED:
                files_ref = ctx[1]
                with staging_dir(out_dir) as stage:
                    with tarfile.open(fileobj=io.BytesIO(ray.get(files_ref)), mode="r") as tar:
                        tar.extractall(stage, filter="data")
                        names = tar.getnames()
                    model = row.artifact or ""
                    publish([stage / n for n in names if n != model] + [stage / model], out_dir)
                row.artifact = str(out_dir / (row.artifact or ""))
                queue.insert(0, ("bench", (row, files_ref)))
            run.put(row)
        else:
            run.result.benchmarked += 1
            run.put(row)


def _memory_request(run: _Run) -> int:
    """Bytes a conversion task asks Ray for: the exporter holds several copies of the weights."""
    base = run.result.baseline
    weights = base.size_bytes if base is not None and base.size_bytes else 0
    return int(max(512 * 2**20, 8 * weights))


def _task_error(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    if isinstance(cause, EdgekitError):
        return cause.problem
    text = str(cause or e).strip().splitlines()
    return f"the Ray task failed: {text[-1] if text else type(e).__name__}"
