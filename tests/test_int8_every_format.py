"""One call, every format (issue 15 item 6): ``convert`` with several targets and the union of
their precisions builds each format's supported subset and lists the rest as skipped; a precision
no target supports is still an error, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("openvino")
from torch import nn  # noqa: E402

import edgekit  # noqa: E402
from edgekit.errors import ConfigError  # noqa: E402


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def test_each_target_builds_what_it_supports_and_lists_the_rest(tmp_path: Path) -> None:
    arts = edgekit.convert(_mlp(), (torch.randn(2, 16),), targets=["onnx", "openvino"],
                           precisions=["fp32", "int8-weights"], out=tmp_path)
    got = {(a.format.value, a.precision.value): a for a in arts}
    assert {k: str(a.status) for k, a in got.items()} == {
        ("onnx", "fp32"): "ok", ("onnx", "int8-weights"): "skipped",
        ("openvino", "fp32"): "ok", ("openvino", "int8-weights"): "ok"}
    skipped = got[("onnx", "int8-weights")]
    assert skipped.reason == "onnx does not support int8-weights" and not skipped.path.exists()
    assert skipped.to_dict()["status"] == "skipped"


def test_a_precision_no_target_supports_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not support precision"):
        edgekit.convert(_mlp(), (torch.randn(2, 16),), targets=["onnx", "openvino"], precisions=["q4_k_m"],
                        out=tmp_path)
    assert not any(tmp_path.iterdir())


def mlp() -> nn.Module:
    """A factory for ``tests.test_int8_every_format:mlp``."""
    return _mlp()


def test_matrix_cli_takes_a_factory_source_with_example_and_weights(tmp_path: Path) -> None:
    import json

    import numpy as np
    from click.testing import CliRunner

    from edgekit.cli import main

    torch.save(_mlp().state_dict(), tmp_path / "w.pt")
    np.savez(tmp_path / "x.npz", input=np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32))
    args = ["matrix", "tests.test_int8_every_format:mlp", "--weights", str(tmp_path / "w.pt"), "--to", "onnx",
            "--precision", "fp32", "--out", str(tmp_path / "m"), "--no-plot", "--warmup", "1", "--runs", "3",
            "--json"]
    res = CliRunner().invoke(main, [*args, "--example", str(tmp_path / "x.npz")])
    assert res.exit_code == 0, res.output
    rows = {r["format"] + "/" + r["precision"]: r for r in json.loads(res.stdout)["rows"]}
    assert rows["onnx/fp32"]["status"] == "ok" and rows["onnx/fp32"]["cosine"] > 0.99999
    res = CliRunner().invoke(main, [*args[:-1], "--shape", "input=2x16", "--json"])
    assert res.exit_code == 0, res.output
