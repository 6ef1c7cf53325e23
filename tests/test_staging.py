"""Staging folders left by a conversion killed with SIGKILL (issue 12, item 15): the next
conversion into the same ``--out`` removes those whose owner process is gone and says so; a live
conversion's folder and the user's own files are never touched."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import edgekit
from edgekit.cli import main as cli
from edgekit.fsutil import STAGING_PREFIX, remove_stale_staging, staging_dir

HOLD = """
import sys, time
from pathlib import Path
from edgekit.fsutil import staging_dir
with staging_dir(Path(sys.argv[1])) as stage:
    (stage / "half-written.onnx").write_bytes(b"0" * 1000)
    print(stage, flush=True)
    time.sleep(600)
"""


def killed_conversion(out: Path) -> Path:
    """A real process that stages work in ``out`` and is killed with SIGKILL (no cleanup runs)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        stage = Path(proc.stdout.readline().strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert stage.is_dir() and stage.parent == out and stage.name.startswith(STAGING_PREFIX)
    return stage


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_next_staging_removes_what_a_killed_conversion_left(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = killed_conversion(out)
    second = killed_conversion(out)  # its staging removed the first one's leftovers
    assert not first.exists()
    stale = [second, out / f"{STAGING_PREFIX}copy"]
    second.rename(stale[1])
    second.mkdir()
    (second / ".owner").write_text((stale[1] / ".owner").read_text())  # the same dead owner
    (out / "mine").mkdir()  # the user's own folder
    with pytest.warns(edgekit.EdgekitWarning) as record:
        with staging_dir(out) as stage:
            assert stage.is_dir()
    messages = [str(w.message) for w in record if issubclass(w.category, edgekit.EdgekitWarning)]
    names = ", ".join(sorted(p.name for p in stale))
    assert messages == [f"removed 2 staging folders left in {out} by conversions that were killed "
                        f"or crashed: {names}"]
    assert [p.name for p in out.iterdir()] == ["mine"]


def test_live_and_freshly_made_folders_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staging_dir(out) as live:  # this process is alive: its folder stays
        fresh = out / f"{STAGING_PREFIX}nowner"  # no owner record yet (being created): young, kept
        fresh.mkdir()
        old = out / f"{STAGING_PREFIX}legacy"  # an older edgekit's, hours old: stale
        old.mkdir()
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        foreign = out / f"{STAGING_PREFIX}remote"  # another machine's process: cannot tell, kept
        foreign.mkdir()
        (foreign / ".owner").write_text(json.dumps({"pid": 1, "host": "another-host", "start": "1"}))
        removed = remove_stale_staging(out)
        assert removed == [old]
        assert live.is_dir() and fresh.is_dir() and foreign.is_dir()
    assert not live.exists()


def test_a_reused_pid_does_not_keep_a_stale_folder(tmp_path: Path) -> None:
    """The owner record holds the process start time: a new process with the same pid is not the owner."""
    out = tmp_path / "out"
    stale = killed_conversion(out)
    owner = json.loads((stale / ".owner").read_text())
    owner["pid"] = os.getpid()  # as if the killed pid now belonged to this (younger or older) process
    (stale / ".owner").write_text(json.dumps(owner))
    assert remove_stale_staging(out) == [stale]


def test_cli_convert_says_it_removed_leftovers(tmp_path: Path) -> None:
    out = tmp_path / "out"
    stale = killed_conversion(out)
    program = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(Tiny().eval(), (torch.randn(2, 4),)), program)
    result = CliRunner().invoke(cli, ["convert", str(program), "--to", "onnx", "--precision", "fp32",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"warning: removed 1 staging folder left in {out}" in " ".join(result.stderr.split())
    assert not stale.exists()
