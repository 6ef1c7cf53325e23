"""Bad values at the API and CLI boundary (issue 12, items 12-14): each is one edgekit error that
names the problem and the fix, checked before any slow work starts; never a raw traceback, a hang
or a silent wrong result. Beside ``test_bad_input.py`` (artifacts, manifests and inputs)."""

from __future__ import annotations

import os
import time
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
    InputError,
    MissingDependencyError,
    RecipeError,
)
from edgekit.io import read_npz


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("values")
    (a,) = edgekit.convert(Tiny().eval(), (torch.randn(2, 4),), targets=["onnx"], precisions=["fp32"],
                           name="tiny", input_names=["x"], output_names=["y"],
                           dynamic_axes={"x": {0: "batch"}}, out=out)
    return a.path


def cli_run(*args: str):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


# --------------------------------------------------------------------------------------------
# run --input / --output
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"PK\x03\x04 a zip header and then nothing", b"x,y\n1,2\n",
                                     b"\x93NUMPY not really"], ids=["bad-zip", "csv", "bad-npy"])
def test_run_input_that_is_not_an_npz(art: Path, tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "inputs.npz"
    bad.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_npz(bad)
    assert info.value.problem.startswith(f"cannot read {bad} as an .npz file")
    assert "numpy.savez" in info.value.fix
    result = cli_run("run", art, "--input", bad)
    assert result.exit_code == 1 and result.stderr.startswith(f"error: cannot read {bad} as an .npz")


def test_run_input_that_is_a_bare_npy_array(art: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 4), np.float32))
    result = cli_run("run", art, "--input", tmp_path / "x.npy")
    assert result.exit_code == 1
    assert "holds one bare array, not arrays keyed by input name" in result.stderr
    assert "numpy.savez(path, x=array)" in result.stderr


def test_run_output_into_a_missing_folder_is_created(art: Path, tmp_path: Path) -> None:
    target = tmp_path / "new" / "deeper" / "out.npz"
    result = cli_run("run", art, "--output", target)
    assert result.exit_code == 0, result.stderr
    with np.load(target) as z:
        assert z["y"].shape == (1, 3)


def test_run_output_under_a_file_is_an_error(art: Path, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    result = cli_run("run", art, "--output", tmp_path / "afile" / "out.npz")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot write")
    assert "afile" in result.stderr and "fix:" in result.stderr


# --------------------------------------------------------------------------------------------
# bench values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args,problem", [
    (["--runs", "0"], "--runs must be at least 1, got 0"),
    (["--runs", "-3"], "--runs must be at least 1, got -3"),
    (["--batch", "-4"], "--batch must be at least 1, got -4"),
    (["--batch", "0"], "--batch must be at least 1, got 0"),
    (["--min-time", "-1"], "--min-time must be at least 0, got -1.0"),
    (["--warmup", "-1"], "--warmup must be at least 0, got -1"),
    (["--threads", "0"], "--threads must be at least 1, got 0"),
], ids=["runs0", "runs-neg", "batch-neg", "batch0", "min-time", "warmup", "threads0"])
@pytest.mark.parametrize("mode", ["--isolated", "--in-process"])
def test_bench_bad_timing_values_exit_2(art: Path, args: list[str], problem: str, mode: str) -> None:
    result = cli_run("bench", art, mode, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {problem}"), result.stderr
    assert "fix:" in result.stderr


@pytest.mark.parametrize("kwargs,problem", [
    ({"runs": 0}, "runs must be at least 1, got 0"),
    ({"batch": 0}, "batch must be at least 1, got 0"),
    ({"min_time": -1.0}, "min_time must be at least 0, got -1.0"),
    ({"runs": 2.5}, "runs must be a whole number, got 2.5 (float)"),
    ({"threads": "2"}, "threads must be a whole number, got '2' (str)"),
])
def test_benchmark_api_refuses_bad_values(art: Path, kwargs: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        edgekit.benchmark(art, warmup=0, **{"runs": 1, **kwargs})
    assert info.value.problem == problem


@pytest.mark.parametrize("threads,problem", [
    ("2", "threads must be a whole number, got '2' (str)"),
    (2.5, "threads must be a whole number, got 2.5 (float)"),
    (True, "threads must be a whole number, got True (bool)"),
    (0, "threads must be at least 1, got 0"),
])
def test_load_refuses_threads_that_are_not_a_count(art: Path, threads, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        edgekit.load(art, threads=threads)
    assert info.value.problem == problem
    assert info.value.fix.startswith("pass threads=")


def test_too_many_threads_are_capped_with_a_warning(art: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    t0 = time.monotonic()
    with pytest.warns(edgekit.EdgekitWarning, match=rf"threads=100000 is more than the {cores} CPU"):
        with edgekit.load(art, threads=100_000) as m:
            assert m.threads == cores
            y = m.run({"x": np.ones((2, 4), np.float32)})["y"]
    assert y.shape == (2, 3)
    assert time.monotonic() - t0 < 60  # it used to hang creating 100,000 threads
    result = cli_run("run", art, "--threads", "100000")
    assert result.exit_code == 0, result.stderr
    assert f"warning: threads=100000 is more than the {cores} CPU" in result.stderr


@pytest.mark.parametrize("path,kind", [(12345, "int"), (None, "NoneType"), (["a.onnx"], "list")])
def test_load_of_something_that_is_not_a_path(path, kind: str) -> None:
    with pytest.raises(ArtifactError) as info:
        edgekit.load(path)
    assert info.value.problem == f"edgekit.load takes a path to an artifact, got {path!r} ({kind})"
    assert "out/model-fp32.onnx" in info.value.fix


def test_matrix_in_a_runtime_only_install_names_the_convert_extra(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    import edgekit.deps
    from edgekit.matrix import matrix

    real = edgekit.deps.available
    monkeypatch.setattr(edgekit.deps, "available", lambda m: m != "torch" and real(m))
    with pytest.raises(MissingDependencyError) as info:
        matrix("builtin:digits-cnn", out=tmp_path / "m")
    assert info.value.fix == "pip install 'edgekit[convert]'"
    for argv in (["matrix", "builtin:digits-cnn"], ["bench", "--matrix", "builtin:digits-cnn"]):
        result = cli_run(*argv, "--out", tmp_path / "m")
        assert result.exit_code == 1
        assert "'torch' is needed for the conversion matrix" in result.stderr
        assert "fix: pip install 'edgekit[convert]'" in result.stderr
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------------------------
# Recipes (item 13)
# --------------------------------------------------------------------------------------------

BOMB = """schema: edgekit.recipe/1
targets: [onnx]
quantize:
  options:
    onnx:
      a: &a ["x", "x", "x", "x", "x", "x", "x", "x", "x"]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
      f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
      h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
"""


def test_recipe_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    from edgekit.optimize.recipe import load_recipe

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    t0 = time.monotonic()
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert time.monotonic() - t0 < 10
    assert info.value.problem.startswith("bomb.yaml: recipe: bomb.yaml expands to more than 20,000 values")
    assert "aliases" in info.value.fix
    result = cli_run("convert", "builtin:digits-cnn", "--recipe", path, "--out", tmp_path / "o")
    assert result.exit_code == 2 and "expands to more than 20,000 values" in result.stderr
    assert not (tmp_path / "o").exists()


def test_recipe_with_a_few_aliases_still_loads() -> None:
    from edgekit.optimize.recipe import load_recipe

    r = load_recipe("schema: edgekit.recipe/1\ntargets: [onnx]\nquantize:\n  options:\n"
                    "    onnx: &o {opset: 18}\n    openvino: {}\n")
    assert r.quantize.options["onnx"] == {"opset": 18}


# --------------------------------------------------------------------------------------------
# --calib / --eval checked before the source is loaded (item 14)
# --------------------------------------------------------------------------------------------


def _slow_source_loader(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every source resolution: a bad path must be refused before the first."""
    import edgekit.sources

    calls: list[str] = []
    real = edgekit.sources.resolve_source

    def spy(model=None, *a, **k):
        calls.append(str(model))
        return real(model, *a, **k)

    monkeypatch.setattr(edgekit.sources, "resolve_source", spy)
    return calls


@pytest.mark.parametrize("flag,kwarg", [("--calib", "calib"), ("--eval", "eval_data")])
@pytest.mark.parametrize("name,problem", [
    ("missing.npz", "no such data file: {p}"),
    ("missing.jsonl", "no such data file: {p}"),
    ("folder.npz", "{p} is a directory, not a data file"),
    ("bad.npz", "cannot read {p} as an .npz file"),
    ("data.csv", "{p}: edgekit reads .npz, .txt, .jsonl or .json data, not '.csv'"),
], ids=["missing-npz", "missing-text", "directory", "not-npz", "suffix"])
def test_data_paths_are_checked_before_the_source_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            flag: str, kwarg: str, name: str,
                                                            problem: str) -> None:
    (tmp_path / "folder.npz").mkdir()
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    (tmp_path / "data.csv").write_text("a,b\n")
    path = tmp_path / name
    calls = _slow_source_loader(monkeypatch)
    with pytest.raises((ArtifactError, CalibrationError)) as info:
        edgekit.convert("builtin:digits-cnn", targets=["onnx"], precisions=["fp32"], out=tmp_path / "o",
                        **{kwarg: path})
    assert info.value.problem.startswith(problem.format(p=path)), info.value.problem
    assert flag in info.value.fix or "numpy.savez" in info.value.fix
    assert calls == [] and not (tmp_path / "o").exists()
    result = cli_run("convert", "builtin:digits-cnn", "--to", "onnx", "--precision", "fp32", flag, path,
                     "--out", tmp_path / "o")
    assert result.exit_code == 1 and result.stderr.lstrip().startswith("error: " + problem.format(p=path))
    assert calls == []


def test_calib_keys_are_checked_before_a_recipe_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in the calibration keys must not cost a whole prune/distill run first."""
    import edgekit.optimize.pipeline as pipeline

    np.savez(tmp_path / "calib.npz", xx=np.zeros((4, 4), np.float32))
    trained: list[str] = []
    monkeypatch.setattr(pipeline, "_prepare", lambda *a, **k: trained.append("prepare"))
    recipe = {"schema": "edgekit.recipe/1", "targets": ["onnx"],
              "prune": {"method": "unstructured", "sparsity": 0.5}}
    with pytest.raises(CalibrationError) as info:
        pipeline.run_recipe(recipe, Tiny().eval(), (torch.randn(2, 4),), input_names=["x"],
                            precisions=["int8"], calib=tmp_path / "calib.npz", out=tmp_path / "o")
    assert info.value.problem.startswith("calib.npz: missing input(s) ['x'] and unknown key(s) ['xx']")
    assert trained == [] and not (tmp_path / "o").exists()


def test_sensitivity_checks_its_data_paths_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.optimize.sensitivity import sensitivity

    calls = _slow_source_loader(monkeypatch)
    with pytest.raises(ArtifactError, match="no such data file"):
        sensitivity("builtin:digits-cnn", data=tmp_path / "nope.npz")
    with pytest.raises(ArtifactError, match="is a directory"):
        sensitivity("builtin:digits-cnn", eval=tmp_path)
    assert calls == []


@pytest.fixture(scope="module")
def other_formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("formats")
    arts = edgekit.convert(Tiny().eval(), (torch.randn(2, 4),), targets=["openvino", "tflite"], precisions=["fp32"],
                           name="tiny", input_names=["x"], output_names=["y"], out=out, keep_going=True)
    return {a.format.value: a.path for a in arts if a.status == "ok"}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["openvino", "tflite"])
def test_values_are_checked_the_same_for_every_format(other_formats: dict[str, Path], fmt: str,
                                                      tmp_path: Path) -> None:
    if fmt not in other_formats:
        pytest.skip(f"{fmt} is not installed here")
    art = other_formats[fmt]
    cores = len(os.sched_getaffinity(0))
    with pytest.warns(edgekit.EdgekitWarning, match="is more than the"):
        with edgekit.load(art, threads=100_000) as m:
            assert m.threads == cores and m.run({"x": np.ones((2, 4), np.float32)})["y"].shape == (2, 3)
    with pytest.raises(ConfigError, match=r"threads must be a whole number, got 2\.5"):
        edgekit.load(art, threads=2.5)
    (tmp_path / "in.npz").write_bytes(b"PK\x03\x04 broken")
    result = cli_run("run", art, "--input", tmp_path / "in.npz")
    assert result.exit_code == 1 and "cannot read" in result.stderr
    result = cli_run("bench", art, "--in-process", "--runs", "0")
    assert result.exit_code == 2 and "--runs must be at least 1, got 0" in result.stderr
