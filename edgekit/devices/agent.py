"""The device side of a remote call. Its source is sent with every call and run there as
``python -c <this file> VERB JOB_JSON``, so it matches the caller's version and works before edgekit is
installed on the device: ``prepare`` and ``place`` use only the standard library; ``bench`` and
``run`` import the device's edgekit (its runtime-only install) and measure in an isolated child.

Files arrive as ``blobs/<sha256>.part`` (SFTP, resumable); ``place`` checks each hash, renames it to
``blobs/<sha256>`` and links the artifact's files under ``artifacts/<key>/`` by one rename, so
nothing half-written is ever used. The reply is one JSON line on stdout.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from importlib import metadata, util
from pathlib import Path
from typing import Any


class Refused(Exception):
    """A problem on the device, reported as ``{"error", "kind"}``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _os_kind(e: OSError) -> str:
    return {errno.ENOSPC: "nospace", errno.EDQUOT: "nospace", errno.EROFS: "readonly",
            errno.EACCES: "readonly", errno.EPERM: "readonly"}.get(e.errno or 0, "oserror")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def prepare(job: dict[str, Any]) -> dict[str, Any]:
    """Make the work directory; say which blobs exist, how much of each part arrived, free space,
    and which of the modules in ``need`` are importable."""
    work = Path(job["workdir"]).expanduser()
    blobs = work / "blobs"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        (work / "artifacts").mkdir(exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=blobs)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise Refused(_os_kind(e), f"cannot write in {work}: {e.strerror}") from None
    st = os.statvfs(blobs)
    have, parts = [], {}
    for b in job.get("blobs", []):
        sha = b["sha256"]
        if (blobs / sha).is_file() and (blobs / sha).stat().st_size == b["bytes"]:
            have.append(sha)
        elif (blobs / f"{sha}.part").is_file():
            parts[sha] = (blobs / f"{sha}.part").stat().st_size
    return {"workdir": str(work.resolve()), "have": have, "parts": parts,
            "free_bytes": st.f_bavail * st.f_frsize, "edgekit": _version("edgekit"),
            "python": sys.version.split()[0], "executable": sys.executable,
            "modules": {m: util.find_spec(m) is not None for m in job.get("need", [])}}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def place(job: dict[str, Any]) -> dict[str, Any]:
    """Turn verified parts into blobs and the artifact's directory; returns the model's path."""
    work = Path(job["workdir"]).expanduser()
    blobs, final = work / "blobs", work / "artifacts" / job["key"]
    for f in job["files"]:
        blob, part = blobs / f["sha256"], blobs / f"{f['sha256']}.part"
        if blob.is_file():
            continue
        if not part.is_file():
            raise Refused("missing", f"{f['path']} was not sent (no {part.name})")
        if _sha256(part) != f["sha256"]:
            part.unlink()
            raise Refused("corrupt", f"{f['path']} arrived corrupted (sha256 mismatch); the part was deleted")
        os.replace(part, blob)
    if not final.is_dir():
        stage = Path(tempfile.mkdtemp(prefix=f".{job['key']}-", dir=final.parent))
        try:
            for f in job["files"]:
                dst = stage / f["path"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(blobs / f["sha256"], dst)
                except OSError:
                    shutil.copyfile(blobs / f["sha256"], dst)
            os.rename(stage, final)
        except OSError as e:
            shutil.rmtree(stage, ignore_errors=True)
            if not final.is_dir():  # another call may have placed it first
                raise Refused(_os_kind(e), f"cannot place the artifact in {final.parent}: {e.strerror}") from None
    return {"dir": str(final), "model": str(final / job["model"])}


def discard(job: dict[str, Any]) -> dict[str, Any]:
    """Delete the named parts (after a failed upload), so nothing half-written stays."""
    blobs = Path(job["workdir"]).expanduser() / "blobs"
    for sha in job["parts"]:
        (blobs / f"{sha}.part").unlink(missing_ok=True)
    return {"discarded": len(job["parts"])}


def _stdin_npz(work: Path) -> Path | None:
    data = sys.stdin.buffer.read()
    if not data:
        return None
    fd, tmp = tempfile.mkstemp(prefix="inputs-", suffix=".npz", dir=work)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(tmp)


def bench(job: dict[str, Any]) -> dict[str, Any]:
    """Place, then benchmark in an isolated child with the device's edgekit; host block around it."""
    from edgekit.harness import benchmark
    from edgekit.host import host_info

    model = place(job)["model"]
    inputs = _stdin_npz(Path(job["workdir"]).expanduser())
    try:
        before = host_info(job["name"])
        row = benchmark(model, isolated=True, inputs=inputs, timeout=job["timeout"], **job["options"])
        return {"row": row.to_dict(), "host": host_info(since=before)}
    finally:
        if inputs is not None:
            inputs.unlink(missing_ok=True)


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Place, then run the feeds (an npz on stdin) in an isolated child; outputs come back as npz."""
    import numpy as np

    from edgekit.errors import EdgekitError
    from edgekit.host import host_info
    from edgekit.isolation import _pack, _unpack, run_isolated

    model = place(job)["model"]
    data = sys.stdin.buffer.read()
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    feeds = _unpack(arrays, len({k.partition("/")[0] for k in arrays}))
    try:
        outputs, signature = run_isolated(model, feeds, timeout=job["timeout"], **job["options"])
    except EdgekitError as e:
        return {"error": e.problem, "fix": e.fix, "kind": "runtime"}
    buf = io.BytesIO()
    np.savez(buf, **_pack(outputs))
    return {"outputs": base64.b64encode(buf.getvalue()).decode(), "count": len(outputs),
            "signature": signature.to_dict(), "host": host_info(job["name"])}


VERBS = {"prepare": prepare, "place": place, "discard": discard, "bench": bench, "run": run}


def main(argv: list[str]) -> None:
    verb, job = argv[1], json.loads(argv[2])
    try:
        reply = VERBS[verb](job)
    except Refused as e:
        reply = {"error": str(e), "kind": e.kind}
    except ModuleNotFoundError as e:
        reply = {"error": f"{e.name} is not installed on the device", "kind": "missing-module", "module": e.name}
    except OSError as e:
        reply = {"error": f"{e.strerror or e}: {e.filename or ''}".strip(": "), "kind": _os_kind(e)}
    sys.stdout.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main(sys.argv)
