"""Run an artifact in a fresh interpreter: for verification in a clean runtime (one that has not
imported the converter's stack) and for probing runtimes that can abort the whole process.

A crash (a signal such as SIGABRT or SIGSEGV) becomes a :class:`RuntimeFailure`, never a dead caller.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import EdgekitError, RuntimeFailure
from edgekit.types import Signature

Feed = dict[str, np.ndarray]


def _pack(feeds: list[Feed]) -> dict[str, np.ndarray]:
    return {f"{i}/{name}": arr for i, feed in enumerate(feeds) for name, arr in feed.items()}


def _unpack(arrays: dict[str, np.ndarray], count: int) -> list[Feed]:
    out: list[Feed] = [{} for _ in range(count)]
    for key, arr in arrays.items():
        index, _, name = key.partition("/")
        out[int(index)][name] = arr
    return out


def run_isolated(path: str | Path, feeds: list[Feed] | None = None, *, timeout: float = 600.0,
                 **load_options: Any) -> tuple[list[Feed], Signature]:
    """Load ``path`` in a new process, run each feed (or one synthesized feed when None), and
    return the outputs and the signature the runtime saw there."""
    with tempfile.TemporaryDirectory(prefix="edgekit-isolated-") as tmp:
        feeds_path, outs_path = Path(tmp) / "feeds.npz", Path(tmp) / "outputs.npz"
        if feeds is not None:
            np.savez(feeds_path, **_pack(feeds))
        job = {"path": str(path), "feeds": str(feeds_path) if feeds is not None else None,
               "outputs": str(outs_path), "load": load_options}
        try:
            proc = subprocess.run([sys.executable, "-m", "edgekit._run_worker"], input=json.dumps(job),
                                  capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except subprocess.TimeoutExpired as e:
            raise RuntimeFailure(f"{Path(path).name} gave no result within {timeout:.0f} s in a clean process",
                                 fix="check the model on a smaller input, or raise the timeout") from e
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            raise RuntimeFailure(f"the runtime crashed ({name}) running {Path(path).name} in a clean process",
                                 fix="this model cannot run in this runtime build: try another precision "
                                 "or runtime; the calling process was not affected")
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        reply = json.loads(lines[-1]) if lines else {}
        if proc.returncode != 0 or "error" in reply or not lines:
            problem = reply.get("error") or (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeFailure(f"running {Path(path).name} in a clean process failed: {problem}",
                                 fix=reply.get("fix") or "run it directly with `edgekit run` to see the error")
        with np.load(outs_path, allow_pickle=False) as z:
            outputs = _unpack({k: z[k] for k in z.files}, reply["count"])
        return outputs, Signature.from_dict(reply["signature"])


def _worker() -> None:
    """Entry of the child process (``python -m edgekit._run_worker``)."""
    from edgekit.inputs import synthesize
    from edgekit.runtime import load

    job = json.loads(sys.stdin.read())
    try:
        with load(job["path"], **job["load"]) as model:
            if job["feeds"]:
                with np.load(job["feeds"], allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
                count = len({k.partition("/")[0] for k in arrays})
                feeds = _unpack(arrays, count)
            else:
                feeds = [synthesize(model.signature)]
            outputs = [model.run(f) for f in feeds]
            np.savez(job["outputs"], **_pack(outputs))
            reply = {"count": len(outputs), "signature": model.signature.to_dict()}
    except EdgekitError as e:
        reply = {"error": e.problem, "fix": e.fix}
    sys.stdout.write(json.dumps(reply) + "\n")
