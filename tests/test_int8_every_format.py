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
