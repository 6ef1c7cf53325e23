"""TFLite (LiteRT): conversion of a CNN, an encoder and a tiny BERT at every precision, verified in
a clean process, and the LiteRT runtime backend (batches, padding, layout, int8 I/O, crashes).

Parity floors for the quantized variants (cosine to PyTorch, worst sample; top-1 agreement):
int8-dynamic >= 0.99 / 1.0 and int8 (full integer) >= 0.98 / 0.9 on these models. Measured here
(litert-torch 0.10, ai-edge-litert 2.3, worst cosine over the example and 32 calibration samples):
int8-dynamic 0.9986 (encoder) to 0.99996 (CNN), int8 0.9993 (encoder) to 0.9999 (CNN), top-1
always 1.0. The floors leave room for calibration noise and other CPUs' kernels, yet catch a
broken route: the wrong static route for these transformers lands at 0.63-0.74 (docs/tflite.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgekit
from edgekit.cli import main as cli
from edgekit.errors import ArtifactError, DeviceUnavailableError, InputError, RuntimeFailure
from edgekit.manifest import read_manifest
from tests.conftest import CALIB_TEXTS, install_runtime_plugin, text_batch

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")
pytestmark = pytest.mark.usefixtures("probe_cache")  # LiteRT probe markers in a fresh cache

FLOORS = {"int8-dynamic": {"min_cosine": 0.99, "top1": 1.0}, "int8": {"min_cosine": 0.98, "top1": 0.9}}


@pytest.fixture(scope="module")
def cnn_tfl(cnn: torch.nn.Module, cnn_calib: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """CNN at every precision; int8 keeps int8 I/O tensors (the runtime maps floats for the user)."""
    out = tmp_path_factory.mktemp("cnn_tfl")
    arts = edgekit.convert(cnn, (torch.randn(2, 3, 16, 16),), targets=["tflite"], name="cnn",
                           output_names=["logits"], precisions=["fp32", "fp16", "int8-dynamic", "int8"],
                           calib=cnn_calib, out=out, options={"tflite": {"int8_io": True}})
    return {a.precision.value: a for a in arts}


@pytest.fixture(scope="module")
def cnn_nhwc(cnn: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> edgekit.conversion.Artifact:
    out = tmp_path_factory.mktemp("cnn_nhwc")
    (art,) = edgekit.convert(cnn, (torch.randn(2, 3, 16, 16),), targets=["tflite"], name="cnn-nhwc",
                             output_names=["logits"], precisions=["fp32"], out=out,
                             options={"tflite": {"layout": "nhwc"}})
    return art


@pytest.fixture(scope="module")
def enc_tfl(encoder: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("enc_tfl")
    np.savez(tmp / "calib.npz", **text_batch(32, seed=2))
    arts = edgekit.convert(encoder, text_batch(2), targets=["tflite"], name="encoder", output_names=["logits"],
                           dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                         "attention_mask": {0: "batch", 1: "sequence"}},
                           precisions=["fp32", "int8-dynamic", "int8"], calib=tmp / "calib.npz", out=tmp)
    return {a.precision.value: a for a in arts}


@pytest.fixture(scope="module")
def bert_tfl(hf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("bert_tfl")
    calib = tmp / "calib.txt"
    calib.write_text("\n".join(CALIB_TEXTS) + "\n", encoding="utf-8")
    arts = edgekit.convert(hf_dir, targets=["tflite"], precisions=["fp32", "int8-dynamic", "int8"],
                           calib=calib, out=tmp / "out", seq_len=32)
    return {a.precision.value: a for a in arts}


def _bert_logits(hf_dir: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(hf_dir).eval()
    with torch.inference_mode():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()


# -- conversion -------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["cnn_tfl", "enc_tfl", "bert_tfl"])
def test_fp32_matches_pytorch_in_a_clean_process(which: str, request: pytest.FixtureRequest) -> None:
    art = request.getfixturevalue(which)["fp32"]
    assert art.status == "ok" and art.path.suffix == ".tflite"
    v = art.verification
    assert v.passed and v.gated
    assert all(o.max_abs_err < 1e-5 for o in v.outputs), [o.max_abs_err for o in v.outputs]
    conv = read_manifest(art.path).conversion
    assert conv["route"].startswith("torch.export + litert-torch")
    assert "litert-torch" in read_manifest(art.path).versions


@pytest.mark.parametrize("which", ["cnn_tfl", "enc_tfl", "bert_tfl"])
def test_int8_variants_agree_with_pytorch_and_are_smaller(which: str, request: pytest.FixtureRequest,
                                                           record_property: pytest.RecordProperty) -> None:
    arts = request.getfixturevalue(which)
    for precision, floor in FLOORS.items():
        art = arts[precision]
        assert art.status == "ok", art.reason
        (out,) = art.verification.outputs
        record_property(f"{which}-{precision}", {"min_cosine": out.min_cosine, "top1": out.top1_agreement,
                                                 "bytes": art.size_bytes, "route": art.route})
        assert out.min_cosine >= floor["min_cosine"], (precision, out)
        assert out.top1_agreement >= floor["top1"], (precision, out)
        assert art.size_bytes < arts["fp32"].size_bytes
    conv = read_manifest(arts["int8-dynamic"].path).conversion
    assert conv["route_key"] == "aeq" and conv["attempts"][0]["status"] == "ok"


def test_cnn_sizes_shrink_with_precision(cnn_tfl: dict) -> None:
    fp32 = cnn_tfl["fp32"].size_bytes
    assert cnn_tfl["fp16"].size_bytes < 0.6 * fp32
    assert cnn_tfl["int8-dynamic"].size_bytes < 0.35 * fp32 and cnn_tfl["int8"].size_bytes < 0.35 * fp32
    assert cnn_tfl["fp16"].verification.outputs[0].min_cosine > 0.9999


def test_manifest_records_static_shapes_plan_and_route(bert_tfl: dict) -> None:
    m = read_manifest(bert_tfl["int8"].path)
    conv = m.conversion
    assert conv["route_key"] == "pt2e" and "PT2E static int8" in conv["route"]
    assert conv["static_shapes"] == {n: [1, 32] for n in ("input_ids", "token_type_ids", "attention_mask")}
    assert "checked: outputs unchanged" in conv["padding"]["sequence"]
    assert conv["float_io_added"] == ["logits"] and conv["io_types"]["logits"] == "float32"
    plan = {d["name"]: d for d in conv["runtime_plan"]["inputs"]}
    assert plan["input_ids"] == {"name": "input_ids", "batch_axis": 0, "pad_axis": 1, "pad_name": "sequence",
                                 "pad_value": 0, "source_dtype": "int64"}
    assert conv["calibration"]["samples"] == len(CALIB_TEXTS)
    # the signature a user sees: int32 in the file, any batch, sequences up to 32
    for spec in m.signature.inputs:
        assert spec.dtype == "int32" and spec.shape == ("batch", "sequence")


# -- runtime ----------------------------------------------------------------------------------
def test_any_batch_and_shorter_sequences_run_like_transformers(bert_tfl: dict, hf_dir: Path) -> None:
    from transformers import AutoTokenizer

    texts = ["fun", "the ending was boring, not very good and really not fun at all!", "a great film"]
    enc = AutoTokenizer.from_pretrained(hf_dir)(texts, padding=True, return_tensors="np")
    feed = {k: v.astype(np.int64) for k, v in enc.items()}
    want = _bert_logits(hf_dir, feed)
    with edgekit.load(bert_tfl["fp32"].path, threads=2) as m:
        got = m.run(feed)["logits"]
        assert got.shape == (3, 3)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
        too_long = {k: np.ones((1, 33), np.int64) for k in feed}
        with pytest.raises(InputError, match="converted for at most 32"):
            m.run(too_long)
        with pytest.raises(InputError, match="cannot|casting int64 to int32 would change values"):
            m.run({**feed, "input_ids": feed["input_ids"] + 2**40})


def test_nhwc_artifact_takes_channel_last_arrays(cnn_nhwc, cnn_tfl: dict, cnn: torch.nn.Module) -> None:
    x = np.random.default_rng(5).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        want = cnn(torch.from_numpy(x)).numpy()
    with edgekit.load(cnn_nhwc.path) as nhwc, edgekit.load(cnn_tfl["fp32"].path) as nchw:
        assert nhwc.signature.inputs[0].shape == ("batch", 16, 16, 3)
        assert nchw.signature.inputs[0].shape == ("batch", 3, 16, 16)
        a = nchw.run({"pixels": x})["logits"]
        b = nhwc.run({"pixels": x.transpose(0, 2, 3, 1)})["logits"]
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(b, want, atol=1e-5)
    with edgekit.load(cnn_nhwc.path, feed_layout="nchw") as m:  # the PyTorch layout, transposed for you
        np.testing.assert_allclose(m.run({"pixels": x})["logits"], b, atol=1e-6)
        np.testing.assert_allclose(m.run({"pixels": x.transpose(0, 2, 3, 1)})["logits"], b, atol=1e-6)
        assert m.benchmark(runs=3, warmup=1).status == "ok"  # synthesized from the NHWC signature
    assert read_manifest(cnn_nhwc.path).conversion["static_shapes"] == {"pixels": [1, 16, 16, 3]}


def test_int8_io_is_float_for_the_user_unless_raw(cnn_tfl: dict) -> None:
    path = cnn_tfl["int8"].path
    assert read_manifest(path).conversion["io_types"] == {"pixels": "int8", "logits": "int8"}
    x = np.random.default_rng(3).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with edgekit.load(path) as m:
        assert m.signature.inputs[0].dtype == "float32" and m.signature.outputs[0].dtype == "float32"
        assert m.describe()["quantized_io"] == {"pixels": "float<->int8", "logits": "float<->int8"}
        floats = m.run({"pixels": x})["logits"]
    with edgekit.load(path, raw_int8=True) as raw:
        assert raw.signature.inputs[0].dtype == "int8"
        q = np.clip(np.rint(x / 0.05), -128, 127).astype(np.int8)
        out = raw.run({"pixels": q})["logits"]
        assert out.dtype == np.int8 and out.shape == floats.shape


def test_int64_inputs_narrowed_to_int32_are_cast_for_the_user(enc_tfl: dict, encoder: torch.nn.Module) -> None:
    feed = text_batch(5, seed=9)  # int64, batch 5 through a batch-1 graph
    with torch.inference_mode():
        want = encoder(*(torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask"))).numpy()
    with edgekit.load(enc_tfl["fp32"].path) as m:
        assert [s.dtype for s in m.signature.inputs] == ["int32", "int32"]
        np.testing.assert_allclose(m.run(feed)["logits"], want, atol=1e-5)
        assert m.describe()["padded_axes"] == []  # averaging over positions: padding was refused
    plan = read_manifest(enc_tfl["fp32"].path).conversion
    assert plan["padding"]["sequence"].startswith("not padded: output 'logits' changes")


def test_cpu_backends_threads_and_unavailable_devices(cnn_tfl: dict) -> None:
    path = cnn_tfl["fp32"].path
    x = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    with edgekit.load(path, threads=2) as a, edgekit.load(path, xnnpack=False) as b:
        assert a.describe()["backend"] == "xnnpack" and a.describe()["threads"] == 2
        assert b.describe()["backend"] == "builtin"
        np.testing.assert_allclose(a.run(pixels=x)["logits"], b.run(pixels=x)["logits"], atol=1e-5)
    with pytest.raises(DeviceUnavailableError) as info:
        edgekit.load(path, device="gpu")
    assert "cpu (xnnpack, builtin)" in info.value.fix
    with pytest.raises(DeviceUnavailableError, match="no delegate library"):
        edgekit.load(path, device="litert:/nonexistent/libedgetpu.so.1")


def test_corrupt_and_truncated_files_are_artifact_errors(cnn_tfl: dict, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"this is not a flatbuffer at all")
    with pytest.raises(ArtifactError, match="not a TFLite model") as info:
        edgekit.load(junk)
    assert "re-run `edgekit convert --to tflite`" in info.value.fix
    data = cnn_tfl["fp32"].path.read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ArtifactError, match="truncated or corrupt|cannot load"):
        edgekit.load(cut)


CRASHING = '''
import os
from edgekit.runtimes.litert import LiteRtModel
from edgekit.runtimes import RUNTIMES

@RUNTIMES.register("litert-aborting")
class Aborting(LiteRtModel):
    """LiteRT that dies the way a kernel CHECK does on a bad model (SIGABRT)."""
    name = "litert-aborting"
    def _invoke(self, chunk):
        os.abort()
'''


@pytest.fixture
def aborting_runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A runtime plugin registered through the entry-point group, as a third party would: the
    probe process finds it there; this process imports it directly (its registry is built)."""
    import importlib

    from edgekit.runtimes import RUNTIMES

    install_runtime_plugin(tmp_path, monkeypatch, "aborting_litert", CRASHING)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("aborting_litert")
    yield "litert-aborting"
    RUNTIMES._items.pop("litert-aborting", None)
    sys.modules.pop("aborting_litert", None)


def test_a_model_that_aborts_litert_is_an_error_not_a_dead_caller(cnn_tfl: dict, aborting_runtime: str) -> None:
    with pytest.raises(RuntimeFailure) as info:
        edgekit.load(cnn_tfl["int8-dynamic"].path, runtime=aborting_runtime)
    assert "SIGABRT" in info.value.problem and "your process was not affected" in info.value.fix
    # the same file probes fine with LiteRT itself, once: the second load finds the marker
    with edgekit.load(cnn_tfl["int8-dynamic"].path) as first:
        assert first.describe()["probe"] == "ok"
    with edgekit.load(cnn_tfl["int8-dynamic"].path) as second:
        assert second.describe()["probe"] == "cached"


def test_tflite_runtime_fallback_warns(cnn_tfl: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Old ARM boards have only tflite_runtime: it is used, with a warning about int8 results."""
    import types

    from ai_edge_litert import interpreter

    from edgekit.runtimes import litert

    fake = types.ModuleType("tflite_runtime")
    fake.interpreter = interpreter
    monkeypatch.setitem(sys.modules, "tflite_runtime", fake)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", interpreter)
    monkeypatch.setattr(litert, "_backend_module", lambda: "tflite_runtime")
    monkeypatch.setattr(litert, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="wrong results for some int8 models"):
        with edgekit.load(cnn_tfl["fp32"].path, probe=False) as m:
            assert m.run(pixels=np.zeros((1, 3, 16, 16), np.float32))["logits"].shape == (1, 10)


def test_runtime_module_imports_no_litert(tmp_path: Path) -> None:
    code = ("import sys, edgekit.runtimes.litert, edgekit.runtime; "
            "print(','.join(m for m in ('ai_edge_litert', 'torch', 'litert_torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stderr


def test_cli_runs_a_tflite_artifact_and_lists_litert(cnn_tfl: dict) -> None:
    res = CliRunner().invoke(cli, ["run", str(cnn_tfl["int8"].path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)["outputs"]["logits"]
    assert out["shape"] == [1, 10] and out["dtype"] == "float32"
    res = CliRunner().invoke(cli, ["devices", "--json"])
    rows = {r["runtime"]: r for r in json.loads(res.stdout)["runtimes"]}
    assert rows["litert"]["devices"]["cpu"] == ["xnnpack", "builtin"]


def test_options_are_checked_before_any_work() -> None:
    from edgekit.converters.tflite import TfliteOptions
    from edgekit.errors import ConfigError
    from edgekit.options import parse_options

    opts = parse_options(TfliteOptions, {"input_shapes": "input_ids=1x128;attention_mask=1x128", "layout": "NHWC"})
    assert opts.input_shapes == {"input_ids": (1, 128), "attention_mask": (1, 128)} and opts.layout == "nhwc"
    for bad, match in (({"layout": "chw"}, "unknown layout"), ({"int8_route": "tf"}, "unknown int8_route"),
                       ({"input_shapes": "pixels=1xAx3"}, "not a list of sizes"),
                       ({"input_shapes": "pixels"}, "is not NAME=DxD"), ({"calib": 1}, "unknown TfliteOptions")):
        with pytest.raises(ConfigError, match=match):
            parse_options(TfliteOptions, bad)


class _Scorer(torch.nn.Module):
    """Float features in; float scores and an int64 class index out (narrowed to int32 in the file)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(6, 4)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.body(features)
        return scores, scores.argmax(-1)


def test_int64_outputs_come_back_as_int64(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _Scorer().eval()
    (art,) = edgekit.convert(model, (torch.randn(2, 6),), targets=["tflite"], precisions=["fp32"],
                             output_names=["scores", "label"], out=tmp_path)
    assert art.status == "ok"
    x = np.random.default_rng(0).standard_normal((7, 6)).astype(np.float32)
    with edgekit.load(art.path, probe=False) as m:
        assert [s.dtype for s in m.signature.outputs] == ["float32", "int64"]
        out = m.run(features=x)
    assert out["label"].dtype == np.int64 and out["label"].shape == (7,)
    with torch.inference_mode():
        np.testing.assert_array_equal(out["label"], model(torch.from_numpy(x))[1].numpy())
