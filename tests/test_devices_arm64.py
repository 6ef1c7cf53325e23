"""A real (emulated) ARM64 device: Debian arm64 under qemu-user, reached over the same SSH transport.

Debian's sshd runs on 127.0.0.1 with ``ChrootDirectory`` set to the arm64 root filesystem, so every
remote command is an aarch64 binary (``uname -m`` says ``aarch64``). Its Python venv holds the
aarch64 wheels of numpy, onnxruntime and ai-edge-litert; edgekit is installed there by
``devices setup`` from a wheel of this checkout, offline. Emulated timings are not speed figures:
the point is that the ARM code paths of the runtimes run edgekit's artifacts and agree with x86.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests import sshd_device as sd

pytestmark = pytest.mark.slow
if (why := sd.arm64_ready()) is not None:
    pytest.skip(why, allow_module_level=True)
pytest.importorskip("paramiko")

import edgekit  # noqa: E402
from edgekit.devices import Device, parse_target  # noqa: E402
from edgekit.devices.parity import device_parity  # noqa: E402
from edgekit.devices.setup import plan, setup  # noqa: E402


@pytest.fixture(scope="module")
def arm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Device]:
    tmp = tmp_path_factory.mktemp("arm64")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CONFIG_HOME", str(tmp / "config"))
        with sd.sshd(tmp / "sshd", chroot=sd.ARM64_ROOTFS) as srv:
            spec = parse_target(f"ssh://root@127.0.0.1:{srv.port}", name="arm64", identity=str(srv.user_key),
                                python="/opt/edgekit-venv/bin/python", workdir="/root/.cache/edgekit-device")
            d = Device(spec, accept_new_host_key=True, margin=600)
            setup(d, plan(d, "onnxruntime,litert", wheel=sd.edgekit_wheel(), offline=True), timeout=900)
            yield d
            d.close()


@pytest.fixture(scope="module")
def artifacts(cnn: object, cnn_calib: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    out = tmp_path_factory.mktemp("arm_cnn")
    x = (torch.randn(1, 3, 16, 16),)
    onnx = edgekit.convert(cnn, x, targets=["onnx"], name="cnn", output_names=["logits"],
                           precisions=["fp32", "int8"], calib=cnn_calib, out=out)
    tfl = edgekit.convert(cnn, x, targets=["tflite"], name="cnn", output_names=["logits"],
                          precisions=["fp32"], out=out)
    return {f"{a.format.value}-{a.precision.value}": a.path for a in [*onnx, *tfl]}


def test_the_device_is_aarch64(arm: Device) -> None:
    done = arm.link.run(["uname", "-m"], timeout=60)
    assert done.stdout.decode().strip() == "aarch64"
    info = arm.info(timeout=600)
    assert info["arch"] == "aarch64" and info["edgekit"] == edgekit.__version__
    assert {"onnxruntime", "litert"} <= set(info["runtimes"])
    assert "CPUExecutionProvider" in info["runtimes"]["onnxruntime"]["can_use"]


@pytest.mark.parametrize("key, atol", [("onnx-fp32", 1e-4), ("onnx-int8", 2e-2), ("tflite-fp32", 1e-4)])
def test_arm64_bench_and_outputs_agree_with_x86(arm: Device, artifacts: dict[str, Path], key: str,
                                                atol: float) -> None:
    path = artifacts[key]
    row = arm.bench(path, runs=5, warmup=1, min_time=0.0, timeout=600)
    assert row.status == "ok", row.reason
    assert row.host["arch"] == "aarch64" and row.latency.runs == 5
    assert row.runtime == ("litert" if key.startswith("tflite") else "onnxruntime")
    assert row.host["python_executable"] == "/opt/edgekit-venv/bin/python"
    rng = np.random.default_rng(7)
    feeds = [{"pixels": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    res = device_parity(arm, path, feeds, timeout=600)
    assert res.agree is True and res.host["arch"] == "aarch64"
    scale = max(float(np.abs(h["logits"]).max()) for h in res.local)
    (p,) = res.parity
    assert p["top1_agreement"] == 1.0 and p["max_abs_err"] <= atol * scale, p
    assert not np.array_equal(res.outputs[0]["logits"], res.outputs[1]["logits"])  # real, distinct outputs
