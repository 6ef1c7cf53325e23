"""Content-addressed push: each file of an artifact (model, companions, manifest, assets) is sent
once per device, as ``blobs/<sha256>``; a second push of the same bytes sends nothing.

An upload goes to ``blobs/<sha256>.part`` and resumes from the part's size after a broken link; the
device checks the hash before the blob is used. A full or read-only disk is found before any byte is
sent (free space is asked first) or, if it fills up during the upload, the part is deleted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.errors import RemoteDeviceError
from edgekit.fsutil import sha256_file
from edgekit.manifest import SUFFIX

if TYPE_CHECKING:
    from edgekit.devices.remote import Device

CHUNK = 1 << 20
_HASHES: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class FileEntry:
    """One file of an artifact: its path relative to the model's directory and its hash."""

    path: str
    local: Path
    sha256: str
    bytes: int

    def to_job(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class Bundle:
    """Everything a device needs to run one artifact; ``key`` names its directory there."""

    model: str
    files: tuple[FileEntry, ...]

    @property
    def key(self) -> str:
        listing = json.dumps(sorted((f.path, f.sha256) for f in self.files)).encode()
        return hashlib.sha256(listing).hexdigest()[:24]

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def job(self, workdir: str) -> dict[str, Any]:
        return {"workdir": workdir, "key": self.key, "model": self.model, "files": [f.to_job() for f in self.files]}


@dataclass(frozen=True)
class PushReport:
    """What one push sent: bytes over the link, bytes the device already had."""

    sent_bytes: int
    reused_bytes: int
    files_sent: int
    seconds: float


def _hash(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def bundle(path: str | Path) -> Bundle:
    """The files of the artifact at ``path``: the manifest's list (with assets) plus the manifest, or,
    without one, the model file and its same-named companions (``m.onnx.data``, ``m.bin``)."""
    from edgekit.runtime import resolve_artifact

    ref = resolve_artifact(path)
    base = ref.path.parent
    names: list[str] = []
    if ref.manifest is not None:
        names = [str(e["path"]) for e in ref.manifest.files if (base / str(e["path"])).is_file()]
        names.append(ref.path.name + SUFFIX)
    else:
        names = [p.name for p in base.glob(ref.path.name + "*") if p.is_file() and p.name != ref.path.name]
        if ref.path.suffix == ".xml" and ref.path.with_suffix(".bin").is_file():
            names.append(ref.path.with_suffix(".bin").name)
    names = sorted(set(names) - {ref.path.name}) + [ref.path.name]
    files = tuple(FileEntry(n, base / n, _hash(base / n), (base / n).stat().st_size) for n in names)
    return Bundle(ref.path.name, files)


def push(device: Device, b: Bundle) -> PushReport:
    """Send the blobs of ``b`` that the device lacks; the device places them at the next call."""
    import time

    t0 = time.perf_counter()
    state = device.agent("prepare", {"workdir": device.spec.workdir,
                                     "blobs": [f.to_job() for f in b.files]}, timeout=60)
    have = set(state["have"])
    todo = [f for f in b.files if f.sha256 not in have]
    todo = list({f.sha256: f for f in todo}.values())  # the same bytes under two names go once
    sizes = {f.sha256: f.bytes for f in todo}  # a part longer than its file is stale: sent again whole
    parts = {sha: n for sha, n in state["parts"].items() if n <= sizes.get(sha, -1)}
    needed = sum(f.bytes - parts.get(f.sha256, 0) for f in todo)
    if needed > state["free_bytes"]:
        raise device.disk_error("nospace", f"{needed / 1e6:.1f} MB are needed in {state['workdir']} and "
                                f"{state['free_bytes'] / 1e6:.1f} MB are free; nothing was sent")
    sent = 0
    sftp = device.link.sftp(timeout=device.io_timeout)
    for f in todo:
        remote = f"{state['workdir']}/blobs/{f.sha256}.part"
        offset = parts.get(f.sha256, 0)
        try:
            with open(f.local, "rb") as src, sftp.open(remote, "ab" if offset else "wb") as dst:
                dst.set_pipelined(True)
                src.seek(offset)
                while block := src.read(CHUNK):
                    dst.write(block)
                    sent += len(block)
        except OSError as e:  # paramiko raises IOError for an SFTP failure status
            if isinstance(e, TimeoutError) or "timed out" in str(e):
                device.link.close()
                raise RemoteDeviceError(device.spec.name, f"the upload of {f.path} stalled; "
                                        "the part already sent is kept and the next push resumes it",
                                        fix="check the link, then run the command again") from None
            _discard(device, [x.sha256 for x in todo])
            again = device.agent("prepare", {"workdir": device.spec.workdir, "blobs": []}, timeout=60, check=False)
            kind = again.get("kind") or ("nospace" if again.get("free_bytes", 1) < CHUNK else "oserror")
            raise device.disk_error(kind, f"writing {f.path} failed ({e}); the partial file was deleted") from None
    return PushReport(sent, b.bytes - sent, len(todo), time.perf_counter() - t0)


def _discard(device: Device, shas: list[str]) -> None:
    try:
        device.agent("discard", {"workdir": device.spec.workdir, "parts": shas}, timeout=60, check=False)
    except RemoteDeviceError:
        pass  # the link is gone: the parts stay for a resumed push
