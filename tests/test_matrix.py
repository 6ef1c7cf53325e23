"""`edgekit bench --matrix`: every format x precision as one table, JSON and plot; resume; text eval data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.calib import load_eval
from edgekit.errors import CalibrationError
from edgekit.matrix import BenchSettings, matrix
from edgekit.sources import resolve_source
from tests.conftest import CALIB_TEXTS, LABELS

TINY_BENCH = BenchSettings(warmup=1, runs=5, isolated=False)
ROW_KEYS = {"format", "precision", "status", "reason", "size_bytes", "metric", "metric_delta", "p50_ms",
            "p90_ms", "throughput", "peak_rss_mb", "speedup_vs_eager"}


def png_points(path: Path) -> list[str]:
    """A real PNG (PIL decodes it) and the point labels it says it draws."""
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.size[0] > 400
        description = img.text["Description"]
    assert description.startswith("points: ")
    return description.removeprefix("points: ").split(", ")


# --------------------------------------------------------------------------------------------
# The API on the small CNN: ONNX, OpenVINO, TFLite, a failed row, accuracy, resume
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cnn_matrix(cnn: nn.Module, cnn_calib: str, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    tmp = tmp_path_factory.mktemp("matrix")
    rng = np.random.default_rng(3)
    pixels = rng.standard_normal((48, 3, 16, 16)).astype(np.float32)
    with torch.inference_mode():  # labels the model mostly gets right: accuracy is meaningful
        labels = cnn(torch.from_numpy(pixels)).argmax(1).numpy()
    labels[:6] = (labels[:6] + 1) % 10  # and a few it gets wrong
    np.savez(tmp / "eval.npz", pixels=pixels, labels=labels)
    kwargs = dict(example_inputs=(torch.randn(2, 3, 16, 16),), output_names=["logits"], name="cnn",
                  targets="onnx,openvino,tflite", precisions="fp32,int4", calib=cnn_calib,
                  eval_data=tmp / "eval.npz", out=tmp / "out", bench=TINY_BENCH)
    return matrix(cnn, **kwargs), kwargs


def test_every_variant_is_a_row_and_unsupported_ones_say_why(cnn_matrix: tuple) -> None:
    res, _ = cnn_matrix
    got = [(r.label, r.status) for r in res.rows]
    assert got == [("pytorch/fp32", "ok"),
                   ("onnx/fp32", "ok"), ("onnx/int4", "ok"), ("openvino/fp32", "ok"), ("openvino/int4", "failed"),
                   ("tflite/fp32", "ok"), ("tflite/int4", "failed")]
    # NNCF keeps a CNN's only Linear (its last layer) at 8 bit: an int4 IR with no 4-bit weight is refused
    assert "no 4-bit weight" in res.rows[4].reason and res.rows[4].stage == "convert"
    failed = res.rows[-1]
    assert failed.stage == "plan" and failed.reason.startswith("tflite does not support int4")
    assert failed.p50_ms is None and failed.size_bytes is None
    assert res.converted == 5 and res.benchmarked == 4 and res.reused == 0


def test_rows_carry_size_accuracy_speed_and_ratios_to_eager(cnn_matrix: tuple, cnn: nn.Module) -> None:
    res, kwargs = cnn_matrix
    rows = {r.label: r for r in res.rows}
    base = rows["pytorch/fp32"]
    z = np.load(kwargs["eval_data"])
    with torch.inference_mode():
        want = float((cnn(torch.from_numpy(z["pixels"])).argmax(1).numpy() == z["labels"]).mean())
    assert base.metric_name == "accuracy" and base.metric == pytest.approx(want) == 42 / 48
    assert base.size_bytes == sum(p.numel() * 4 for p in cnn.state_dict().values() if p.is_floating_point()) + 8 * 3
    for r in res.rows:
        if r.status != "ok":
            continue
        assert r.p50_ms > 0 and r.p90_ms >= r.p50_ms and r.throughput > 0 and r.runs == 5
        if r.format == "pytorch":
            assert r.speedup_vs_eager == pytest.approx(1.0)
        else:  # the median of the interleaved pairs' eager/artifact ratios
            ratios = sorted(e / a for e, a in r.eager_pairs)
            assert len(ratios) == 3 and r.speedup_vs_eager == pytest.approx(ratios[1], rel=1e-3)
        assert r.metric_reference == pytest.approx(want) and r.metric_name == "accuracy"
        assert r.metric_delta == pytest.approx(r.metric - want)
        if r.format != "pytorch":
            files = [Path(r.artifact)] + ([Path(r.artifact).with_suffix(".bin")] if r.format == "openvino" else [])
            assert r.size_bytes == sum(f.stat().st_size for f in files)
            assert r.peak_rss_mb > 10 and r.cosine > 0.98 and r.artifact_sha256 and r.manifest_sha256
    assert rows["onnx/fp32"].metric_delta == 0.0 and rows["onnx/int4"].size_bytes < rows["onnx/fp32"].size_bytes


def test_json_file_and_plot(cnn_matrix: tuple) -> None:
    res, _ = cnn_matrix
    data = json.loads(res.path.read_text())
    assert data["schema"] == "edgekit.matrix/1" and data["complete"] is True
    assert data["counts"] == {"rows": 7, "ok": 5, "failed": 2, "converted": 5, "benchmarked": 4, "reused": 0}
    assert all(ROW_KEYS <= set(row) for row in data["rows"])
    assert data["inputs"] == {"pixels": [1, 3, 16, 16]}
    ok = [r["format"] + "/" + r["precision"] for r in data["rows"] if r["status"] == "ok"]
    assert png_points(res.plot_path) == ok == data["plot"]["points"]


def test_resume_converts_and_times_only_what_is_missing_or_changed(cnn_matrix: tuple, cnn: nn.Module) -> None:
    res, kwargs = cnn_matrix
    out = kwargs["out"]
    files = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file() and not p.name.startswith("matrix")}
    first = {r.label: r.to_dict() for r in res.rows}

    again = matrix(cnn, **kwargs, resume=True)
    assert (again.converted, again.benchmarked, again.reused) == (1, 0, 4)  # the refused openvino/int4 is retried
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in files} == files
    for r in again.rows:  # the same measurements, marked as reused
        assert {**r.to_dict(), "reused": False} == {**first[r.label], "reused": False}, r.label
        assert r.reused == (r.status == "ok")

    # an artifact changed on disk is converted again; a converted-but-untimed row is only timed
    data = json.loads(again.path.read_text())
    for row in data["rows"]:
        if row["format"] == "openvino" and row["precision"] == "fp32":
            row.update(status="converted", p50_ms=None)
    again.path.write_text(json.dumps(data))
    onnx_int4 = out / "cnn-int4.onnx"
    onnx_int4.write_bytes(onnx_int4.read_bytes() + b"\0")
    third = matrix(cnn, **kwargs, resume=True)
    assert (third.converted, third.benchmarked, third.reused) == (2, 2, 2)
    rows = {r.label: r for r in third.rows}
    assert not rows["onnx/int4"].reused and rows["onnx/int4"].status == "ok"
    assert rows["openvino/fp32"].status == "ok" and rows["openvino/fp32"].p50_ms > 0
    assert (out / "cnn-fp32.xml").stat().st_mtime_ns == files["cnn-fp32.xml"]  # timed, not converted
    assert (out / "cnn-int4.onnx").stat().st_mtime_ns != files["cnn-int4.onnx"]


def test_resume_refuses_other_benchmark_settings(cnn_matrix: tuple, cnn: nn.Module) -> None:
    _, kwargs = cnn_matrix
    from edgekit.errors import ConfigError

    with pytest.raises(ConfigError, match="measured with other benchmark settings") as info:
        matrix(cnn, **{**kwargs, "bench": BenchSettings(warmup=1, runs=7, isolated=False)}, resume=True)
    assert "--out" in info.value.fix


# --------------------------------------------------------------------------------------------
# The command line, with a converter plugin whose package is absent
# --------------------------------------------------------------------------------------------

PLUGIN = '''
from edgekit.converters import CONVERTERS
from edgekit.converters.tflite import TfliteConverter
from edgekit.types import Format


@CONVERTERS.register(Format.TFLITE)
class NpuTflite(TfliteConverter):
    """A vendor's TFLite converter whose SDK is not installed here."""
    requires = ("edgekit_absent_npu_sdk",)
    extra = "npu-sdk"
'''


class Scorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("matrix_cli")
    plugins = tmp / "plugins"
    plugins.mkdir()
    (plugins / "npu_tflite.py").write_text(textwrap.dedent(PLUGIN))
    dist = plugins / "npu_tflite-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: npu-tflite\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[edgekit.converters]\nnpu_tflite = npu_tflite\n")
    torch.manual_seed(0)
    program = torch.export.export(Scorer().eval(), (torch.randn(4, 6),),
                                  dynamic_shapes=({0: torch.export.Dim("rows")},))
    torch.export.save(program, tmp / "scorer.pt2")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), *sys.path])}
    return tmp, env


def test_cli_matrix_json_rows_and_a_missing_package(cli_env: tuple[Path, dict]) -> None:
    """A plugin replaces the TFLite converter with one whose SDK is absent: its rows say what to install."""
    tmp, env = cli_env
    proc = subprocess.run([sys.executable, "-m", "edgekit.cli", "bench", "--matrix", str(tmp / "scorer.pt2"),
                           "--to", "onnx,tflite", "--precision", "fp32,int8-dynamic", "--runs", "5",
                           "--warmup", "1", "--in-process", "--out", str(tmp / "out"), "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr  # a row failed
    data = json.loads(proc.stdout)
    assert data["schema"] == "edgekit.matrix/1" and set(data) >= {"rows", "skipped", "counts", "plot"}
    assert all(ROW_KEYS <= set(row) for row in data["rows"])
    got = [(r["format"], r["precision"], r["status"]) for r in data["rows"]]
    assert got == [("pytorch", "fp32", "ok"), ("onnx", "fp32", "ok"), ("onnx", "int8-dynamic", "ok"),
                   ("tflite", "fp32", "failed"), ("tflite", "int8-dynamic", "failed")]
    for row in data["rows"][3:]:
        assert row["stage"] == "dependencies" and "'edgekit_absent_npu_sdk'" in row["reason"]
        assert row["reason"].endswith("pip install 'edgekit[npu-sdk]'")
    assert png_points(tmp / "out" / "matrix.png") == ["pytorch/fp32", "onnx/fp32", "onnx/int8-dynamic"]
    assert data["counts"]["converted"] == 2 and data["rows"][1]["artifact"].endswith("scorer-fp32.onnx")
    assert json.loads((tmp / "out" / "matrix.json").read_text())["rows"] == data["rows"]


def test_cli_matrix_options_belong_to_the_matrix_command(cli_env: tuple[Path, dict]) -> None:
    from click.testing import CliRunner

    from edgekit.cli import main, matrix_alias

    res = CliRunner().invoke(main, ["bench", "--resume", str(cli_env[0] / "x.onnx")])
    assert res.exit_code == 2 and "No such option '--resume'" in res.output
    res = CliRunner().invoke(main, ["bench"])
    assert res.exit_code == 2 and "Missing argument 'ARTIFACTS...'" in res.output
    # the one-release alias: bench --matrix SRC ... is matrix SRC ...
    assert matrix_alias(["bench", "--matrix", "src", "--to", "onnx"]) == ["matrix", "src", "--to", "onnx"]
    assert matrix_alias(["bench", "--json", "--matrix=src"]) == ["matrix", "src", "--json"]
    assert matrix_alias(["bench", "a.onnx"]) == ["bench", "a.onnx"]
    res = CliRunner().invoke(main, ["matrix"])
    assert res.exit_code == 2 and "Missing argument 'SOURCE...'" in res.output


# --------------------------------------------------------------------------------------------
# Labelled text evaluation data (.jsonl with text and label)
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_source(hf_dir: Path):
    return resolve_source(hf_dir)


def test_jsonl_eval_maps_label_names_and_ids(hf_source, tmp_path: Path) -> None:
    names = {v: k for k, v in LABELS.items()}
    lines = [{"text": t, "label": LABELS[i % 3] if i % 2 else i % 3} for i, t in enumerate(CALIB_TEXTS)]
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    ev = load_eval(path, hf_source)
    want = [names[x["label"]] if isinstance(x["label"], str) else x["label"] for x in lines]
    assert ev.labels.dtype == np.int64 and ev.labels.tolist() == want == [i % 3 for i in range(len(lines))]
    tokens = hf_source.tokenize(CALIB_TEXTS)
    assert sorted(ev.data.arrays) == sorted(tokens)
    for name, arr in tokens.items():
        np.testing.assert_array_equal(ev.data.arrays[name], arr)


@pytest.mark.parametrize("line,problem,fix", [
    ({"text": "good film", "label": "happy"}, "eval.jsonl:2: label 'happy' is not one of the model's labels",
     "use a label name or its integer id; the labels are: 'negative', 'neutral', 'positive'"),
    ({"text": "good film", "label": 7}, "eval.jsonl:2: label id 7 is not one of the model's labels",
     "the labels are: 'negative', 'neutral', 'positive'"),
    ({"text": "good film"}, 'eval.jsonl:2 needs a "text" string and a "label"', '{"text": "...", "label":'),
])
def test_jsonl_eval_errors_name_the_line_and_the_labels(hf_source, tmp_path: Path, line, problem, fix) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps({"text": "a bad film", "label": "negative"}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(CalibrationError) as info:
        load_eval(path, hf_source)
    assert info.value.problem.endswith(problem) and fix in info.value.fix


def test_plain_text_eval_and_text_eval_for_a_model_without_tokenizer_are_refused(
        hf_source, tmp_path: Path, cnn: nn.Module) -> None:
    txt = tmp_path / "eval.txt"
    txt.write_text("the movie was good\n")
    with pytest.raises(CalibrationError, match="plain text, which holds no labels"):
        load_eval(txt, hf_source)
    jsonl = tmp_path / "eval.jsonl"
    jsonl.write_text(json.dumps({"text": "the movie was good", "label": 1}) + "\n")
    with pytest.raises(CalibrationError, match="no tokenizer"):
        load_eval(jsonl, resolve_source(cnn, (torch.randn(1, 3, 16, 16),)))


def test_jsonl_eval_gives_the_accuracy_of_the_original(hf_dir: Path, hf_source, tmp_path: Path) -> None:
    """The labels line up with the texts: the accuracy edgekit measures is transformers' own."""
    from transformers import BertForSequenceClassification

    from edgekit.verify import Reference

    path = tmp_path / "eval.jsonl"
    model = BertForSequenceClassification.from_pretrained(hf_dir).eval()
    enc = hf_source.tokenize(CALIB_TEXTS)
    with torch.inference_mode():
        preds = model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.argmax(1).numpy()
    ids = [(int(p) + 1) % 3 if i in (2, 5, 8) else int(p) for i, p in enumerate(preds)]  # three misses
    lines = [{"text": t, "label": LABELS[k] if i % 2 else k} for i, (t, k) in enumerate(zip(CALIB_TEXTS, ids))]
    path.write_text("\n".join(json.dumps(x) for x in lines))
    want = float((preds == np.asarray(ids)).mean())
    assert want == 9 / 12
    assert Reference.build(hf_source, [], load_eval(path, hf_source)).eval_accuracy == pytest.approx(want)
