"""One typed-config coercer for ``-O`` options, runtime options and recipes, with "did you mean",
checked before any model is built or trained."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from edgekit.errors import ConfigError, RecipeError
from edgekit.options import coerce, did_you_mean, parse_options

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("hint", "value", "want"), [
    (bool, "yes", True), (bool, " Off ", False), (bool, True, True),
    (int, "64", 64), (int, 3.0, 3), (int, "1e3", 1000),
    (float, "1e-4", 1e-4), (float, 2, 2.0),
    (str, "entropy", "entropy"), (str | None, Path("~/.cache/ov"), "~/.cache/ov"),
    (int | None, "none", None), (int | None, None, None), (int | None, "4", 4),
    (tuple[str, ...], "MatMul, Gemm,", ("MatMul", "Gemm")), (tuple[float, ...], [0.5, "0.25"], (0.5, 0.25)),
    (dict[str, int], {"a": "1"}, {"a": 1}),
    (Mapping[str, Sequence[int]] | str | None, {"x": [1, "3"]}, {"x": (1, 3)}),
    (Mapping[str, Sequence[int]] | str | None, "x=1x3", "x=1x3"),
    (Path, "out/m.onnx", Path("out/m.onnx")),
    (Any, [1], [1]),
])
def test_coerce_values(hint: Any, value: Any, want: Any) -> None:
    got = coerce(hint, value, "k")
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize(("hint", "value", "problem"), [
    (int, "many", "option k: expected a whole number, got 'many'"),
    (int, 1.5, "option k: expected a whole number, got 1.5"),
    (int, True, "option k: expected a whole number, got True"),
    (bool, "maybe", "option k: expected true or false, got 'maybe'"),
    (float, "fast", "option k: expected a number, got 'fast'"),
    (str, 3, "option k: expected a string, got 3"),
    (Mapping[str, Sequence[int]] | str | None, 5,
     "option k: expected a mapping of keys to values or a string, got 5"),
    (tuple[int, ...], "1,x", "option k[1]: expected a whole number, got 'x'"),
])
def test_coerce_errors_name_the_key_and_the_type(hint: Any, value: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        coerce(hint, value, "k")
    assert str(info.value).split("\n")[0] == problem


def test_did_you_mean() -> None:
    assert did_you_mean("int4_blok_size", ["opset", "int4_block_size"]) == "did you mean 'int4_block_size'? "
    assert did_you_mean("zzz", ["opset"]) == ""


def test_converter_and_runtime_options_share_it() -> None:
    from edgekit.converters.onnx import OnnxOptions
    from edgekit.runtimes.llamacpp import LlamaCppOptions

    with pytest.raises(ConfigError) as info:
        parse_options(OnnxOptions, {"int4_blok_size": "64"})
    assert info.value.problem == "unknown OnnxOptions option(s): int4_blok_size"
    assert info.value.fix.startswith("did you mean 'int4_block_size'? known options: ")
    assert parse_options(OnnxOptions, {"int4_block_size": "64"}).int4_block_size == 64
    opts = parse_options(LlamaCppOptions, {"n_ctx": "512", "flash_attn": "on", "n_gpu_layers": "none"})
    assert (opts.n_ctx, opts.flash_attn, opts.n_gpu_layers) == (512, True, None)
    with pytest.raises(ConfigError, match="did you mean 'n_ctx'"):
        parse_options(LlamaCppOptions, {"n_ctxx": 512})


def test_recipe_converter_options_are_checked_when_the_recipe_loads() -> None:
    from edgekit.optimize.recipe import dump_recipe, load_recipe

    head = "schema: edgekit.recipe/1\n"
    with pytest.raises(RecipeError) as info:
        load_recipe(head + "quantize: {options: {onnx: {int4_blok_size: 64}}}")
    assert info.value.key == "quantize.options.onnx" and "did you mean 'int4_block_size'" in info.value.fix
    with pytest.raises(RecipeError) as info:
        load_recipe(head + "quantize: {options: {ir: {int4_ratio: most}}}")
    assert info.value.key == "quantize.options.ir" and "expected a number, got 'most'" in str(info.value)
    r = load_recipe(head + "quantize: {options: {ir: {int4_ratio: 0.5}}}")
    assert r.quantize is not None and r.quantize.options == {"openvino": {"int4_ratio": 0.5}}  # the converter's key
    assert load_recipe(dump_recipe(r)) == r
    with pytest.raises(RecipeError, match="expected a whole number, got 1.5"):  # recipe fields: the same coercer
        load_recipe(head + "distill: {epochs: 1.5}")


# in a fresh interpreter: neither torch nor onnx may be imported before the option is rejected
_CHECK = """
import sys, time
from click.testing import CliRunner
from edgekit.cli import main
args = sys.argv[1:]
t = time.perf_counter()
r = CliRunner().invoke(main, args)
print(r.exit_code, "torch" in sys.modules, "onnx" in sys.modules, round(time.perf_counter() - t, 3))
print(r.output)
"""


@pytest.mark.parametrize("extra", [[], ["--recipe", str(REPO / "samples" / "recipes" / "digits-cnn.yaml")]],
                         ids=["plain", "recipe"])
def test_a_misspelled_option_fails_before_any_model_is_built(tmp_path: Path, extra: list[str]) -> None:
    args = ["convert", *extra, "-O", "int4_blok_size=64", "--out", str(tmp_path / "o")]
    out = subprocess.run([sys.executable, "-c", _CHECK, *args], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path).stdout
    status, torch_loaded, onnx_loaded, _seconds = out.splitlines()[0].split()
    assert (status, torch_loaded, onnx_loaded) == ("2", "False", "False"), out
    assert "unknown OnnxOptions option(s): int4_blok_size" in out and "did you mean 'int4_block_size'" in out
    assert not (tmp_path / "o").exists()
