"""The runtime API: load, signature, run, devices, threads, close."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import edgekit
from edgekit.runtimes.onnxruntime import OrtModel


def test_run_matches_pytorch_and_accepts_keywords(cnn: torch.nn.Module, cnn_artifacts: dict) -> None:
    x = np.random.default_rng(5).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        want = cnn(torch.from_numpy(x)).numpy()
    with edgekit.load(cnn_artifacts["fp32"].path, device="cpu", threads=1) as m:
        np.testing.assert_allclose(m.run({"pixels": x})["logits"], want, atol=1e-4)
        np.testing.assert_allclose(m(pixels=x)["logits"], want, atol=1e-4)
        assert m.signature.input_names == ["pixels"] and m.signature.output_names == ["logits"]
        assert m.signature.inputs[0].shape == ("batch", 3, 16, 16)
        assert m.describe()["providers"] == ["CPUExecutionProvider"]
        assert m.manifest is not None and m.manifest.precision is edgekit.Precision.FP32


def test_load_accepts_the_manifest_path(cnn_artifacts: dict) -> None:
    art = cnn_artifacts["int8"]
    with edgekit.load(art.manifest_path) as m:
        assert m.path == art.path


def test_closed_model_refuses_to_run(cnn_artifacts: dict) -> None:
    m = edgekit.load(cnn_artifacts["fp32"].path)
    m.close()
    with pytest.raises(edgekit.ConfigError, match="closed"):
        m.run(pixels=np.zeros((1, 3, 16, 16), np.float32))


def test_unavailable_device_lists_what_is_available(cnn_artifacts: dict) -> None:
    available = OrtModel.devices()
    missing = next((d for d in ("gpu", "npu") if edgekit.Device(d) not in available), None)
    if missing is None:
        pytest.skip("this machine has every device kind")
    with pytest.raises(edgekit.DeviceUnavailableError) as info:
        edgekit.load(cnn_artifacts["fp32"].path, device=missing)
    assert f"device '{missing}' is not available" in str(info.value)
    assert "cpu (CPUExecutionProvider)" in str(info.value)


def test_unknown_device_and_bad_threads(cnn_artifacts: dict) -> None:
    with pytest.raises(edgekit.ConfigError, match="use one of: cpu, gpu, npu, auto"):
        edgekit.load(cnn_artifacts["fp32"].path, device="tpu")
    with pytest.raises(edgekit.ConfigError, match="threads"):
        edgekit.load(cnn_artifacts["fp32"].path, threads=0)


def test_auto_device_ends_with_cpu(cnn_artifacts: dict) -> None:
    with edgekit.load(cnn_artifacts["fp32"].path, device="auto") as m:
        assert m.describe()["providers"][-1] == "CPUExecutionProvider"


def test_input_checks_cast_safely(encoder_artifacts: dict) -> None:
    with edgekit.load(encoder_artifacts["fp32"].path) as m:
        ids = np.ones((1, 8), dtype=np.int32)  # int32 -> int64 is safe
        out = m.run(input_ids=ids, attention_mask=ids.tolist())  # nested lists become arrays
        assert out["logits"].shape == (1, 4)
        with pytest.raises(edgekit.InputError, match=r"input 'input_ids' is float32.*input_ids: int64\[batch, sequence\]"):
            m.run(input_ids=ids.astype(np.float32), attention_mask=ids)


def test_model_benchmark_reports_statistics(cnn_artifacts: dict) -> None:
    with edgekit.load(cnn_artifacts["int8"].path) as m:
        r = m.benchmark(warmup=3, runs=25, batch=4)
    lat = r.latency
    assert r.status == "ok" and lat.runs == 25 and r.batch == 4
    assert lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p95_ms <= lat.p99_ms <= lat.max_ms
    assert r.throughput == pytest.approx(4 * 1000 / lat.mean_ms)
    assert r.inputs == {"pixels": [4, 3, 16, 16]} and r.precision == "int8"
    assert r.size_bytes == cnn_artifacts["int8"].size_bytes and r.peak_rss_mb > 10
