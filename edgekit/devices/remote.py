"""A device reached over SSH: inventory, setup, and the same harness run there.

``Device.bench`` pushes the artifact (content-addressed), runs ``edgekit.harness.benchmark`` on
the device in an isolated child (a crash there is a failed row), and returns the same
:class:`~edgekit.harness.BenchResult` with the device's host block. ``Device.run`` sends inputs and
brings the outputs back, for parity with a local run.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.devices.config import DeviceSpec, resolve
from edgekit.devices.ssh import SSHLink
from edgekit.errors import ConfigError, RemoteDeviceError

if TYPE_CHECKING:
    import numpy as np

    from edgekit.devices.push import Bundle, PushReport
    from edgekit.harness import BenchResult
    from edgekit.types import Signature

_HERE = Path(__file__).resolve().parent
AGENT = (_HERE / "agent.py").read_text
HOST = (_HERE.parent / "host.py").read_text
# the pip extra that installs each runtime on a device (runtime-only: no torch, no converter)
EXTRAS = {"onnxruntime": "onnxruntime", "openvino": "openvino", "litert": "litert", "llamacpp": "llamacpp"}


def runtime_for(path: str | Path, runtime: str | None = None) -> tuple[str, str]:
    """(runtime name, Python module) that runs the artifact on a device: the named runtime, or the
    format's own (what :func:`edgekit.runtime.runtime_for` picks when it is installed there)."""
    from edgekit.runtime import resolve_artifact
    from edgekit.runtimes import RUNTIMES

    if runtime is not None:
        cls = RUNTIMES.get(runtime)
    else:
        fmt = resolve_artifact(path).format
        readers = [c for _, c in RUNTIMES.items() if fmt in c.formats]
        cls = next((c for c in readers if c.formats[0] is fmt), readers[0])
    return cls.name, cls.module


class Device:
    """One device; the SSH connection opens on first use and reopens after a broken link."""

    def __init__(self, spec: DeviceSpec, *, accept_new_host_key: bool = False, io_timeout: float = 120.0,
                 margin: float = 60.0) -> None:
        self.spec = spec
        self.link = SSHLink(spec, accept_new_host_key=accept_new_host_key)
        self.io_timeout = io_timeout  # a stalled file transfer fails after this long
        self.margin = margin  # a remote bench/run may take its timeout plus this (start-up, placing files)
        self.last_push: PushReport | None = None
        self.last_host: dict[str, Any] | None = None  # the host block of the last run()

    @property
    def name(self) -> str:
        return self.spec.name

    def connect(self) -> Device:
        self.link.connect()
        return self

    def close(self) -> None:
        self.link.close()

    def __enter__(self) -> Device:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- remote calls ---------------------------------------------------------------------------
    def _python(self, code: str, args: list[str], *, stdin: bytes = b"", timeout: float) -> dict[str, Any]:
        done = self.link.run([self.spec.python, "-c", code, *args], stdin=stdin, timeout=timeout)
        lines = [ln for ln in done.stdout.decode(errors="replace").splitlines() if ln.startswith("{")]
        if lines:
            return json.loads(lines[-1])
        if done.returncode == 127 or "No such file" in done.tail() or "not found" in done.tail():
            raise RemoteDeviceError(self.name, f"there is no Python at {self.spec.python!r}",
                                    fix="install python3 on the device, or give its path: "
                                    f"edgekit devices add {self.name} {self.spec.url} --python ~/venv/bin/python")
        raise RemoteDeviceError(self.name, f"the remote process exited with {done.returncode}: "
                                f"{done.tail() or 'no output'}", fix="run the command again with the device "
                                "at hand; `edgekit devices --on` shows what it has")

    def agent(self, verb: str, job: dict[str, Any], *, stdin: bytes = b"", timeout: float,
              check: bool = True) -> dict[str, Any]:
        """Run one verb of :mod:`edgekit.devices.agent` on the device; errors become exceptions."""
        reply = self._python(AGENT(), [verb, json.dumps(job)], stdin=stdin, timeout=timeout)
        if check and "error" in reply:
            kind = reply.get("kind")
            if kind in ("nospace", "readonly"):
                raise self.disk_error(kind, reply["error"])
            if kind == "missing-module":
                raise self.missing(reply.get("module") or "edgekit")
            raise RemoteDeviceError(self.name, reply["error"], fix=reply.get("fix") or
                                    "see `edgekit devices --on " + self.name + "`")
        return reply

    def disk_error(self, kind: str, detail: str) -> RemoteDeviceError:
        """The error for a work directory that is full or read-only; nothing half-written stays."""
        what = {"nospace": "the disk is full", "readonly": "the work directory is read-only"}.get(kind, "writing failed")
        return RemoteDeviceError(self.name, f"{what} ({detail})",
                                 fix="free space on the device, or use a writable disk with room: "
                                 f"edgekit devices add {self.name} {self.spec.url} --workdir /path/with/space")

    def missing(self, module: str, runtime: str | None = None) -> RemoteDeviceError:
        """The error for a device that lacks edgekit or a runtime, with the setup command."""
        extra = EXTRAS.get(runtime or "", "onnxruntime")
        what = "edgekit" if module == "edgekit" else f"the runtime {runtime or module} ({module})"
        return RemoteDeviceError(self.name, f"{what} is not installed for {self.spec.python} on the device",
                                 fix=f"edgekit devices setup {self.name} --runtime {extra}   "
                                 f"(runs there: {self.spec.python} -m pip install 'edgekit[{extra}]')")

    # -- what the device has --------------------------------------------------------------------
    def info(self, timeout: float = 120.0) -> dict[str, Any]:
        """The device's host block, with each installed runtime probed for what it can use."""
        block = self._python(HOST(), [self.name], timeout=timeout)
        block["transport"] = self.spec.url
        block["missing"] = {rt: f"{self.spec.python} -m pip install 'edgekit[{extra}]'"
                            for rt, extra in EXTRAS.items() if rt not in block.get("runtimes", {})}
        if not block.get("edgekit"):
            block["missing"]["edgekit"] = f"{self.spec.python} -m pip install 'edgekit[onnxruntime]'"
        return block

    def _ready(self, path: str | Path, runtime: str | None) -> Bundle:
        """Push the artifact after checking the device can run it; the bundle to name in the job."""
        from edgekit.devices.push import bundle, push

        name, module = runtime_for(path, runtime)
        b = bundle(path)
        state = self.agent("prepare", {"workdir": self.spec.workdir, "need": ["edgekit", module]}, timeout=60)
        if not state["modules"].get("edgekit"):
            raise self.missing("edgekit")
        if not state["modules"].get(module):
            raise self.missing(module, name)
        self.last_push = push(self, b)
        return b

    # -- measuring there ------------------------------------------------------------------------
    def bench(self, path: str | Path, *, inputs: Any = None, timeout: float = 600.0,
              runtime: str | None = None, **options: Any) -> BenchResult:
        """:func:`edgekit.benchmark` on the device; a crash, timeout or broken link is a failed row."""
        from edgekit.harness import BenchResult

        if any(Path(str(t)).is_file() for t in options.get("task_inputs") or []):
            raise ConfigError("image files cannot be benchmarked on a device yet (they are not pushed)",
                              fix="benchmark with --text, or with an --input .npz of the preprocessed tensors")
        b = self._ready(path, runtime)
        job = {**b.job(self.spec.workdir), "name": self.name, "timeout": timeout,
               "options": {"runtime": runtime, **options}}
        try:
            reply = self.agent("bench", job, stdin=_npz_bytes(inputs), timeout=timeout + self.margin)
        except RemoteDeviceError as e:
            if not self._is_link_failure(e):
                raise
            return BenchResult(artifact=str(path), status="failed", mode="isolated", reason=e.problem,
                               host={"name": self.name, "transport": self.spec.url})
        row = BenchResult.from_dict(reply["row"])
        row.artifact = str(path)
        row.host = {**reply["host"], "transport": self.spec.url, "push": _push_dict(self.last_push)}
        return row

    def run(self, path: str | Path, feeds: list[dict[str, np.ndarray]], *, timeout: float = 600.0,
            runtime: str | None = None, **options: Any) -> tuple[list[dict[str, np.ndarray]], Signature]:
        """Run each feed on the device (isolated there); the outputs and the device's signature."""
        import numpy as np

        from edgekit.isolation import _pack, _unpack
        from edgekit.types import Signature

        b = self._ready(path, runtime)
        buf = io.BytesIO()
        np.savez(buf, **_pack(feeds))
        job = {**b.job(self.spec.workdir), "name": self.name, "timeout": timeout,
               "options": {"runtime": runtime, **options} if runtime else options}
        reply = self.agent("run", job, stdin=buf.getvalue(), timeout=timeout + self.margin)
        import base64

        with np.load(io.BytesIO(base64.b64decode(reply["outputs"])), allow_pickle=False) as z:
            outputs = _unpack({k: z[k] for k in z.files}, reply["count"])
        self.last_host = reply.get("host")
        return outputs, Signature.from_dict(reply["signature"])

    @staticmethod
    def _is_link_failure(e: RemoteDeviceError) -> bool:
        from edgekit.devices.ssh import CommandTimeout

        return isinstance(e, CommandTimeout) or "link" in e.problem or "exited with" in e.problem


def _npz_bytes(inputs: Any) -> bytes:
    if inputs is None:
        return b""
    if isinstance(inputs, (str, Path)):
        return Path(inputs).read_bytes()
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in dict(inputs).items()})
    return buf.getvalue()


def _push_dict(report: PushReport | None) -> dict[str, Any] | None:
    if report is None:
        return None
    return {"sent_bytes": report.sent_bytes, "reused_bytes": report.reused_bytes,
            "files_sent": report.files_sent, "seconds": round(report.seconds, 3)}


def bench_on(on: str | DeviceSpec | Device, path: str | Path, **kwargs: Any) -> BenchResult:
    """:meth:`Device.bench` on a device, a saved name or an ``ssh://`` address (connected for this call)."""
    if isinstance(on, Device):
        return on.bench(path, **kwargs)
    with connect(on) as device:
        return device.bench(path, **kwargs)


def connect(target: str | DeviceSpec, *, accept_new_host_key: bool = False) -> Device:
    """A connected :class:`Device` for a saved name or an ``ssh://user@host[:port]`` address.

    >>> with edgekit.devices.connect("ssh://pi@192.168.1.40") as pi:  # doctest: +SKIP
    ...     row = pi.bench("out/model-int8.onnx")
    """
    return Device(resolve(target), accept_new_host_key=accept_new_host_key).connect()
