"""`edgekit matrix --on DEVICE` without Ray: each row's timing and its device-parity check share one
SSH connection (counted by the loopback sshd itself, from its "Connection from" log lines)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.matrix import BenchSettings, matrix
from tests import sshd_device as sd

pytestmark = pytest.mark.slow
pytest.importorskip("paramiko")
if not Path(sd.SSHD).is_file():
    pytest.skip("needs Debian's openssh-server: apt-get install -y openssh-server", allow_module_level=True)


def test_one_row_on_a_device_makes_one_ssh_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.devices.config import parse_target, save_device
    from edgekit.devices.remote import Device
    from edgekit.devices.setup import plan, setup

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # inventory and known_hosts
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the user's ~/.ssh is not read
    with sd.sshd(tmp_path / "sshd", log_level="VERBOSE") as server:
        spec = parse_target(server.url, name="loop", identity=str(server.user_key), python=str(sd.device_venv()),
                            workdir=str(tmp_path / "work"))
        with Device(spec, accept_new_host_key=True) as d:  # records the host key
            setup(d, plan(d, "onnxruntime", wheel=sd.edgekit_wheel(), offline=True), timeout=300)
        save_device(spec)
        before = server.connections()
        assert before >= 1  # the setup's own: the count is sshd's, not ours
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
        example = torch.from_numpy(np.random.default_rng(7).standard_normal((2, 16)).astype(np.float32))
        res = matrix(net, (example,), input_names=["x"], output_names=["y"], name="m", targets="onnx",
                     precisions="fp32", out=tmp_path / "out", plot=False,
                     bench=BenchSettings(warmup=1, runs=5, isolated=True, on="loop"))
        made = server.connections() - before
    rows = [r for r in res.rows if r.format != "pytorch"]
    assert [r.status for r in rows] == ["ok"], [r.reason for r in rows]
    # timed there and compared with this machine's outputs through the same connection
    assert all(r.p50_ms and r.device_parity["agree"] is True for r in rows), [r.device_parity for r in rows]
    assert made == len(rows), f"{made} SSH connections for {len(rows)} rows"
