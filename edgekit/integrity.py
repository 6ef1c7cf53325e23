"""Is this the file its manifest describes? :func:`check_integrity` compares every file the
manifest lists with the recorded size and sha256.

``edgekit.load`` calls it before the runtime reads the model (``verify=False`` skips it) and the
server before it serves one, so a weight byte flipped on disk is an :class:`ArtifactError`, not a
changed label. Sizes are checked on every call; the sha256 of a file is computed once per file
identity (resolved path, size, mtime, inode) and remembered in this process and in the user's cache
directory (``sha256/`` beside ``litert-probe/``), so a second load or a second process pays nothing.
A file rewritten in place with the same size and its mtime set back is not noticed: that is the
price of not hashing on every load.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from edgekit.errors import ArtifactError
from edgekit.fsutil import cache_root, sha256_file
from edgekit.manifest import Manifest, manifest_path

CACHE_SUBDIR = "sha256"
_MEMO: dict[tuple[str, int, int, int], str] = {}
_LOCK = threading.Lock()


def _identity(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino


def _marker(identity: tuple[str, int, int, int]) -> Path:
    import hashlib

    key = hashlib.sha256("|".join(map(str, identity)).encode()).hexdigest()[:40]
    return cache_root() / CACHE_SUBDIR / key


def file_sha256(path: Path) -> str:
    """The sha256 of ``path``, hashed once per file identity (this process, then the disk cache)."""
    identity = _identity(path)
    with _LOCK:
        known = _MEMO.get(identity)
    if known is not None:
        return known
    marker = _marker(identity)
    try:
        known = marker.read_text().strip()
    except OSError:
        known = ""
    if len(known) != 64:
        known = sha256_file(path)
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_name(f".{marker.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(known + "\n")
            os.replace(tmp, marker)
        except OSError:
            pass  # a read-only home: hash again in the next process rather than fail
    with _LOCK:
        _MEMO[identity] = known
    return known


def check_integrity(model_path: str | Path, manifest: Manifest, *, require_all: bool = False) -> int:
    """Check the files ``manifest`` lists beside ``model_path``: present, of the recorded size and
    sha256. Returns how many were checked; raises :class:`ArtifactError` naming the first that is not.

    Files in ``NAME.assets/`` (tokenizer, labels) are checked when present; their absence is an error
    only with ``require_all=True`` (a server needs them, running raw tensors does not).

    >>> check_integrity("out/m-int8.onnx", read_manifest(Path("out/m-int8.onnx")))  # doctest: +SKIP
    1
    """
    model_path = Path(model_path)
    folder, checked = model_path.parent, 0
    for entry in manifest.files:
        rel = str(entry.get("path", ""))
        path = folder / rel
        if not path.is_file():
            if "/" in rel and not require_all:
                continue
            raise ArtifactError(f"{rel} is listed in the manifest of {model_path.name} but is missing",
                                fix="copy the whole artifact again (the model, its companion files, "
                                f"{manifest_path(model_path).name} and NAME.assets/)")
        size, want = entry.get("bytes"), entry.get("sha256")
        have = path.stat().st_size
        if size is not None and have != int(size):
            raise ArtifactError(f"{path.name} is {have:,} bytes, its manifest records {int(size):,}: the file "
                                "was truncated, extended or replaced",
                                fix="copy the artifact again or re-run `edgekit convert`")
        if want and file_sha256(path) != want:
            raise ArtifactError(f"{path.name} does not match the sha256 recorded in its manifest: the file was "
                                "modified",
                                fix="copy the artifact again or re-run `edgekit convert`; to run the file as it "
                                "is anyway, load it with verify=False")
        checked += 1
    return checked
