"""Probe a GGUF file with llama.cpp in a child process before the caller loads it.

llama.cpp reports most bad files as a failed load, but some (a tensor of the wrong shape for
its architecture, a vocabulary it cannot build) end in ``GGML_ASSERT`` / ``abort()``, which would
kill the calling process. The probe loads the file and decodes one token in a fresh interpreter;
its verdict is cached per file (path, size, modification time) for the life of the process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError

_VERDICTS: dict[tuple[str, int, int], None] = {}


def probe(path: Path, timeout: float = 300.0) -> None:
    """Raise :class:`ArtifactError` if llama.cpp cannot load and run ``path`` (or crashes on it)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _VERDICTS:
        return
    fix = "re-convert the model with `edgekit convert ... --to gguf`, or check it with llama.cpp's tools"
    try:
        proc = subprocess.run([sys.executable, "-m", "edgekit.runtimes.llamacpp.probe"],
                              input=json.dumps({"path": str(path)}), capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired as e:
        raise ArtifactError(f"llama.cpp did not load {path.name} within {timeout:.0f} s", fix=fix) from e
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        detail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        reason = next((ln for ln in detail if "GGML_ASSERT" in ln or "error" in ln.lower()), detail[-1] if detail else "")
        raise ArtifactError(f"llama.cpp crashes ({name}) loading {path.name}" + (f": {reason.strip()}" if reason else ""),
                            fix=fix + "; the calling process was not affected")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    reply = json.loads(lines[-1]) if lines else {}
    if proc.returncode != 0 or not reply.get("ok"):
        problem = reply.get("error") or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArtifactError(f"llama.cpp cannot load {path.name}: {problem}", fix=fix)
    _VERDICTS[key] = None


def _main() -> None:
    job = json.loads(sys.stdin.read())
    from edgekit.runtimes.llamacpp.log import LlamaLog, llama_cpp_module

    llama_cpp = llama_cpp_module()
    reply: dict[str, Any]
    try:
        llm = llama_cpp.Llama(job["path"], n_ctx=16, n_batch=16, n_threads=1, n_threads_batch=1,
                              verbose=False)
        try:
            llm.eval([max(llm.token_bos(), 0)])
        finally:
            llm.close()
        reply = {"ok": True}
    except Exception as e:  # a failed load is a ValueError; decode errors a RuntimeError
        reply = {"error": LlamaLog.last_error() or str(e)}
    sys.stdout.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    _main()
