"""OpenVINO: IR conversion at every precision, verified in f32, and the OpenVINO runtime backend.

The conversions run once per module on the small conftest models; the figures asserted are what a
wrong implementation (bf16 verification, fp16 saved as fp32, int8 without calibration, inputs in
the wrong order, a lost .bin) would miss.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgekit
from edgekit.manifest import read_manifest
from tests.conftest import text_batch

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

AXES = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}
ENCODER_PRECISIONS = ["fp32", "fp16", "int8", "int8-weights", "int4"]


def _distinct_layers(encoder: torch.nn.Module) -> torch.nn.Module:
    """conftest's TinyEncoder deep-copies one initialised layer (nn.TransformerEncoder clones it),
    so both layers hold identical weights and OpenVINO's serializer stores them once: the fp32 IR
    would be half the size of the weights. A trained model never has identical layers, so a copy
    with layer 1 perturbed makes the size ratios measure quantization, not de-duplication."""
    enc = copy.deepcopy(encoder)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in enc.encoder.layers[1].parameters():
            if p.dim() > 1:
                p.add_(torch.randn(p.shape, generator=g) * p.std() * 0.5)
    return enc.eval()


def _torch(module: torch.nn.Module, feed: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return module(*(torch.from_numpy(v) for v in feed.values())).numpy()


@pytest.fixture(scope="module")
def ov_encoder(encoder: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    enc = _distinct_layers(encoder)
    tmp = tmp_path_factory.mktemp("ov_enc")
    np.savez(tmp / "calib.npz", **text_batch(32, seed=2))
    arts = edgekit.convert(enc, text_batch(2), targets=["openvino"], name="encoder", output_names=["logits"],
                           dynamic_axes=AXES, precisions=ENCODER_PRECISIONS, calib=tmp / "calib.npz",
                           out=tmp / "out")
    return enc, {a.precision.value: a for a in arts}


@pytest.fixture(scope="module")
def onnx_encoder(ov_encoder: tuple, tmp_path_factory: pytest.TempPathFactory) -> Path:
    enc, _ = ov_encoder
    tmp = tmp_path_factory.mktemp("onnx_enc")
    (art,) = edgekit.convert(enc, text_batch(2), targets=["onnx"], name="encoder", output_names=["logits"],
                             dynamic_axes=AXES, precisions=["fp32"], out=tmp)
    return art.path


@pytest.fixture(scope="module")
def ov_cnn(cnn: torch.nn.Module, cnn_calib: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """fp32/fp16, and int8 with accuracy control on labelled data where int8 must cost accuracy:
    the 48 of 512 random images with the smallest top-1 margin, labelled with the model's own
    answers (reference accuracy 1.0), so int8 noise flips some and NNCF has to revert layers."""
    tmp = tmp_path_factory.mktemp("ov_cnn")
    x = np.random.default_rng(7).standard_normal((512, 3, 16, 16)).astype(np.float32)
    logits = _torch(cnn, {"pixels": x})
    top2 = np.sort(logits, axis=1)[:, -2:]
    pick = np.argsort(top2[:, 1] - top2[:, 0])[:48]
    np.savez(tmp / "eval.npz", pixels=x[pick], labels=logits[pick].argmax(1))
    arts = edgekit.convert(cnn, (torch.randn(2, 3, 16, 16),), targets=["openvino"], name="cnn",
                           output_names=["logits"], precisions=["fp32", "fp16", "int8"], calib=cnn_calib,
                           eval_data=tmp / "eval.npz", options={"openvino": {"max_accuracy_drop": 0.0}},
                           out=tmp / "out")
    return {a.precision.value: a for a in arts}


# -- conversion -------------------------------------------------------------------------------
def test_fp32_and_fp16_match_pytorch_verified_in_f32(ov_encoder: tuple, ov_cnn: dict) -> None:
    _, arts = ov_encoder
    for art in (arts["fp32"], ov_cnn["fp32"]):
        v = art.verification
        (out,) = v.outputs
        assert art.status == "ok" and v.gated and v.passed
        assert out.max_abs_err < 1e-5 and out.min_cosine > 0.999999 and out.top1_agreement == 1.0
    for art in (arts["fp16"], ov_cnn["fp16"]):  # fp16 weights, f32 compute: rounding of weights only
        out = art.verification.outputs[0]
        assert art.status == "ok" and out.min_cosine > 0.9999 and out.max_abs_err < 1e-2
    manifest = read_manifest(arts["fp32"].path)
    # verification ran with an f32 hint (bf16 would miss 1e-5), and the runtime is told to use f32
    assert manifest.conversion["verification_precision_hint"] == "f32"
    assert manifest.runtime_hints == {"precision_hint": "f32"}
    assert manifest.versions["openvino"] and manifest.versions["nncf"]


def test_ir_pair_named_dynamic_axes_and_pytorch_parity(ov_encoder: tuple) -> None:
    enc, arts = ov_encoder
    path = arts["fp32"].path
    assert path.suffix == ".xml" and path.with_suffix(".bin").is_file()
    manifest = read_manifest(path)
    assert [f["path"] for f in manifest.files] == ["encoder-fp32.bin", "encoder-fp32.xml"]
    assert manifest.size_bytes == path.stat().st_size + path.with_suffix(".bin").stat().st_size
    assert [s.shape for s in manifest.signature.inputs] == [("batch", "sequence")] * 2
    feed = text_batch(5, seq=23, seed=9)  # another batch and sequence length than the example
    with edgekit.load(path) as m:
        assert m.signature.input_names == ["input_ids", "attention_mask"]
        np.testing.assert_allclose(m.run(feed)["logits"], _torch(enc, feed), atol=1e-5)


def test_encoder_sizes_and_weight_types(ov_encoder: tuple) -> None:
    _, arts = ov_encoder
    fp32 = arts["fp32"].size_bytes
    assert arts["fp16"].size_bytes < 0.55 * fp32
    assert arts["int8"].size_bytes < 0.35 * fp32
    assert arts["int8-weights"].size_bytes < 0.35 * fp32
    assert arts["int4"].size_bytes < 0.25 * fp32
    conv = {p: read_manifest(arts[p].path).conversion for p in arts}
    assert conv["fp32"]["weight_types"] == {} and conv["fp16"]["weight_types"].get("f16", 0) >= 9
    assert conv["int8"]["ops"]["FakeQuantize"] >= 8 and conv["int8"]["weight_types"]["i8"] >= 9
    assert "FakeQuantize" not in conv["int8-weights"]["ops"] and conv["int8-weights"]["weight_types"]["u8"] >= 9
    # int4_asym: the 8 encoder MatMuls in unsigned 4 bit with zero points; embeddings and the head at 8 bit
    assert conv["int4"]["weight_types"]["u4"] == 8 and conv["int4"]["weight_types"]["u8"] == 2
    assert conv["int4"]["group_size"] == 128 and conv["int4"]["mode"] == "int4_asym"
    assert conv["int4"]["group_sizes"] == {"128": 8}  # no layer needed a smaller group
    assert conv["int8"]["calibration"] == {"samples": 32, "data": "calib.npz"}
    # preset=auto: mixed (asymmetric activations) for transformers; this encoder has no text task
    assert conv["int8"]["preset"] == ("mixed" if conv["int8"]["model_type"] == "transformer" else "performance")
    assert conv["int4"]["quantized_fraction"]["4"] > 0.5  # the encoder MatMuls hold most weights


def test_quantized_variants_stay_close(ov_encoder: tuple) -> None:
    # Floors, per output over the 34 verification samples (random token ids, so no task metric):
    # int8-weights only rounds weights per channel (and activations per group of 32 at run time):
    # mean cosine 0.99994 measured; int8 also quantizes activations from 32 calibration samples:
    # 0.9989 (worst sample 0.982); int4 (groups of 128, symmetric): 0.9976 (worst 0.987). Each floor
    # allows ~10x the measured mean error; mis-scaled or uncalibrated quantization lands far lower
    # (this encoder quantized with model_type=transformer measured 0.964 in development).
    _, arts = ov_encoder
    # Top-1 agreement is coarse on random weights (near-tie logits): 34/34, 33/34 and 31/34 measured.
    for precision, floor, worst, top1 in (("int8-weights", 0.9995, 0.998, 0.97), ("int8", 0.99, 0.95, 0.9),
                                          ("int4", 0.98, 0.95, 0.85)):
        out = arts[precision].verification.outputs[0]
        # static int8 on near-tie random logits may end short of the 0.98 top-1 target: degraded, not failed
        allowed = ("ok", "degraded") if precision == "int8" else ("ok",)
        assert arts[precision].status in allowed and not arts[precision].verification.gated
        assert out.cosine > floor and out.min_cosine > worst, (precision, out)
        assert out.top1_agreement >= top1, (precision, out)


def test_accuracy_control_keeps_layers_in_float(ov_cnn: dict) -> None:
    art = ov_cnn["int8"]
    control = read_manifest(art.path).conversion["accuracy_control"]
    assert control["max_drop"] == 0.0 and control["eval_samples"] == 48
    assert control["quantized_ops_plain"] >= 4  # 3 convolutions and the head, all quantized at first
    assert control["kept_in_float"], "int8 flips near-boundary samples: some layer must go back to float"
    assert control["quantized_ops"] == control["quantized_ops_plain"] - len(control["kept_in_float"])
    from edgekit.converters.openvino.graph import quantized_ops

    model = ov.Core().read_model(str(art.path))
    compute = {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in ("Convolution", "MatMul")}
    kept = set(control["kept_in_float"])
    assert kept <= compute and not kept & set(quantized_ops(model))  # real layers, now without FakeQuantize
    assert set(control["kept_in_float_modules"]) == kept
    metric = art.verification.metric
    assert metric["reference"] == 1.0 and metric["delta"] >= 0.0  # within the allowed drop of 0


# -- runtime ------------------------------------------------------------------------------------
def test_bf16_default_without_a_hint_and_f32_from_the_manifest(ov_encoder: tuple, tmp_path: Path) -> None:
    enc, arts = ov_encoder
    src = arts["fp32"].path
    for f in (src, src.with_suffix(".bin")):  # the IR without its manifest: its rt_info tells the hint
        shutil.copy(f, tmp_path / f.name.replace("encoder-fp32", "bare"))
    feed = text_batch(4, seq=16, seed=3)
    want = _torch(enc, feed)
    bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    with edgekit.load(tmp_path / "bare.xml") as m:
        info = m.describe()
        assert info["precision_hint_source"] == "the IR's rt_info (runtime_options)"
        assert info["precision_hint"] == "f32"
        assert np.abs(m.run(feed)["logits"] - want).max() < 1e-5
    model = ov.Core().read_model(str(tmp_path / "bare.xml"))  # an IR made elsewhere: no hint anywhere
    model.set_rt_info("default", ["runtime_options", "INFERENCE_PRECISION_HINT"])
    ov.save_model(model, str(tmp_path / "other.xml"), compress_to_fp16=False)
    with edgekit.load(tmp_path / "other.xml") as m:
        info = m.describe()
        assert info["precision_hint_source"] == "openvino default for the device"
        assert info["precision_hint"] == ("bf16" if bf16 else "f32")
        err = np.abs(m.run(feed)["logits"] - want).max()
        if bf16:  # bf16 keeps 8 bits of mantissa: visibly off, though not wrong
            assert 1e-4 < err < 0.05
    with edgekit.load(src) as m:
        assert m.describe()["precision_hint"] == "f32"
        assert m.describe()["precision_hint_source"].startswith("manifest")
        assert np.abs(m.run(feed)["logits"] - want).max() < 1e-5
    with edgekit.load(src, precision_hint="bf16") as m:  # an explicit hint wins over the manifest
        assert m.describe()["precision_hint"] == ("bf16" if bf16 else "f32")
    assert arts["fp32"].verification.outputs[0].max_abs_err < 1e-5  # so verification was not bf16


def test_onnx_through_openvino_matches_onnxruntime(onnx_encoder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.runtime import runtime_for
    from edgekit.runtimes.onnxruntime import OrtModel
    from edgekit.runtimes.openvino import OpenVinoModel

    # onnxruntime stays the default for .onnx whatever the discovery order; openvino on request
    assert runtime_for(edgekit.Format.ONNX) is OrtModel
    assert runtime_for(edgekit.Format.OPENVINO) is OpenVinoModel
    assert runtime_for(edgekit.Format.ONNX, "openvino") is OpenVinoModel
    feed = text_batch(3, seq=11, seed=5)
    with edgekit.load(onnx_encoder) as ort_model, \
            edgekit.load(onnx_encoder, runtime="openvino", precision_hint="f32") as ov_model:
        assert ort_model.name == "onnxruntime" and ov_model.name == "openvino"
        assert ov_model.signature.inputs[0].shape == ("batch", "sequence")  # names from the manifest
        np.testing.assert_allclose(ov_model.run(feed)["logits"], ort_model.run(feed)["logits"], atol=1e-5)
    # without onnxruntime, a .onnx is not silently moved to another runtime: the error says both ways
    from edgekit import deps

    real = deps.available
    monkeypatch.setattr(deps, "available", lambda module: module != "onnxruntime" and real(module))
    with pytest.raises(edgekit.MissingDependencyError) as e:
        edgekit.load(onnx_encoder)
    assert e.value.fix == "pip install 'edgekit[onnxruntime]', or load it with runtime='openvino'"


def test_tflite_through_openvino(tmp_path: Path) -> None:
    litert_torch = pytest.importorskip("litert_torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
    x = torch.randn(1, 8)
    litert_torch.convert(net, (x,)).export(str(tmp_path / "mlp.tflite"))
    with edgekit.load(tmp_path / "mlp.tflite", runtime="openvino", precision_hint="f32") as m:
        (name,) = m.signature.input_names
        np.testing.assert_allclose(next(iter(m.run({name: x.numpy()}).values())), net(x).detach().numpy(),
                                   atol=1e-5)


def test_static_shapes_and_the_npu_rule(ov_encoder: tuple) -> None:
    from edgekit.runtimes.openvino import OpenVinoRunOptions

    _, arts = ov_encoder
    path = arts["fp32"].path
    with edgekit.load(path, static_shapes="input_ids=1x12,attention_mask=1x12") as m:
        assert [s.shape for s in m.signature.inputs] == [(1, 12), (1, 12)]
        assert m.describe()["static_shapes"] == {"input_ids": [1, 12], "attention_mask": [1, 12]}
        with pytest.raises(edgekit.InputError, match="axis 1"):
            m.run(text_batch(1, seq=13))
    with pytest.raises(edgekit.ConfigError, match="rank 3"):
        edgekit.load(path, static_shapes={"input_ids": (1, 2, 3), "attention_mask": (1, 3)})
    with pytest.raises(edgekit.ConfigError, match="unknown input"):
        edgekit.load(path, static_shapes={"ids": (1, 3)})
    # no NPU here: the planning step an NPU load goes through, on the same model
    with edgekit.load(path) as m:
        model = ov.Core().read_model(str(path))
        shapes, why = m._static_shapes(model, OpenVinoRunOptions(), "NPU")
        assert shapes == {"input_ids": (2, 16), "attention_mask": (2, 16)} and "manifest" in why
        assert m._static_shapes(model, OpenVinoRunOptions(), "CPU") == (None, None)
        m.manifest = None
        with pytest.raises(edgekit.ConfigError, match="static shapes only"):
            m._static_shapes(model, OpenVinoRunOptions(), "AUTO:NPU,CPU")


def test_cache_dir_threads_and_auto(ov_encoder: tuple, tmp_path: Path) -> None:
    _, arts = ov_encoder
    path = arts["int8"].path
    feed = text_batch(2, seq=8, seed=1)
    outs = []
    for _ in range(2):
        with edgekit.load(path, threads=1, cache_dir=tmp_path / "cache") as m:
            outs.append(m.run(feed)["logits"])
            assert m.describe()["threads"] == 1 and m.describe()["num_streams"] == 1
    assert list((tmp_path / "cache").glob("*.blob")), "the model cache holds the compiled blob"
    np.testing.assert_array_equal(outs[0], outs[1])
    with edgekit.load(path, device="auto") as m:
        assert m.describe()["openvino_device"].startswith("AUTO:") and "CPU" in m.describe()["execution_devices"]
        np.testing.assert_allclose(m.run(feed)["logits"], outs[0], atol=1e-5)


def test_bad_artifacts_and_devices_give_clear_errors(ov_encoder: tuple, tmp_path: Path) -> None:
    from edgekit.runtimes.openvino import OpenVinoModel

    _, arts = ov_encoder
    src = arts["fp32"].path
    xml, weights = src.read_bytes(), src.with_suffix(".bin").read_bytes()
    (tmp_path / "nobin.xml").write_bytes(xml)
    with pytest.raises(edgekit.ArtifactError, match=r"needs its weights file nobin\.bin") as e:
        edgekit.load(tmp_path / "nobin.xml")
    assert "copy nobin.bin next to nobin.xml" in e.value.fix
    (tmp_path / "short.xml").write_bytes(xml)
    (tmp_path / "short.bin").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(edgekit.ArtifactError, match="openvino cannot read short.xml: Incorrect weights"):
        edgekit.load(tmp_path / "short.xml")
    (tmp_path / "garbage.xml").write_bytes(b"not an IR at all")
    with pytest.raises(edgekit.ArtifactError, match="not an OpenVINO IR"):
        edgekit.load(tmp_path / "garbage.xml")
    (tmp_path / "cut.xml").write_bytes(xml[: len(xml) // 2])
    (tmp_path / "cut.bin").write_bytes(weights)
    with pytest.raises(edgekit.ArtifactError, match="openvino cannot read cut.xml"):
        edgekit.load(tmp_path / "cut.xml")
    # with its manifest, a replaced .bin is caught by size before OpenVINO reads it
    for f in (src, src.with_suffix(".bin"), arts["fp32"].manifest_path):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / src.with_suffix(".bin").name).write_bytes(weights + b"\0" * 8)
    with pytest.raises(edgekit.ArtifactError, match="its manifest records"):
        edgekit.load(tmp_path / src.name)
    missing = next((d for d in ("gpu", "npu") if edgekit.Device(d) not in OpenVinoModel.devices()), None)
    if missing is not None:
        with pytest.raises(edgekit.DeviceUnavailableError, match=f"device '{missing}' is not available") as e:
            edgekit.load(src, device=missing)
        assert "cpu (CPU)" in e.value.fix
    with pytest.raises(edgekit.DeviceUnavailableError, match="openvino:GPU.7"):
        edgekit.load(src, device="openvino:GPU.7")
    with pytest.raises(edgekit.ConfigError, match="known options: cache_dir"):
        edgekit.load(src, optimization="all")
    with pytest.raises(edgekit.ConfigError, match="use one of: f32, bf16, f16"):
        edgekit.load(src, precision_hint="int8")


def test_converter_option_errors_come_before_any_work(cnn: torch.nn.Module, tmp_path: Path) -> None:
    x = (torch.randn(2, 3, 16, 16),)
    with pytest.raises(edgekit.ConfigError, match="openvino does not support precision.*q4_0"):
        edgekit.convert(cnn, x, targets=["openvino"], precisions=["q4_0"], out=tmp_path)
    with pytest.raises(edgekit.ConfigError, match="unknown preset 'fast'"):
        edgekit.convert(cnn, x, targets=["openvino"], options={"openvino": {"preset": "fast"}}, out=tmp_path)
    with pytest.raises(edgekit.CalibrationError, match="needs labelled evaluation data") as e:
        edgekit.convert(cnn, x, targets=["openvino"], precisions=["fp32"], out=tmp_path,
                        options={"openvino": {"max_accuracy_drop": "0.01"}})
    assert "--eval" in e.value.fix
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_cli_convert_pt2_to_openvino_and_devices(cnn: torch.nn.Module, cnn_calib: str, tmp_path: Path) -> None:
    from edgekit.cli import main

    program = torch.export.export(cnn, (torch.randn(2, 3, 16, 16),),
                                  dynamic_shapes={"pixels": {0: torch.export.Dim("batch")}})
    torch.export.save(program, str(tmp_path / "cnn.pt2"))
    out = tmp_path / "out"
    # int4 is left to the defaults: NNCF keeps a CNN's only Linear (its last layer) at 8 bit, so an
    # int4 file would hold no 4-bit weight and is skipped (an explicit --precision int4 is refused)
    res = CliRunner().invoke(main, ["convert", str(tmp_path / "cnn.pt2"), "--to", "openvino",
                                    "--calib", cnn_calib, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    arts = {a["precision"]: a for a in json.loads(res.stdout)["artifacts"]}  # stderr: "skipped cnn-int4.xml: ..."
    assert [a["status"] for a in arts.values()] == ["ok", "ok", "skipped"] and "skipped cnn-int4.xml" in res.stderr
    arts.pop("int4")
    assert arts["fp32"]["verification"]["outputs"][0]["max_abs_err"] < 1e-4
    assert arts["int8"]["verification"]["outputs"][0]["cosine"] > 0.98
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"cnn-{p}{s}" for p in arts for s in (".bin", ".xml", ".xml.edgekit.json"))
    res = CliRunner().invoke(main, ["devices", "--json"])
    row = next(r for r in json.loads(res.output)["runtimes"] if r["runtime"] == "openvino")
    assert row["installed"] and row["devices"]["cpu"] == ["CPU"] and "onnx" in row["formats"]


def test_runtime_module_imports_no_openvino(tmp_path: Path) -> None:
    code = ("import sys, edgekit.runtimes.openvino, edgekit.converters.openvino; "
            "print(','.join(m for m in ('openvino', 'nncf', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stderr
