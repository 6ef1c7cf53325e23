"""ONNX conversion: every precision, verified against PyTorch, with a manifest beside it."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

import edgekit
from edgekit.manifest import Manifest, read_manifest
from tests.conftest import text_batch


def test_cnn_fp32_matches_pytorch(cnn_artifacts: dict) -> None:
    art = cnn_artifacts["fp32"]
    v = art.verification
    assert art.status == "ok" and v.passed and v.gated
    (out,) = v.outputs
    assert out.name == "logits" and out.max_abs_err < 1e-4 and out.min_cosine > 0.99999
    assert out.top1_agreement == 1.0
    assert v.samples == 2 + 32  # the example batch plus the calibration samples


def test_cnn_quantized_sizes_and_parity(cnn_artifacts: dict) -> None:
    fp32 = cnn_artifacts["fp32"].size_bytes
    assert cnn_artifacts["int8"].size_bytes < 0.35 * fp32
    assert cnn_artifacts["fp16"].size_bytes < 0.55 * fp32
    # fp16 weights on a conv net: nearly exact; static int8 with per-channel weights: close
    assert cnn_artifacts["fp16"].verification.outputs[0].min_cosine > 0.9999
    assert cnn_artifacts["int8"].verification.outputs[0].cosine > 0.98
    # fp16 has a sanity gate (far off in value and direction fails); the quantized ones report
    assert cnn_artifacts["fp16"].status == "ok" and cnn_artifacts["fp16"].verification.gated
    for precision in ("int8-dynamic", "int8", "int4"):
        art = cnn_artifacts[precision]
        assert art.status == "ok" and not art.verification.gated


def test_static_int8_is_qdq_per_channel_and_records_calibration(cnn_artifacts: dict) -> None:
    art = cnn_artifacts["int8"]
    model = onnx.load(str(art.path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    per_channel = [t for t in model.graph.initializer if t.name.endswith("_scale") and len(t.dims) == 1
                   and t.dims[0] > 1]
    assert per_channel, "expected per-channel weight scales"
    manifest = read_manifest(art.path)
    assert manifest.conversion["calibration"]["samples"] == 32
    assert manifest.conversion["calibration"]["data"] == "cnn_calib.npz"


def test_encoder_sizes_for_matmul_heavy_model(encoder_artifacts: dict) -> None:
    fp32 = encoder_artifacts["fp32"].size_bytes
    assert encoder_artifacts["int8-dynamic"].size_bytes < 0.35 * fp32
    assert encoder_artifacts["int8"].size_bytes < 0.35 * fp32
    assert encoder_artifacts["int4"].size_bytes < 0.25 * fp32
    ops = read_manifest(encoder_artifacts["int4"].path).conversion["ops"]
    assert ops.get("MatMulNBits", 0) >= 8  # q/k/v/out + 2 FFN per layer, in both layers


def test_encoder_quantized_figures_are_close(encoder_artifacts: dict) -> None:
    # weight-only int4 and int8 on random 128-wide layers keep logits well aligned
    for precision, floor in (("int8-dynamic", 0.99), ("int8", 0.95), ("int4", 0.98)):
        out = encoder_artifacts[precision].verification.outputs[0]
        assert out.cosine > floor, (precision, out)
        assert out.top1_agreement is not None


def test_dynamic_batch_and_sequence(encoder: torch.nn.Module, encoder_artifacts: dict) -> None:
    path = encoder_artifacts["fp32"].path
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in onnx.load(str(path)).graph.input]
    assert dims == [["batch", "sequence"], ["batch", "sequence"]]
    feed = text_batch(5, seq=23, seed=9)
    with edgekit.load(path) as m:
        got = m.run(feed)["logits"]
    with torch.inference_mode():
        want = encoder(*(torch.from_numpy(v) for v in feed.values())).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_manifest_records_everything(cnn_artifacts: dict) -> None:
    art = cnn_artifacts["int4"]
    data = json.loads(art.manifest_path.read_text())
    assert data["schema"] == "edgekit.manifest/1"
    assert (data["format"], data["precision"], data["artifact"]) == ("onnx", "int4", art.path.name)
    assert data["signature"]["inputs"][0] == {"name": "pixels", "dtype": "float32",
                                              "shape": ["batch", 3, 16, 16], "example_shape": [2, 3, 16, 16],
                                              "value_range": data["signature"]["inputs"][0]["value_range"]}
    assert data["options"]["int4_block_size"] == 32
    assert {"torch", "onnx", "onnxruntime", "python"} <= set(data["versions"])
    files = {f["path"]: f for f in data["files"]}
    assert files[art.path.name]["sha256"] == hashlib.sha256(art.path.read_bytes()).hexdigest()
    assert data["size_bytes"] == art.path.stat().st_size
    assert Manifest.from_dict(data).verification == art.verification  # round-trips


def test_int4_block_size_is_selectable(encoder: torch.nn.Module, encoder_artifacts: dict, tmp_path) -> None:
    arts = edgekit.convert(encoder, text_batch(2), targets=["onnx"], precisions=["int4"], out=tmp_path,
                           dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                         "attention_mask": {0: "batch", 1: "sequence"}},
                           options={"onnx": {"int4_block_size": 128}})
    assert read_manifest(arts[0].path).conversion["block_size"] == 128
    assert arts[0].size_bytes < encoder_artifacts["int4"].size_bytes  # fewer scales


def test_external_data_files(cnn: torch.nn.Module, tmp_path) -> None:
    arts = edgekit.convert(cnn, (torch.randn(2, 3, 16, 16),), precisions=["fp32", "int8-dynamic"],
                           out=tmp_path, options={"onnx": {"external_data_threshold": 0}})
    for art in arts:
        data = art.path.with_name(art.path.name + ".data")
        assert data.is_file() and data.stat().st_size > 0.9 * (art.size_bytes - art.path.stat().st_size)
        names = {f["path"] for f in read_manifest(art.path).files}
        assert data.name in names
        assert art.verification.passed


class Noisy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.rand_like(x)


def test_fp32_out_of_tolerance_is_an_error_naming_the_output(tmp_path) -> None:
    with pytest.raises(edgekit.VerificationError, match=r"output 'output'") as info:
        edgekit.convert(Noisy(), (torch.zeros(2, 8),), precisions=["fp32"], out=tmp_path)
    (art,) = info.value.artifacts
    assert art.status == "diverged" and art.verification.failed_output == "output"
    assert read_manifest(art.path).verification.passed is False  # kept, with its report


def test_eval_data_reports_accuracy_delta(cnn: torch.nn.Module, tmp_path) -> None:
    x = np.random.default_rng(3).standard_normal((40, 3, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        labels = cnn(torch.from_numpy(x)).argmax(-1).numpy()
    labels[:10] = (labels[:10] + 1) % 10  # the original gets exactly 30/40 right
    np.savez(tmp_path / "eval.npz", pixels=x, labels=labels)
    (art,) = edgekit.convert(cnn, (torch.randn(2, 3, 16, 16),), precisions=["fp32"], out=tmp_path,
                             eval_data=tmp_path / "eval.npz")
    metric = art.verification.metric
    assert metric["name"] == "accuracy" and metric["reference"] == pytest.approx(0.75)
    assert metric["value"] == pytest.approx(0.75) and metric["delta"] == pytest.approx(0.0)


def test_precision_outside_the_format_is_refused_before_work(cnn: torch.nn.Module, tmp_path) -> None:
    with pytest.raises(edgekit.ConfigError) as info:
        edgekit.convert(cnn, (torch.randn(2, 3, 16, 16),), precisions=["f16", "q4_k_m"], out=tmp_path / "o")
    assert info.value.problem == "onnx does not support precision(s) q4_k_m"
    assert info.value.fix == "onnx supports: fp32, fp16, int8-dynamic, int8, int4"
    assert not (tmp_path / "o").exists()


def test_calibration_longer_than_the_example_sequence(encoder: torch.nn.Module, tmp_path) -> None:
    # a HF text model's examples are padded to their own length, its calibration text to 128
    np.savez(tmp_path / "calib.npz", **text_batch(8, seq=24, seed=4))
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
    (art,) = edgekit.convert(encoder, text_batch(2, seq=10), precisions=["fp32"], out=tmp_path / "o",
                             dynamic_axes=axes, calib=tmp_path / "calib.npz", output_names=["logits"])
    assert art.verification.passed and art.verification.samples == 2 + 8
    assert art.verification.outputs[0].top1_agreement == 1.0


def test_tuple_options_from_the_command_line_are_split() -> None:
    from edgekit.converters.onnx import OnnxOptions
    from edgekit.options import parse_options

    opts = parse_options(OnnxOptions, {"int8_op_types": "MatMul, Gemm", "nodes_to_exclude": "a,b",
                                       "int4_accuracy_level": "4", "opset": "none", "per_channel": "false"})
    assert opts.int8_op_types == ("MatMul", "Gemm") and opts.nodes_to_exclude == ("a", "b")
    assert (opts.int4_accuracy_level, opts.opset, opts.per_channel) == (4, None, False)
    with pytest.raises(edgekit.ConfigError, match="int4_block_size"):
        parse_options(OnnxOptions, {"int4_block_size": "many"})


def test_default_precisions_belong_to_each_format() -> None:
    from edgekit.converters import CONVERTERS
    from edgekit.types import Format, Precision

    onnx_conv = CONVERTERS.get(Format.ONNX)()
    assert onnx_conv.default_precisions(True, "image-classification") == [
        Precision.FP32, Precision.INT8, Precision.INT4]
    # text transformers get dynamic int8 even with calibration data (static costs them accuracy)
    assert onnx_conv.default_precisions(True, "text-classification") == [
        Precision.FP32, Precision.INT8_DYNAMIC, Precision.INT4]
    assert onnx_conv.default_precisions(False, None)[1] is Precision.INT8_DYNAMIC
    if Format.GGUF in CONVERTERS:
        gguf_conv = CONVERTERS.get(Format.GGUF)()
        assert gguf_conv.default_precisions(False, "text-generation") == [
            Precision.FP16, Precision.Q8_0, Precision.Q4_K_M]
