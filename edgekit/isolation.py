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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ChildResult:
    """How a child interpreter ended: its last JSON line, or the signal that killed it."""

    reply: dict[str, Any] | None
    returncode: int
    signal: str | None = None  # e.g. "SIGABRT" when a native library aborted the child
    timed_out: bool = False
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.reply is not None and "error" not in self.reply

    def problem(self) -> str:
        """The child's own error message, or the last line it wrote to stderr."""
        return (self.reply or {}).get("error") or self.stderr_tail or "no output"


def run_child(module: str, job: dict[str, Any], timeout: float) -> ChildResult:
    """Run ``python -m module`` with ``job`` as JSON on stdin; never raises for a dead child."""
    try:
        proc = subprocess.run([sys.executable, "-m", module], input=json.dumps(job), capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired:
        return ChildResult(None, -1, timed_out=True)
    tail = (proc.stderr.strip().splitlines() or [""])[-1]
    if proc.returncode < 0:
        return ChildResult(None, proc.returncode, signal.Signals(-proc.returncode).name, stderr_tail=tail)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return ChildResult(json.loads(lines[-1]) if lines else None, proc.returncode, stderr_tail=tail)


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
        child = run_child("edgekit._run_worker", job, timeout)
        if child.timed_out:
            raise RuntimeFailure(f"{Path(path).name} gave no result within {timeout:.0f} s in a clean process",
                                 fix="check the model on a smaller input, or raise the timeout")
        if child.signal:
            raise RuntimeFailure(f"the runtime crashed ({child.signal}) running {Path(path).name} in a clean process",
                                 fix="this model cannot run in this runtime build: try another precision "
                                 "or runtime; the calling process was not affected")
        if not child.ok:
            raise RuntimeFailure(f"running {Path(path).name} in a clean process failed: {child.problem()}",
                                 fix=(child.reply or {}).get("fix") or "run it directly with `edgekit run` to see the error")
        reply = child.reply
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
