"""On-device benchmarking over SSH against a real OpenSSH server on 127.0.0.1.

The "device" is a separate virtualenv holding only ``edgekit[onnxruntime]`` (installed by
``devices setup`` from a wheel of this checkout, pushed over SFTP), reached as the current user.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("paramiko")
if not Path("/usr/sbin/sshd").exists():
    pytest.skip("needs Debian's openssh-server: apt-get install -y openssh-server", allow_module_level=True)

import edgekit  # noqa: E402
from edgekit.devices import Device, DeviceSpec, parse_target, resolve, save_device  # noqa: E402
from edgekit.devices.config import known_hosts_path  # noqa: E402
from edgekit.devices.push import bundle  # noqa: E402
from edgekit.devices.setup import plan, setup  # noqa: E402
from edgekit.errors import ConfigError, RemoteDeviceError  # noqa: E402
from tests import sshd_device as sd  # noqa: E402

ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private config dir (inventory, known_hosts) and HOME, so the user's ~/.ssh is not read."""
    tmp = tmp_path_factory.mktemp("devices")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(tmp / "config"))
        mp.setenv("HOME", str(tmp / "home"))
        yield tmp


@pytest.fixture(scope="module")
def server(env: Path) -> Iterator[sd.Sshd]:
    with sd.sshd(env / "sshd") as s:
        yield s


def spec_for(server: sd.Sshd, env: Path, **kw: object) -> DeviceSpec:
    base = {"name": "loop", "identity": str(server.user_key), "python": str(sd.device_venv()),
            "workdir": str(env / "work")}
    return parse_target(server.url, **{**base, **kw})


@pytest.fixture(scope="module")
def device(server: sd.Sshd, env: Path) -> Iterator[Device]:
    """The loopback device, its host key accepted once, edgekit set up there from a pushed wheel."""
    d = Device(spec_for(server, env), accept_new_host_key=True, margin=20)
    setup(d, plan(d, "onnxruntime", wheel=sd.edgekit_wheel(), offline=True), timeout=300)
    yield d
    d.close()


@pytest.fixture(scope="module")
def cnn_onnx(cnn: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    out = tmp_path_factory.mktemp("dev_cnn")
    arts = edgekit.convert(cnn, (torch.randn(1, 3, 16, 16),), targets=["onnx"], name="cnn",
                           output_names=["logits"], precisions=["fp32"], out=out)
    return arts[0].path


def test_device_is_runtime_only(device: Device) -> None:
    """The device has edgekit and onnxruntime, and no torch; `devices --on` says what is missing."""
    done = device.link.run([device.spec.python, "-c", "import torch"], timeout=60)
    assert done.returncode == 1 and b"No module named 'torch'" in done.stderr
    info = device.info()
    assert info["name"] == "loop" and info["arch"] == platform.machine()
    assert info["python_executable"] == device.spec.python and info["edgekit"] == edgekit.__version__
    assert "CPUExecutionProvider" in info["runtimes"]["onnxruntime"]["can_use"]
    assert "openvino" not in info["runtimes"] and "'edgekit[litert]'" in info["missing"]["litert"]


def test_bench_row_from_device_and_second_push_sends_nothing(device: Device, cnn_onnx: Path) -> None:
    b = bundle(cnn_onnx)
    assert [f.path for f in b.files][-1] == "cnn-fp32.onnx" and any(f.path.endswith(".edgekit.json") for f in b.files)
    first = device.bench(cnn_onnx, runs=30, warmup=3, threads=1)
    assert first.status == "ok", first.reason
    assert first.artifact == str(cnn_onnx) and first.mode == "isolated" and first.latency.runs == 30
    assert first.runtime == "onnxruntime" and first.threads == 1 and first.precision == "fp32"
    host = first.host
    assert host["name"] == "loop" and host["transport"] == device.spec.url
    assert host["cores"] == os.cpu_count() and host["python_executable"] == device.spec.python
    assert host["runtimes"]["onnxruntime"]["version"] and len(host["load_before"]) == 3
    assert len(host["load_after"]) == 3 and host["finished"] >= host["started"]
    assert host["push"]["sent_bytes"] == b.bytes and host["push"]["reused_bytes"] == 0
    again = device.bench(cnn_onnx, runs=10, warmup=1)
    assert again.status == "ok"
    assert again.host["push"] == {**again.host["push"], "sent_bytes": 0, "reused_bytes": b.bytes, "files_sent": 0}
    blobs = Path(device.spec.workdir) / "blobs"
    names = {p.name for p in blobs.iterdir()}  # the artifact's blobs, the pushed wheel's, and no .part
    assert {f.sha256 for f in b.files} <= names and not any(n.endswith(".part") for n in names)


def test_run_outputs_equal_a_local_run(device: Device, cnn_onnx: Path) -> None:
    from edgekit.isolation import run_isolated

    rng = np.random.default_rng(3)
    feeds = [{"pixels": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(3)]
    remote, sig = device.run(cnn_onnx, feeds)
    local, _ = run_isolated(cnn_onnx, feeds)
    assert sig.inputs[0].name == "pixels" and len(remote) == 3
    for r, loc in zip(remote, local):
        np.testing.assert_allclose(r["logits"], loc["logits"], rtol=1e-6, atol=1e-6)
        assert r["logits"].shape == (1, 10)


def test_push_resumes_a_broken_upload_and_refuses_a_corrupt_one(device: Device, tmp_path: Path) -> None:
    from edgekit.devices.push import push

    d = Device(replace(device.spec, workdir=str(tmp_path / "w")))
    b = bundle(_big_onnx(tmp_path / "r.onnx"))
    model = b.files[-1]
    blobs = tmp_path / "w" / "blobs"
    blobs.mkdir(parents=True)
    half = model.bytes // 2
    (blobs / f"{model.sha256}.part").write_bytes(model.local.read_bytes()[:half])  # a link that died halfway
    report = push(d, b)
    assert report.sent_bytes == model.bytes - half and report.reused_bytes == half
    assert d.bench(model.local, runs=3, warmup=1).status == "ok"  # the device checked the hash and placed it
    assert (blobs / model.sha256).read_bytes() == model.local.read_bytes()
    # a part with the right size but wrong bytes is refused by its hash, deleted, and sent again next time
    (blobs / model.sha256).unlink()
    (blobs / f"{model.sha256}.part").write_bytes(bytes(model.bytes))
    with pytest.raises(RemoteDeviceError, match="arrived corrupted"):
        d.agent("place", b.job(d.spec.workdir), timeout=60)
    assert not (blobs / f"{model.sha256}.part").exists()
    assert push(d, b).sent_bytes == model.bytes
    d.close()


def test_benchmark_on_a_saved_device(device: Device, cnn_onnx: Path) -> None:
    """edgekit.benchmark(path, on=name) through the inventory in XDG_CONFIG_HOME."""
    path = save_device(device.spec)
    assert path == Path(os.environ["XDG_CONFIG_HOME"]) / "edgekit" / "devices.json"
    assert resolve("loop") == device.spec
    row = edgekit.benchmark(cnn_onnx, on="loop", runs=10, warmup=1)
    assert row.status == "ok" and row.host["name"] == "loop" and row.host["push"]["sent_bytes"] == 0


def test_ssh_config_alias(env: Path, server: sd.Sshd, device: Device) -> None:
    """``ssh://alias`` takes HostName, Port, User and IdentityFile from ~/.ssh/config."""
    import getpass

    ssh = Path(os.environ["HOME"]) / ".ssh"
    ssh.mkdir(parents=True, exist_ok=True)
    (ssh / "config").write_text(f"Host loopalias\n  HostName 127.0.0.1\n  Port {server.port}\n"
                                f"  User {getpass.getuser()}\n  IdentityFile {server.user_key}\n")
    spec = parse_target("ssh://loopalias", python=device.spec.python, workdir=device.spec.workdir)
    with Device(spec) as d:  # the host key recorded for 127.0.0.1:port is the one checked
        assert d.link.where == f"{getpass.getuser()}@127.0.0.1:{server.port}"
        assert d.link.run(["true"], timeout=30).returncode == 0


def test_host_info_block() -> None:
    """The block every result carries: this machine's facts, load before and (with since=) after."""
    from edgekit.host import host_info

    before = host_info("bench-box")
    assert before["name"] == "bench-box" and before["arch"] == platform.machine()
    assert before["cores"] == os.cpu_count() and before["python"] == platform.python_version()
    assert before["memory_bytes"] > 2**28 and before["load_after"] is None and len(before["load_before"]) == 3
    assert before["runtimes"]["onnxruntime"]["version"] == __import__("onnxruntime").__version__
    after = host_info(since=before)
    assert after["started"] == before["started"] and len(after["load_after"]) == 3 and after["finished"]


def test_inventory_addresses() -> None:
    s = parse_target("ssh://pi@192.168.1.40:2222", name="pi5", identity="~/.ssh/id_ed25519")
    assert (s.user, s.host, s.port, s.identity, s.url) == ("pi", "192.168.1.40", 2222, "~/.ssh/id_ed25519",
                                                          "ssh://pi@192.168.1.40:2222")
    assert parse_target("pi@kiosk").host == "kiosk" and parse_target("pi@kiosk").port is None
    with pytest.raises(ConfigError, match="not an SSH device address"):
        parse_target("http://pi/x")
    with pytest.raises(ConfigError, match="edgekit devices add nope"):
        resolve("nope")


# -- faults: each a RemoteDeviceError naming the device and the fix ------------------------------

def test_connection_refused(env: Path, server: sd.Sshd) -> None:
    spec = parse_target(f"ssh://u@127.0.0.1:{sd.free_port()}", name="gone", connect_timeout=5)
    with pytest.raises(RemoteDeviceError) as e:
        Device(spec).connect()
    assert e.value.device == "gone" and "connection refused" in e.value.problem and "port" in e.value.fix


def test_wrong_key(env: Path, server: sd.Sshd, device: Device) -> None:
    other = sd.keygen(env / "other_key")
    with pytest.raises(RemoteDeviceError) as e:
        Device(spec_for(server, env, identity=str(other))).connect()
    assert "refused the login" in e.value.problem and "ssh-copy-id" in e.value.fix
    assert str(e.value).startswith("device loop:")


def test_unknown_host_key_is_refused_then_accepted_once(env: Path) -> None:
    with sd.sshd(env / "sshd-new") as srv:
        spec = spec_for(srv, env, name="fresh")
        with pytest.raises(RemoteDeviceError) as e:
            Device(spec).connect()
        assert "is not known" in e.value.problem and "--accept-new-host-key" in e.value.fix
        assert f"[127.0.0.1]:{srv.port}" not in (known_hosts_path().read_text() if known_hosts_path().exists() else "")
        Device(spec, accept_new_host_key=True).connect().close()
        assert f"[127.0.0.1]:{srv.port} ssh-ed25519 " in known_hosts_path().read_text()
        Device(spec).connect().close()  # now known: no flag needed


def test_changed_host_key_is_always_refused(env: Path, server: sd.Sshd, device: Device) -> None:
    with sd.sshd(env / "sshd-changed") as srv:
        spec = spec_for(srv, env)
        Device(spec, accept_new_host_key=True).connect().close()
        # the same address now answers with another key (a reinstalled device, or someone in the middle)
        fake = sd.keygen(env / "changed_host_key")
        lines = known_hosts_path().read_text().splitlines()
        mine = f"[127.0.0.1]:{srv.port}"
        new_pub = fake.with_suffix(".pub").read_text().split()[:2]
        known_hosts_path().write_text("\n".join(ln if not ln.startswith(mine + " ") else f"{mine} {' '.join(new_pub)}"
                                                for ln in lines) + "\n")
        with pytest.raises(RemoteDeviceError) as e:
            Device(spec, accept_new_host_key=True).connect()
        assert "CHANGED" in e.value.problem and "ssh-keygen -R" in e.value.fix


def test_device_without_the_runtime(device: Device, tmp_path: Path) -> None:
    tfl = tmp_path / "m.tflite"
    tfl.write_bytes(b"TFL3" + bytes(60))
    with pytest.raises(RemoteDeviceError) as e:
        device.bench(tfl)
    assert "litert" in e.value.problem and "not installed" in e.value.problem
    assert e.value.fix.startswith("edgekit devices setup loop --runtime litert")
    assert not any(p.name.endswith(".part") for p in (Path(device.spec.workdir) / "blobs").iterdir())


def _bench_children() -> list[int]:
    out = []
    for cmd in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"edgekit._bench_worker" in cmd.read_bytes():
                out.append(int(cmd.parent.name))
        except OSError:
            pass
    return out


def test_link_killed_mid_run_is_a_failed_row_within_the_timeout(env: Path, server: sd.Sshd,
                                                                  device: Device, cnn_onnx: Path) -> None:
    d = Device(device.spec, margin=2)
    device.close()  # only d's connection is frozen below
    d.bench(cnn_onnx, runs=1, warmup=1)  # pushed already: the run below starts at once
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(row=d.bench(cnn_onnx, min_time=60, timeout=4)))
    start = time.monotonic()
    t.start()
    stopped: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while not _bench_children() and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped = server.session_pids()  # freeze the connection's sshd: the link goes silent
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        t.join(timeout=60)  # generous: on a loaded machine the bench child itself starts late
        elapsed = time.monotonic() - start
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert "row" in result, f"bench did not return within {elapsed:.0f} s of a frozen link"
    row = result["row"]
    assert stopped and row.status == "failed" and elapsed < 4 + 2 + 5
    assert "no complete answer" in row.reason and row.host["name"] == "loop"


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    if not ROOT:
        pytest.skip("needs root to mount a small tmpfs as the device's work directory")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _big_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((1024, 512)).astype(np.float32), "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 512])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_full_disk(device: Device, small_mount: Path, tmp_path: Path) -> None:
    big = _big_onnx(tmp_path / "big.onnx")  # 2 MB of weights, 1 MB of room
    d = Device(replace(device.spec, workdir=str(small_mount / "w")))
    with pytest.raises(RemoteDeviceError) as e:
        d.bench(big)
    assert "disk is full" in e.value.problem and "nothing was sent" in e.value.problem
    assert "--workdir" in e.value.fix
    assert list((small_mount / "w" / "blobs").iterdir()) == []


def test_read_only_disk(device: Device, small_mount: Path, tmp_path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    d = Device(replace(device.spec, workdir=str(small_mount / "w")))
    with pytest.raises(RemoteDeviceError) as e:
        d.bench(_big_onnx(tmp_path / "m.onnx"))
    assert "read-only" in e.value.problem and "--workdir" in e.value.fix


# -- the command line ----------------------------------------------------------------------------

def test_cli_add_describe_bench_and_run_on_a_device(device: Device, server: sd.Sshd, env: Path,
                                                     cnn_onnx: Path, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from edgekit.cli import main

    cli = CliRunner()
    s = device.spec
    r = cli.invoke(main, ["devices", "add", "cli-dev", s.url, "--identity", s.identity, "--python", s.python,
                          "--workdir", s.workdir])
    assert r.exit_code == 0, r.output
    assert resolve("cli-dev").python == s.python
    r = cli.invoke(main, ["devices", "--on", "cli-dev", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["name"] == "cli-dev" and "onnxruntime" in info["runtimes"] and "litert" in info["missing"]
    r = cli.invoke(main, ["bench", str(cnn_onnx), "--on", "cli-dev", "--runs", "5", "--warmup", "1", "--json"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["results"][0]
    assert row["status"] == "ok" and row["host"]["name"] == "cli-dev" and row["latency"]["runs"] == 5
    x = tmp_path / "x.npz"
    np.savez(x, pixels=np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32))
    r = cli.invoke(main, ["run", str(cnn_onnx), "--on", "cli-dev", "--input", str(x), "--output",
                          str(tmp_path / "y.npz"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["agree"] is True and out["parity"][0]["max_abs_err"] < 1e-5 and out["host"]["name"] == "cli-dev"
    with np.load(tmp_path / "y.npz") as z:
        assert z["logits"].shape == (1, 10)
    r = cli.invoke(main, ["devices", "setup", "cli-dev", "--runtime", "litert"], input="n\n")
    assert r.exit_code == 1 and "pip install" in r.output and "edgekit[litert]" in r.output


def test_cli_unknown_device_names_the_fix() -> None:
    from click.testing import CliRunner

    from edgekit.cli import main

    r = CliRunner().invoke(main, ["bench", "x.onnx", "--on", "nowhere"])
    assert r.exit_code == 2 and "edgekit devices add nowhere" in r.output
