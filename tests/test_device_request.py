"""``device`` is parsed once into a DeviceRequest, and ``RUNTIME:NAME`` means the same for every runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import edgekit
from edgekit import ConfigError, Device, DeviceUnavailableError
from edgekit.types import DeviceRequest


@pytest.mark.parametrize(("text", "kind", "runtime", "native", "canonical"), [
    ("cpu", Device.CPU, None, None, "cpu"),
    (" GPU ", Device.GPU, None, None, "gpu"),
    ("auto", Device.AUTO, None, None, "auto"),
    ("onnxruntime:CUDAExecutionProvider", Device.AUTO, "onnxruntime", "CUDAExecutionProvider",
     "onnxruntime:CUDAExecutionProvider"),
    ("OpenVINO:GPU.1", Device.AUTO, "openvino", "GPU.1", "openvino:GPU.1"),
    ("openvino:AUTO:GPU.0,CPU", Device.AUTO, "openvino", "AUTO:GPU.0,CPU", "openvino:AUTO:GPU.0,CPU"),
    ("litert:/opt/lib/libedgetpu.so.1", Device.AUTO, "litert", "/opt/lib/libedgetpu.so.1",
     "litert:/opt/lib/libedgetpu.so.1"),
    ("llamacpp:gpu-offload", Device.AUTO, "llamacpp", "gpu-offload", "llamacpp:gpu-offload"),
])
def test_parse_values(text: str, kind: Device, runtime: str | None, native: str | None, canonical: str) -> None:
    req = DeviceRequest.parse(text)
    assert (req.kind, req.runtime, req.native) == (kind, runtime, native)
    assert str(req) == canonical
    assert DeviceRequest.parse(str(req)) == req  # the canonical string round-trips (child processes get it)
    assert DeviceRequest.parse(req) is req and DeviceRequest.parse(Device.NPU) == DeviceRequest(Device.NPU)


@pytest.mark.parametrize(("bad", "problem"), [
    ("tpu", "unknown device 'tpu'"),
    ("onnxruntime:", "device 'onnxruntime:' is not RUNTIME:NAME"),
    (":GPU.1", "device ':GPU.1' is not RUNTIME:NAME"),
    (3, "device must be a string, got int"),
])
def test_parse_errors_name_the_forms(bad: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        DeviceRequest.parse(bad)  # type: ignore[arg-type]
    assert info.value.problem == problem
    assert "cpu, gpu, npu, auto, or RUNTIME:NAME" in info.value.fix


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    (art,) = edgekit.convert(net, (torch.randn(1, 4),), targets=["onnx"], precisions=["fp32"], name="lin",
                             input_names=["x"], output_names=["y"], out=tmp_path_factory.mktemp("dev"))
    return art.path


def test_native_name_picks_its_runtime_and_passes_through(onnx_path: Path) -> None:
    x = np.ones((1, 4), np.float32)
    with edgekit.load(onnx_path) as plain:
        want = plain.run(x=x)["y"]
        assert plain.request == DeviceRequest(Device.CPU) and plain.device == "cpu"
    with edgekit.load(onnx_path, device="onnxruntime:CPUExecutionProvider") as m:
        assert m.name == "onnxruntime" and m.device == "onnxruntime:CPUExecutionProvider"
        assert m.describe()["providers"] == ["CPUExecutionProvider"]
        np.testing.assert_allclose(m.run(x=x)["y"], want, rtol=1e-6)
    pytest.importorskip("openvino")
    # an ONNX file with openvino:CPU goes to OpenVINO, as runtime="openvino" would
    with edgekit.load(onnx_path, device="openvino:CPU") as m:
        assert m.name == "openvino" and m.describe()["openvino_device"] == "CPU"
        np.testing.assert_allclose(m.run(x=x)["y"], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", ["onnxruntime:NoSuchExecutionProvider", "openvino:NOPE.3"])
def test_unknown_native_name_is_unavailable_in_every_runtime(onnx_path: Path, device: str) -> None:
    if device.startswith("openvino"):
        pytest.importorskip("openvino")
    with pytest.raises(DeviceUnavailableError) as info:
        edgekit.load(onnx_path, device=device)
    assert info.value.problem.startswith(f"device {device!r} is not available to {device.split(':')[0]}")
    assert "cpu (" in info.value.fix


def test_runtime_prefix_is_checked_the_same_way_everywhere(onnx_path: Path) -> None:
    # a runtime that does not read the format, whatever its native names look like
    for device in ("litert:xnnpack", "llamacpp:cpu"):
        with pytest.raises(ConfigError, match=f"runtime '{device.split(':')[0]}' does not run onnx artifacts"):
            edgekit.load(onnx_path, device=device)
    with pytest.raises(ConfigError) as info:  # a prefix that is no runtime (it used to reach ORT as a provider)
        edgekit.load(onnx_path, device="gpu:1")
    assert info.value.problem == "no runtime registered for gpu" and "onnxruntime" in info.value.fix
    with pytest.raises(ConfigError) as info:
        edgekit.load(onnx_path, device="onnxruntime:CPUExecutionProvider", runtime="openvino")
    assert info.value.problem == ("device 'onnxruntime:CPUExecutionProvider' names the onnxruntime runtime, "
                                  "but runtime='openvino'")


def test_a_backend_refuses_another_runtimes_request(onnx_path: Path) -> None:
    from edgekit.runtime import resolve_artifact
    from edgekit.runtimes.onnxruntime import OrtModel

    with pytest.raises(ConfigError, match="is for the openvino runtime, not onnxruntime"):
        OrtModel(resolve_artifact(onnx_path), device=DeviceRequest.parse("openvino:CPU"))
    with OrtModel(resolve_artifact(onnx_path), device=DeviceRequest(Device.AUTO)) as m:
        assert m.describe()["providers"][-1] == "CPUExecutionProvider"
