"""Pieces every bench script shares: the host description and the eager PyTorch text runner."""

from __future__ import annotations

import argparse
import os
import platform
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (what a result was measured on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def text_feed(tokenizer: Any, names: Sequence[str], doc: str, max_length: int = 128
              ) -> dict[str, np.ndarray]:
    """One document padded to ``max_length`` tokens, keyed by the artifact's input names."""
    enc = tokenizer([doc], padding="max_length", truncation=True, max_length=max_length,
                    return_tensors="np")
    return {n: enc[n].astype(np.int64) for n in names}


def eager_encoder(model: Any) -> Callable[[dict[str, Any]], np.ndarray]:
    """The eager PyTorch encoder as ``fn(torch_feed) -> last_hidden_state`` (inference mode)."""
    import torch

    def run(feed: dict[str, Any]) -> np.ndarray:
        with torch.inference_mode():
            return model(**feed).last_hidden_state.numpy()

    return run


def torch_feed(feed: dict[str, np.ndarray]) -> dict[str, Any]:
    """The same arrays as torch tensors (shared memory), converted once outside the timed loop."""
    import torch

    return {n: torch.from_numpy(v) for n, v in feed.items()}


def add_timing_args(ap: argparse.ArgumentParser, *, warmup: int, rounds: int, block: int,
                    threads: int = 2) -> None:
    """The interleaved-timing options every side-by-side bench takes."""
    ap.add_argument("--threads", type=int, default=threads)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--block", type=int, default=block)


def vm_rss_mb() -> float:
    """This process's resident memory now (``VmRSS``, MB; NaN where /proc has none)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return float("nan")


def run_worker(script: str, *args: str) -> dict[str, Any]:
    """``script`` run in a fresh Python process with ``args``: the JSON object on its last output line."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def offline_quiet() -> None:
    """No hub lookups, no tokenizer thread pool next to the timed runtimes, no library warnings."""
    warnings.simplefilter("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
