"""`edgekit matrix --ray`: the same rows on a real Ray cluster (a head and a second node process on this
machine), benchmarks only where their resource is and never overlapping, a killed worker retried, a
killed driver resumed, and a clear error without the `ray` extra."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.matrix import BenchSettings, matrix
from tests import sshd_device as sd
from tests.sshd_device import free_port

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

RAY = str(Path(sys.executable).with_name("ray"))
BENCH = BenchSettings(warmup=1, runs=5, isolated=False)
# loopback only; no token: the cluster lives and dies inside this test module
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _start(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run([RAY, "start", "--disable-usage-stats", "--num-cpus=1",
                           "--object-store-memory=150000000", *args],
                          env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]


@pytest.fixture(scope="module")
def config_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The device inventory of the second node (and of this process): a private XDG_CONFIG_HOME."""
    return tmp_path_factory.mktemp("ray-config")


@pytest.fixture(scope="module")
def cluster(config_home: Path) -> Iterator[str]:
    """A head that benchmarks here (edgekit_bench: 1) and a second node that reaches device 'loop'."""
    port = free_port()
    env = {**os.environ, **RAY_ENV}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in RAY_ENV.items():
            mp.setenv(k, v)
        _start(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                "--resources", json.dumps({"edgekit_bench": 1})], env)
        try:
            _start([f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                    "--resources", json.dumps({"edgekit_device_loop": 1})],
                   {**env, "XDG_CONFIG_HOME": str(config_home)})
            yield f"127.0.0.1:{port}"
        finally:
            if ray.is_initialized():
                ray.shutdown()
            subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def _mlp(seed: int, width: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 4)).eval()


def _eval(tmp: Path, net: nn.Module) -> Path:
    x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    with torch.inference_mode():
        labels = net(torch.from_numpy(x)).argmax(1).numpy()
    labels[:5] = (labels[:5] + 1) % 4
    np.savez(tmp / "eval.npz", x=x, labels=labels)
    return tmp / "eval.npz"


def _run(net: nn.Module, name: str, out: Path, eval_data: Path, **kw: object):
    example = torch.from_numpy(np.random.default_rng(7).standard_normal((2, 16)).astype(np.float32))
    kw.setdefault("bench", BENCH)
    return matrix(net, (example,), input_names=["x"], output_names=["y"], name=name, targets="onnx",
                  precisions="fp32,int8-dynamic,int4", eval_data=eval_data, out=out, plot=False, **kw)


STABLE = ("format", "precision", "status", "size_bytes", "metric_name", "metric", "metric_reference",
          "metric_delta", "artifact_sha256")


def test_two_sources_on_a_cluster_equal_local_runs(cluster: str, tmp_path: Path) -> None:
    for i, (seed, width) in enumerate(((0, 32), (1, 24))):
        net = _mlp(seed, width)
        eval_data = _eval(tmp_path, net)
        local = _run(net, f"m{i}", tmp_path / f"local{i}", eval_data)
        on_ray = _run(net, f"m{i}", tmp_path / f"ray{i}", eval_data, ray=cluster)
        assert [r.label for r in on_ray.rows] == [r.label for r in local.rows]  # each row once, in order
        for a, b in zip(local.rows, on_ray.rows):
            assert {k: getattr(a, k) for k in STABLE} == {k: getattr(b, k) for k in STABLE}, (a.label, b.reason)
            # parity is recomputed in the worker (one torch thread there): equal up to summation order
            assert a.cosine == pytest.approx(b.cosine, abs=1e-6), a.label
        assert all(r.status == "ok" and r.p50_ms for r in on_ray.rows)
        assert on_ray.converted == 3 and on_ray.benchmarked == 3
        # the published artifacts are the files the rows describe; nothing half-written stays behind
        names = sorted(p.name for p in (tmp_path / f"ray{i}").iterdir())
        assert names == sorted(p.name for p in (tmp_path / f"local{i}").iterdir())
        assert not [n for n in names if n.startswith(".edgekit-staging")]
        # one edgekit_bench in the cluster: benchmarks ran one after another
        windows = sorted(r.bench_window for r in on_ray.rows if r.bench_window)
        assert len(windows) == 3
        assert all(w1[1] <= w2[0] for w1, w2 in zip(windows, windows[1:])), windows


def test_a_resource_nobody_advertises_is_an_error_not_a_hang(cluster: str, tmp_path: Path) -> None:
    from edgekit.errors import ConfigError

    net = _mlp(0, 8)
    with pytest.raises(ConfigError) as e:
        matrix(net, (torch.randn(2, 16),), input_names=["x"], name="nodev", targets="onnx", precisions="fp32",
               out=tmp_path, bench=BenchSettings(warmup=1, runs=5, isolated=False, on="pi5"), plot=False,
               ray=cluster)
    assert "edgekit_device_pi5" in e.value.problem and "--resources" in e.value.fix


def test_device_benchmarks_need_the_device_resource(cluster: str, config_home: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """--on loop: every benchmark runs on the node advertising edgekit_device_loop, over SSH to the
    loopback device, one at a time; the conversions and accuracy stay the same."""
    if not Path(sd.SSHD).is_file():
        pytest.skip("needs Debian's openssh-server for the loopback device: apt-get install -y openssh-server")
    pytest.importorskip("paramiko")
    from edgekit.devices.config import parse_target, save_device
    from edgekit.devices.remote import Device
    from edgekit.devices.setup import plan, setup

    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    with sd.sshd(tmp_path / "sshd") as server:
        spec = parse_target(server.url, name="loop", identity=str(server.user_key), python=str(sd.device_venv()),
                            workdir=str(tmp_path / "work"))
        with Device(spec, accept_new_host_key=True) as d:  # records the host key in config_home
            setup(d, plan(d, "onnxruntime", wheel=sd.edgekit_wheel(), offline=True), timeout=300)
        save_device(spec)
        net = _mlp(3, 16)
        res = _run(net, "dev", tmp_path / "out", _eval(tmp_path, net), ray=cluster,
                   bench=BenchSettings(warmup=1, runs=5, isolated=True, on="loop"))
    rows = [r for r in res.rows if r.format != "pytorch"]
    assert [r.status for r in rows] == ["ok"] * 3, [r.reason for r in rows]
    assert all(r.p50_ms and r.eager_p50_ms is None for r in rows)  # no eager pairing across machines
    # the device's outputs were compared with this machine's on the benchmark feed
    assert all(r.device_parity["agree"] is True and r.device_parity["worst_cosine"] > 0.999 for r in rows)
    windows = sorted(r.bench_window for r in rows)
    assert all(w1[1] <= w2[0] for w1, w2 in zip(windows, windows[1:])), windows


def test_openvino_fp32_converted_in_a_worker_matches_the_original(cluster: str, tmp_path: Path) -> None:
    """An OpenVINO IR built in a Ray task: the verification feeds (calibration batches of 2 KiB, past
    numpy's small-buffer cache) come from the object store read-only; the runtime's copy of them was
    freed before infer() read it, so fp32 was a 'diverged' row (the digits CNN: max error 1e24-1e33)."""
    import dataclasses

    from edgekit.calib import CalibrationSet
    from edgekit.conversion import convert_source
    from edgekit.matrix import connect_ray
    from edgekit.sources import resolve_source

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10)).eval()
    x = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    src = resolve_source(net, (x[:2],), input_names=["pixels"], output_names=["logits"])
    ray_ = connect_ray(cluster)
    ref = ray_.put(dataclasses.replace(src, calibration=CalibrationSet({"pixels": x}, "random")))
    task = ray_.remote(convert_source).options(num_cpus=1, max_retries=0)
    (art,) = ray_.get(task.remote(ref, targets=["openvino"], precisions=["fp32"], out=str(tmp_path / "ov")),
                      timeout=240)  # a diverged fp32 raises VerificationError here
    assert art.status == "ok" and len(art.verification.outputs) == 1
    assert art.verification.outputs[0].max_abs_err < 1e-4 and art.verification.outputs[0].min_cosine > 0.99999


def _source(tmp: Path) -> Path:
    net = _mlp(2, 32)
    program = torch.export.export(net, (torch.randn(2, 16),))
    torch.export.save(program, tmp / "mlp.pt2")
    return tmp / "mlp.pt2"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgekit", "matrix", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _workers(name: str) -> list[int]:
    """PIDs of Ray workers now running task ``name`` (Ray sets their title to ``ray::NAME``)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(f"ray::{name}".encode()):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


def test_killed_worker_is_retried_and_killed_driver_resumes(cluster: str, tmp_path: Path) -> None:
    src = _source(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, **RAY_ENV}
    args = [str(src), "--to", "onnx", "--precision", "fp32,int8-dynamic,int4", "--out", str(out), "--no-plot",
            "--warmup", "1", "--runs", "5", "--in-process", "--ray", cluster, "--json"]
    driver = _cli(args, env)
    killed_worker = False
    deadline = time.monotonic() + 240
    try:  # kill one conversion worker mid-task, then the driver once a row is finished
        while time.monotonic() < deadline and driver.poll() is None:
            if not killed_worker:
                for pid in _workers("edgekit.convert"):
                    os.kill(pid, signal.SIGKILL)
                    killed_worker = True
                    break
            rows = json.loads((out / "matrix.json").read_text())["rows"] if (out / "matrix.json").is_file() else []
            if killed_worker and sum(r["status"] == "ok" and r["format"] == "onnx" for r in rows) >= 1:
                os.killpg(driver.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    assert killed_worker, driver.stderr.read()[-3000:] if driver.stderr else ""
    first = json.loads((out / "matrix.json").read_text())
    done = {(r["format"], r["precision"]) for r in first["rows"] if r["status"] == "ok"}
    assert len(done - {("pytorch", "fp32")}) >= 1  # the driver died with at least one row finished
    resumed = _cli([*args, "--resume"], env)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    data = json.loads(stdout)
    keys = [(r["format"], r["precision"]) for r in data["rows"]]
    assert keys == [("pytorch", "fp32"), ("onnx", "fp32"), ("onnx", "int8-dynamic"), ("onnx", "int4")]
    assert all(r["status"] == "ok" for r in data["rows"])
    reused = {(r["format"], r["precision"]) for r in data["rows"] if r["reused"]}
    assert done - {("pytorch", "fp32")} <= reused  # finished rows were kept, not converted again
    assert data["counts"]["reused"] >= len(done - {("pytorch", "fp32")})
    assert not [p for p in out.iterdir() if p.name.startswith(".edgekit-staging")]


def test_without_the_ray_extra_the_error_names_the_pip_line(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['ray'] = None\n"
            "import importlib.util as u; real = u.find_spec\n"
            "u.find_spec = lambda name, *a: None if name == 'ray' else real(name, *a)\n"
            "from edgekit.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, "matrix", "builtin:digits-cnn", "--ray", "local",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'edgekit[ray]'" in proc.stderr and "Traceback" not in proc.stderr
