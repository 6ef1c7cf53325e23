"""Bad input of every kind: each fails with one edgekit error that names the problem and the fix.

The command line turns those errors into ``error: ...`` on stderr and an exit code, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import edgekit
from edgekit.cli import main as cli
from edgekit.errors import (
    ArtifactError,
    CalibrationError,
    ConfigError,
    ExportError,
    InputError,
    MissingDependencyError,
)
from edgekit.manifest import read_manifest
from edgekit.types import Precision

EDGEKIT = Path(sys.executable).with_name("edgekit")  # the console script of this environment


class TwoInputs(nn.Module):
    """Token ids of any length plus a fixed-width float feature vector."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.proj = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.embed(input_ids).mean(1) + self.proj(features)))


AXES = {"input_ids": {0: "batch", 1: "sequence"}, "features": {0: "batch"}}
SIGNATURE = "input_ids: int64[batch, sequence]; features: float32[batch, 4]"


def feed(batch: int = 2, seq: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, 50, size=(batch, seq)).astype(np.int64),
            "features": rng.standard_normal((batch, 4)).astype(np.float32)}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return TwoInputs().eval()


def convert_kwargs(**extra) -> dict:
    return {"targets": ["onnx"], "name": "tiny", "output_names": ["logits"], "dynamic_axes": AXES,
            **extra}


@pytest.fixture(scope="module")
def fp32(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fp32")
    (art,) = edgekit.convert(model, feed(), precisions=["fp32"], out=out, **convert_kwargs())
    assert art.status == "ok"
    return art.path


@pytest.fixture(scope="module")
def broken(fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bare model files (no manifest) that no runtime can load."""
    tmp = tmp_path_factory.mktemp("broken")
    data = fp32.read_bytes()
    files = {"truncated": tmp / "truncated.onnx", "garbage": tmp / "garbage.onnx",
             "empty": tmp / "empty.onnx"}
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["garbage"].write_bytes(b"this is not an ONNX model, just text\n" * 20)
    files["empty"].write_bytes(b"")
    return files


@pytest.fixture(scope="module")
def loaded(fp32: Path):
    with edgekit.load(fp32) as m:
        yield m


# --------------------------------------------------------------------------------------------
# Paths that do not exist, files that are not models
# --------------------------------------------------------------------------------------------


def test_missing_source_paths_raise_artifact_error(tmp_path: Path, model: nn.Module) -> None:
    with pytest.raises(ArtifactError) as info:
        edgekit.convert(tmp_path / "no-such-model", out=tmp_path / "out")
    assert info.value.problem == f"no such model source: {tmp_path / 'no-such-model'}"
    assert "Hugging Face model directory" in info.value.fix

    with pytest.raises(ArtifactError, match=r"no such file: .*missing\.pt2"):
        edgekit.convert(tmp_path / "missing.pt2", out=tmp_path / "out")

    with pytest.raises(ArtifactError, match=r"no such data file: .*calib\.npz") as info:
        edgekit.convert(model, feed(), precisions=["int8"], calib=tmp_path / "calib.npz",
                        out=tmp_path / "out", **convert_kwargs())
    assert "--calib" in info.value.fix
    assert not (tmp_path / "out").exists()  # nothing was started


def test_missing_artifact_raises_artifact_error(tmp_path: Path) -> None:
    missing = tmp_path / "model-fp32.onnx"
    with pytest.raises(ArtifactError) as info:
        edgekit.load(missing)
    assert info.value.problem == f"no such file or directory: {missing}"
    assert info.value.fix == "check the path to the artifact"


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_onnx_raises_artifact_error(broken: dict[str, Path], kind: str) -> None:
    with pytest.raises(ArtifactError) as info:
        edgekit.load(broken[kind])
    assert info.value.problem.startswith(f"onnxruntime cannot load {kind}.onnx: ")
    assert "truncated or corrupt" in info.value.fix and "edgekit convert" in info.value.fix


def test_empty_file_and_unknown_suffix_raise_artifact_error(broken: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"empty\.onnx is empty"):
        edgekit.load(broken["empty"])
    weird = tmp_path / "model.bin"
    weird.write_bytes(b"\0" * 16)
    with pytest.raises(ArtifactError, match=r"model\.bin: unknown model file type '\.bin'") as info:
        edgekit.load(weird)
    assert ".onnx" in info.value.fix


def test_unreadable_manifest_beside_a_good_model_is_reported(fp32: Path, tmp_path: Path) -> None:
    model = tmp_path / fp32.name
    shutil.copy(fp32, model)
    (tmp_path / (fp32.name + ".edgekit.json")).write_text('{"schema": "edgekit.manifest/1", ')
    with pytest.raises(ArtifactError, match="is unreadable") as info:
        edgekit.load(model)
    assert "delete the manifest" in info.value.fix


@pytest.mark.parametrize("command,kind", [("inspect", "truncated"), ("run", "garbage")])
def test_cli_on_corrupt_onnx_prints_error_not_traceback(broken: dict[str, Path], command: str,
                                                        kind: str) -> None:
    proc = subprocess.run([str(EDGEKIT), command, str(broken[kind])], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"error: onnxruntime cannot load {kind}.onnx"), proc.stderr
    assert "fix: the file may be truncated or corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_cli_on_missing_artifact_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("error: no such file or directory:")
    assert "nope.onnx" in result.stderr


# --------------------------------------------------------------------------------------------
# Unknown option values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,problem,valid", [
    ({"targets": ["tensorrt"]}, "unknown format 'tensorrt'", "use one of: onnx, openvino, tflite, gguf"),
    ({"targets": "onnx,coreml"}, "unknown format 'coreml'", "use one of: onnx, openvino, tflite, gguf"),
    ({"precisions": ["fp32", "int3"]}, "unknown precision 'int3'",
     "use one of: " + ", ".join(p.value for p in Precision)),
])
def test_unknown_target_or_precision_lists_valid_values(model: nn.Module, tmp_path: Path, kwargs: dict,
                                                        problem: str, valid: str) -> None:
    with pytest.raises(ConfigError) as info:
        edgekit.convert(model, feed(), out=tmp_path / "out", **kwargs)
    assert info.value.problem == problem and info.value.fix == valid
    assert info.value.exit_code == 2
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("args,problem,valid", [
    (["--to", "tensorrt"], "unknown format 'tensorrt'", "onnx, openvino, tflite, gguf"),
    (["--precision", "fp32,int3"], "unknown precision 'int3'", ", ".join(p.value for p in Precision)),
])
def test_cli_unknown_target_or_precision_exits_2(tmp_path: Path, args: list[str], problem: str,
                                                 valid: str) -> None:
    result = CliRunner().invoke(cli, ["convert", "builtin:digits-cnn", *args, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {problem}")
    assert f"fix: use one of: {valid}" in result.stderr
    assert not (tmp_path / "o").exists()


def test_unknown_converter_option_lists_known_ones(model: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        edgekit.convert(model, feed(), precisions=["fp32"], options={"onnx": {"opsett": 18}},
                        out=tmp_path / "out", **convert_kwargs())
    assert info.value.problem == "unknown OnnxOptions option(s): opsett"
    assert "opset" in info.value.fix.split("known options: ")[1].split(", ")


# --------------------------------------------------------------------------------------------
# Export failures
# --------------------------------------------------------------------------------------------


class Spectrum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigvals(x).real  # complex eigen-decomposition: no ONNX translation


class WithEig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.spectrum = Spectrum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spectrum(self.proj(x).reshape(-1, 2, 2))


def test_unsupported_operator_names_the_op_and_the_submodule(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ExportError) as info:
        edgekit.convert(WithEig(), (torch.randn(2, 4),), targets=["onnx"], precisions=["fp32"], out=out)
    err = info.value
    assert "aten.linalg_eig" in err.problem
    assert "module 'spectrum' (Spectrum)" in err.problem
    assert "replace that operator" in err.fix
    assert list(out.iterdir()) == []  # no staging directory, no partial file


# --------------------------------------------------------------------------------------------
# Calibration data
# --------------------------------------------------------------------------------------------

GOOD_CALIB = {"input_ids": np.zeros((8, 6), np.int64), "features": np.zeros((8, 4), np.float32)}


@pytest.mark.parametrize("arrays,problem,fix", [
    ({"input_ids": GOOD_CALIB["input_ids"]}, "calib.npz: missing input(s) ['features']",
     "key the arrays by the model's input names: ['input_ids', 'features']"),
    ({**GOOD_CALIB, "pixels": np.zeros((8, 4), np.float32)}, "calib.npz: unknown key(s) ['pixels']",
     "key the arrays by the model's input names: ['input_ids', 'features']"),
    ({**GOOD_CALIB, "features": np.zeros((8,), np.float32)},
     "calib.npz: input 'features' has shape [8], expected ['N', 4] (samples stacked on axis 0)",
     "reshape 'features' to ['N', 4]"),
    ({**GOOD_CALIB, "features": np.zeros((8, 5), np.float32)},
     "calib.npz: input 'features' has shape [8, 5], expected ['N', 4] (samples stacked on axis 0)",
     "reshape 'features' to ['N', 4]"),
    ({**GOOD_CALIB, "features": np.zeros((8, 4), np.int64)},
     "calib.npz: input 'features' is int64, the model takes float32", "save 'features' as float32"),
    ({**GOOD_CALIB, "features": np.zeros((7, 4), np.float32)},
     "calib.npz: inputs hold different sample counts [7, 8]", None),
], ids=["missing", "unknown", "rank", "fixed-dim", "dtype", "counts"])
def test_bad_calibration_npz_names_the_input(model: nn.Module, tmp_path: Path, arrays: dict,
                                             problem: str, fix: str | None) -> None:
    np.savez(tmp_path / "calib.npz", **arrays)
    with pytest.raises(CalibrationError) as info:
        edgekit.convert(model, feed(), precisions=["fp32", "int8"], calib=tmp_path / "calib.npz",
                        out=tmp_path / "out", **convert_kwargs())
    assert info.value.problem == problem
    if fix is not None:
        assert info.value.fix == fix
    assert not (tmp_path / "out").exists()  # refused before export


def test_text_calibration_needs_a_tokenizer_and_int8_needs_data(model: nn.Module, tmp_path: Path) -> None:
    text = tmp_path / "calib.txt"
    text.write_text("a sentence\n")
    with pytest.raises(CalibrationError, match="calib.txt is text, but this model has no tokenizer"):
        edgekit.convert(model, feed(), precisions=["int8"], calib=text, out=tmp_path / "out",
                        **convert_kwargs())
    with pytest.raises(CalibrationError) as info:
        edgekit.convert(model, feed(), precisions=["fp32", "int8"], out=tmp_path / "out",
                        **convert_kwargs())
    assert info.value.problem == "int8 on onnx needs calibration data"
    assert "--calib" in info.value.fix and "int8-dynamic" in info.value.fix


# --------------------------------------------------------------------------------------------
# Inputs at run time
# --------------------------------------------------------------------------------------------

GOOD = feed(batch=3, seq=7, seed=1)


@pytest.mark.parametrize("inputs,problem,fix", [
    ({"input_ids": GOOD["input_ids"]}, "missing input(s) ['features']", f"the model takes: {SIGNATURE}"),
    ({**GOOD, "pixels": GOOD["features"]}, "unknown input(s) ['pixels']", f"the model takes: {SIGNATURE}"),
    ({"ids": GOOD["input_ids"], "features": GOOD["features"]},
     "missing input(s) ['input_ids'] and unknown input(s) ['ids']", f"the model takes: {SIGNATURE}"),
    ({**GOOD, "input_ids": GOOD["input_ids"].astype(np.float32)},
     "input 'input_ids' is float32, the model expects input_ids: int64[batch, sequence]; "
     "casting float32 to int64 would change values", "pass input_ids.astype(numpy.int64)"),
    ({**GOOD, "features": GOOD["features"][..., None]},
     "input 'features' has rank 3 (shape [3, 4, 1]), the model expects features: float32[batch, 4]",
     "reshape 'features' to rank 2"),
    ({**GOOD, "features": np.zeros((3, 5), np.float32)},
     "input 'features' has size 5 on axis 1 (shape [3, 5]), the model expects features: float32[batch, 4]",
     "give 'features' size 4 on axis 1"),
    ({**GOOD, "features": [["a", "b", "c", "d"]] * 3},
     "input 'features' holds <U1 values, not numbers", "pass a numeric numpy array for features: "
     "float32[batch, 4]"),
], ids=["missing", "unknown", "misnamed", "float-ids", "rank", "fixed-dim", "strings"])
def test_wrong_inputs_raise_input_error_naming_the_spec(loaded, inputs: dict, problem: str,
                                                         fix: str) -> None:
    with pytest.raises(InputError) as info:
        loaded.run(inputs)
    assert info.value.problem == problem
    assert info.value.fix == fix


def test_inputs_that_cast_without_loss_are_accepted(loaded, model: nn.Module) -> None:
    with torch.inference_mode():
        want = model(torch.from_numpy(GOOD["input_ids"]), torch.from_numpy(GOOD["features"])).numpy()
    exact = loaded.run(GOOD)["logits"]
    np.testing.assert_allclose(exact, want, atol=1e-5)
    widened = loaded.run(input_ids=GOOD["input_ids"].astype(np.int32),
                         features=GOOD["features"].astype(np.float64))["logits"]
    np.testing.assert_array_equal(widened, exact)
    as_lists = loaded.run({"input_ids": GOOD["input_ids"].tolist(), "features": GOOD["features"].tolist()})
    np.testing.assert_array_equal(as_lists["logits"], exact)


def test_out_of_range_integers_are_refused(loaded) -> None:
    big = GOOD["input_ids"].astype(np.uint64)
    big[0, 0] = np.iinfo(np.uint64).max
    with pytest.raises(InputError, match="casting uint64 to int64 would change values"):
        loaded.run({**GOOD, "input_ids": big})


# --------------------------------------------------------------------------------------------
# Missing optional dependencies
# --------------------------------------------------------------------------------------------


def _without(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    import edgekit.deps

    real = edgekit.deps.available
    monkeypatch.setattr(edgekit.deps, "available", lambda module: module != missing and real(module))


def test_load_without_onnxruntime_says_how_to_install_it(fp32: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "onnxruntime")
    with pytest.raises(MissingDependencyError) as info:
        edgekit.load(fp32)
    assert "'onnxruntime'" in info.value.problem and "not installed" in info.value.problem
    assert "pip install 'edgekit[onnxruntime]'" in str(info.value)

    result = CliRunner().invoke(cli, ["devices", "--json"])
    assert result.exit_code == 0, result.output
    row = next(r for r in json.loads(result.stdout)["runtimes"] if r["runtime"] == "onnxruntime")
    assert row["installed"] is False and row["install"] == "pip install 'edgekit[onnxruntime]'"


def test_convert_without_onnxscript_says_how_to_install_it(model: nn.Module, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _without(monkeypatch, "onnxscript")
    with pytest.raises(MissingDependencyError) as info:
        edgekit.convert(model, feed(), precisions=["fp32"], out=tmp_path / "out", **convert_kwargs())
    assert info.value.problem == ("the optional package 'onnxscript' is needed for converting to onnx "
                                  "but is not installed")
    assert info.value.fix == "pip install 'edgekit[convert]'"
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# Interrupted conversions
# --------------------------------------------------------------------------------------------


def test_interrupted_conversion_leaves_only_complete_artifacts(model: nn.Module, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.converters.onnx import BUILDERS

    def interrupted(conv, base, out: Path, ctx):
        out.write_bytes(base.fp32.read_bytes()[:100])  # half-written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setitem(BUILDERS, Precision.INT8_DYNAMIC, interrupted)
    out = tmp_path / "out"
    (out / "earlier").mkdir(parents=True)  # a user's file in --out is left alone
    with pytest.raises(KeyboardInterrupt):
        edgekit.convert(model, feed(), precisions=["fp32", "int8-dynamic", "int4"], out=out,
                        **convert_kwargs())
    assert sorted(p.name for p in out.iterdir()) == ["earlier", "tiny-fp32.onnx", "tiny-fp32.onnx.edgekit.json"]
    # the variant that finished is whole: its manifest's hash matches and it runs
    manifest = read_manifest(out / "tiny-fp32.onnx")
    (entry,) = manifest.files
    assert entry["sha256"] == hashlib.sha256((out / "tiny-fp32.onnx").read_bytes()).hexdigest()
    with edgekit.load(out / "tiny-fp32.onnx") as m:
        assert m.run(GOOD)["logits"].shape == (3, 3)


def test_interrupt_during_export_leaves_out_empty(model: nn.Module, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.converters.onnx import OnnxConverter

    def export(self, ctx):
        (ctx.workdir / "base.onnx").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxConverter, "export", export)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        edgekit.convert(model, feed(), precisions=["fp32"], out=out, **convert_kwargs())
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Benchmarking a bad artifact is a failed row, not an exception
# --------------------------------------------------------------------------------------------


def test_isolated_benchmark_of_corrupt_artifact_is_a_failed_row(broken: dict[str, Path]) -> None:
    row = edgekit.benchmark(broken["truncated"], isolated=True, warmup=1, runs=3, timeout=120)
    assert row.status == "failed" and row.mode == "isolated"
    assert row.reason.startswith("onnxruntime cannot load truncated.onnx"), row.reason
    assert row.latency is None


def test_in_process_benchmark_of_missing_or_garbage_artifact_is_a_failed_row(
        broken: dict[str, Path], tmp_path: Path) -> None:
    row = edgekit.benchmark(tmp_path / "gone.onnx", warmup=1, runs=3)
    assert row.status == "failed" and row.reason == f"no such file or directory: {tmp_path / 'gone.onnx'}"
    row = edgekit.benchmark(broken["garbage"], warmup=1, runs=3)
    assert row.status == "failed" and row.reason.startswith("onnxruntime cannot load garbage.onnx")


# ============================================================================================
# Runtime and artifact half of issue 12 (manifests, images, text, GGUF): every row is a bad input
# a user can hand edgekit; each must end in one EdgekitError naming the problem and the fix.
# ============================================================================================
import struct  # noqa: E402
import zlib  # noqa: E402

from edgekit.errors import EdgekitError  # noqa: E402
from edgekit.limits import MAX_IMAGE_PIXELS  # noqa: E402


def _manifest_dict(fp32: Path) -> dict:
    return json.loads((fp32.parent / (fp32.name + ".edgekit.json")).read_text())


def _set(path: str, value):
    """A row's edit: set ``a.b.0.c`` in the manifest dict (``...`` deletes the key)."""
    def edit(d: dict, where: Path) -> None:
        *parents, last = path.split(".")
        node = d
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        v = value(where) if callable(value) else value
        if v is ...:
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node[int(last)] = v
        else:
            node[last] = v
    return edit


MANIFEST_CASES = [  # (id, edit, how it is loaded, words the problem must hold)
    ("not-json", '{"schema": "edgekit.manifest/1", ', "model", "is unreadable"),
    ("not-json-by-manifest", '{"schema": ', "manifest", "is unreadable"),
    ("not-an-object", "[1, 2, 3]", "model", "is not a JSON object"),
    ("no-artifact", _set("artifact", ...), "manifest", "has no 'artifact'"),
    ("no-signature", _set("signature", ...), "model", "has no 'signature'"),
    ("no-format", _set("format", ...), "model", "has no 'format'"),
    ("unknown-format", _set("format", "tensorrt"), "model", "unknown format 'tensorrt'"),
    ("signature-a-string", _set("signature", "x: float32[4]"), "model", "'signature' should be an object, not str"),
    ("input-without-dtype", _set("signature.inputs.0.dtype", ...), "model", "'signature.inputs.0' has no 'dtype'"),
    ("shape-a-number", _set("signature.inputs.0.shape", 4), "model", "'signature.inputs.0.shape' should be a list, not int"),
    ("files-an-object", _set("files", {"path": "x"}), "model", "'files' should be a list of objects, not dict"),
    ("size-a-word", _set("size_bytes", "big"), "model", "'size_bytes' should be a number of bytes, not str"),
    ("verification-a-string", _set("verification", "passed"), "model", "'verification' should be an object or null, not str"),
    ("artifact-in-parent", _set("artifact", "../outside.onnx"), "manifest", "outside the artifact's folder"),
    ("artifact-absolute", _set("artifact", lambda w: str(w.parent / "outside.onnx")), "folder",
     "outside the artifact's folder"),
    ("file-in-parent", _set("files.0.path", "../outside.onnx"), "model", "outside the artifact's folder"),
    ("assets-absolute", _set("preprocess.assets_dir", "/etc"), "model", "outside the artifact's folder"),
    ("image-30000x30000", _set("preprocess.image", {"size": [30000, 30000], "channels": 3}), "model",
     "30000x30000"),
    ("example-shape-huge", _set("signature.inputs.0.example_shape", [1, 4_000_000_000]), "model",
     "example_shape"),
]


@pytest.mark.parametrize("edit,how,words", [c[1:] for c in MANIFEST_CASES], ids=[c[0] for c in MANIFEST_CASES])
def test_corrupt_or_hostile_manifest_is_an_artifact_error(fp32: Path, tmp_path: Path, edit, how: str,
                                                          words: str) -> None:
    folder = tmp_path / "art"
    folder.mkdir()
    model = folder / fp32.name
    shutil.copy(fp32, model)
    outside = tmp_path / "outside.onnx"  # a readable model outside the folder: must not be used
    shutil.copy(fp32, outside)
    mpath = folder / (fp32.name + ".edgekit.json")
    if isinstance(edit, str):
        mpath.write_text(edit)
    else:
        data = _manifest_dict(fp32)
        edit(data, folder)
        mpath.write_text(json.dumps(data))
    target = {"model": model, "manifest": mpath, "folder": folder}[how]
    with pytest.raises(ArtifactError) as info:
        edgekit.load(target)
    assert words in info.value.problem, info.value.problem
    assert info.value.fix
    result = CliRunner().invoke(cli, ["inspect", str(target)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.stderr.startswith("error: the manifest") or result.stderr.startswith(f"error: {mpath}")


# -- images: decompression bombs and sizes past an explicit pixel limit ----------------------------
def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` grey pixels and holds a few bytes of data: what a
    decompression bomb looks like to a reader before it inflates anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def image_clf(cnn: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    (art,) = edgekit.convert(cnn, (torch.randn(2, 3, 16, 16),), targets=["onnx"], precisions=["fp32"],
                             out=tmp_path_factory.mktemp("img"), name="img", output_names=["logits"],
                             preprocess={"id2label": [f"c{i}" for i in range(10)],
                                         "image": {"size": [16, 16], "channels": 3}})
    return art.path


@pytest.mark.parametrize("width,height", [(30000, 30000), (9000, 9000)], ids=["bomb", "over-limit"])
def test_huge_images_are_refused_with_the_pixel_limit(image_clf: Path, tmp_path: Path, width: int,
                                                      height: int) -> None:
    assert 9000 * 9000 > MAX_IMAGE_PIXELS  # (the second row is under Pillow's own bomb threshold)
    png = _png_header(tmp_path / "big.png", width, height)
    with edgekit.load(image_clf) as m, pytest.raises(InputError) as info:
        m.classify(png)
    assert info.value.problem.startswith(f"{png} is ")  # (WxH is known only below Pillow's own limit)
    assert info.value.problem.endswith(f"{width * height:,} pixels, more than edgekit's limit of "
                                       f"{MAX_IMAGE_PIXELS:,}")
    assert "resize" in info.value.fix
    proc = subprocess.run([str(EDGEKIT), "run", str(image_clf), "--image", str(png)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "more than edgekit's limit" in proc.stderr and "Traceback" not in proc.stderr


# -- text: a lone surrogate is not text a tokenizer can take --------------------------------------


@pytest.fixture(scope="module")
def text_clf(clf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    (art,) = edgekit.convert(clf_dir, targets=["onnx"], precisions=["fp32"], out=tmp_path_factory.mktemp("txt"))
    return art.path


@pytest.mark.parametrize("texts,where", [("bad \ud800 text", "item 0"), (["fine", "x\udfff"], "item 1")],
                         ids=["one", "second-of-two"])
def test_lone_surrogate_is_an_input_error(text_clf: Path, texts, where: str) -> None:
    with edgekit.load(text_clf) as m:
        with pytest.raises(InputError) as info:
            m.classify(texts)
        assert info.value.problem.startswith(f"text {where} is not valid Unicode: a lone surrogate")
        assert m.classify("fine")[0]["label"]  # the model still works


def test_lone_surrogate_over_http_is_a_400(text_clf: Path) -> None:
    pytest.importorskip("starlette")
    pytest.importorskip("tritonclient.http")
    from tests.test_serve import ThreadServer

    server = ThreadServer([text_clf])
    try:
        # json.dumps escapes the surrogate as \\ud800: valid JSON that decodes to a lone surrogate
        status, _, body = server.post_json(f"/v2/models/{text_clf.stem}/infer", {"inputs": [
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a \ud800 b"]}]})
    finally:
        server.stop()
    assert status == 400, body
    assert "lone surrogate" in json.dumps(body)


# -- GGUF: prompts past the context, max_tokens that cannot be right ------------------------------
@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from tests.conftest import tiny_llama_gguf

    return tiny_llama_gguf(tmp_path_factory.mktemp("gguf"), max_positions=128)


GGUF_CASES = [  # (n_ctx=64 is padded to llama.cpp's 256)
    ("generate", {"prompt": "the river " * 300}, InputError, "tokens, more than the context of 256"),
    ("chat", {"messages": [{"role": "user", "content": "the river " * 300}]}, InputError,
     "tokens, more than the context of 256"),
    ("generate", {"prompt": "the river", "max_tokens": 0}, ConfigError, "max_tokens must be at least 1, got 0"),
    ("generate", {"prompt": "the river", "max_tokens": -5}, ConfigError, "max_tokens must be at least 1, got -5"),
    ("chat", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, ConfigError,
     "max_tokens must be at least 1, got 0"),
]


@pytest.mark.parametrize("method,kwargs,error,words", GGUF_CASES,
                         ids=["long-prompt", "long-chat", "zero-tokens", "negative-tokens", "chat-zero"])
def test_gguf_prompt_and_max_tokens_are_checked(tiny_gguf: Path, method: str, kwargs: dict, error: type,
                                                words: str) -> None:
    with edgekit.load(tiny_gguf, n_ctx=64) as m:
        assert m.n_ctx == 256
        with pytest.raises(error) as info:
            out = getattr(m, method)(**kwargs, temperature=0.0)
            list(out) if not isinstance(out, str) else None
        assert words in info.value.problem, info.value.problem
        assert isinstance(info.value, EdgekitError) and info.value.fix
        assert m.generate("the river", max_tokens=3, temperature=0.0) is not None  # still usable
        assert m.generate("the river " * 20, max_tokens=1000, temperature=0.0) is not None  # runs to the end
