"""Probe a ``.tflite`` file in a fresh process before the caller loads it, once per file.

Some models abort the LiteRT process (SIGABRT in a kernel's CHECK) instead of raising; loading
them in the caller would kill it. The first load of a file runs it once in a child process
(:func:`edgekit.isolation.run_isolated`, with ``probe=False`` so the child does not probe again);
a crash becomes a :class:`~edgekit.errors.RuntimeFailure`, a clean run is remembered.

Where the "probed ok" fact lives: a small marker file in the user's cache directory
(``$EDGEKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgekit``, else ``~/.cache/edgekit``, under
``litert-probe/``), keyed by the file's sha256 and size plus the runtime, its version and the
device. Not in the manifest beside the artifact: whether a file crashes depends on the machine's
LiteRT build and delegate, not on the artifact alone; artifact folders are often read-only on a
kiosk; and a bare ``.tflite`` has no manifest. A second marker keyed by path, size, mtime and
inode makes later loads skip hashing the file. If the cache cannot be written the probe simply
runs again next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgekit.errors import RuntimeFailure

CACHE_SUBDIR = "litert-probe"


def cache_dir() -> Path:
    """Where probe markers are kept."""
    from edgekit.fsutil import cache_root

    return cache_root() / CACHE_SUBDIR


def _key(*parts: Any) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:40]


def _context(runtime: str, version: str | None, device: str, options: Mapping[str, Any]) -> str:
    return json.dumps({"runtime": runtime, "version": version, "device": device,
                       "options": {k: options[k] for k in sorted(options)}}, sort_keys=True, default=str)


def _is_crash(e: RuntimeFailure) -> bool:
    """A signal or a hang in the child (what the probe exists for), not an ordinary error.

    An ordinary error (bad file, missing delegate) is left to the in-process load, which raises
    it with its own class; the two prefixes are edgekit.isolation's messages (tests pin them).
    """
    return isinstance(e.__cause__, subprocess.TimeoutExpired) or e.problem.startswith("the runtime crashed")


def ensure_probed(path: Path, *, runtime: str, version: str | None, device: str,
                  threads: int | None, options: Mapping[str, Any], timeout: float) -> str:
    """Probe ``path`` unless a marker says it ran here before. Returns ``"cached"``, ``"ok"`` or
    ``"error"`` (the child failed without crashing); raises :class:`RuntimeFailure` on a crash."""
    from edgekit.integrity import file_sha256
    from edgekit.isolation import run_isolated

    context = _context(runtime, version, device, options)
    st = path.stat()
    folder = cache_dir()
    fast = folder / f"stat-{_key(path.resolve(), st.st_size, st.st_mtime_ns, st.st_ino, context)}"
    if fast.exists():
        return "cached"
    digest = file_sha256(path)  # the hash load() checked against the manifest, computed once
    slow = folder / f"ok-{_key(digest, st.st_size, context)}"
    probed = not slow.exists()
    if probed:
        try:
            run_isolated(path, None, timeout=timeout, runtime=runtime, device=device, threads=threads,
                         probe=False, **options)
        except RuntimeFailure as e:
            if _is_crash(e):
                raise RuntimeFailure(f"{path.name} crashed LiteRT in a probe process: {e.problem}",
                                     fix="this model cannot run in this LiteRT build/device: convert another "
                                     "precision (int8 with int8 activations instead of int16, or fp32), or try "
                                     "another device; your process was not affected") from e
            return "error"
    record = json.dumps({"file": path.name, "sha256": digest, "bytes": st.st_size, "context": json.loads(context),
                         "probed": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for marker in (slow, fast):
            tmp = marker.with_name(f".{marker.name}.{os.getpid()}.tmp")
            tmp.write_text(record + "\n")
            os.replace(tmp, marker)
    except OSError:
        pass  # a read-only home: probe again next time rather than fail a load that works
    return "ok" if probed else "cached"
