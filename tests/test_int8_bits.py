"""Precision names that never over-promise: every artifact records the share of its weights at
each bit width (``conversion.quantized_fraction``), the convert table flags a low share ("int4:
3% of weights 4-bit"), and an int4 file with no 4-bit weight at all is refused (skipped among
the default precisions)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import edgekit  # noqa: E402
from edgekit.optimize.bits import NoLowBitWeights, flag, fractions  # noqa: E402


def _fraction(art: Any) -> dict[str, float]:
    return json.loads(art.manifest_path.read_text())["conversion"]["quantized_fraction"]


def test_fractions_and_flags() -> None:
    assert fractions({4: 3, 8: 95, 32: 2}) == {"4": 0.03, "8": 0.95, "32": 0.02} and fractions({}) == {}
    assert flag("int4", {"4": 0.03, "8": 0.97}) == "int4: 3% of weights 4-bit"
    assert flag("int4", {"4": 0.9, "8": 0.1}) is None and flag("fp32", {"32": 1.0}) is None
    assert flag("int8-dynamic", {"8": 0.21, "32": 0.79}) == "int8-dynamic: 21% of weights 8-bit"


def test_onnx_cnn_int4_and_int8_dynamic_say_how_little_they_quantize(cnn: nn.Module, tmp_path: Path) -> None:
    from edgekit.report import artifacts_table

    arts = {a.precision.value: a for a in edgekit.convert(
        cnn, (torch.randn(2, 3, 16, 16),), targets=["onnx"], precisions=["fp32", "int8-dynamic", "int4"],
        out=tmp_path, output_names=["logits"])}
    params = {n: p.numel() for n, p in cnn.named_parameters() if p.dim() >= 2}
    head = params["head.weight"] / sum(params.values())  # only the Linear is a MatMul
    assert _fraction(arts["fp32"]) == {"32": 1.0}
    assert _fraction(arts["int8-dynamic"])["8"] == pytest.approx(head, abs=1e-3)
    assert _fraction(arts["int4"])["4"] == pytest.approx(head, abs=1e-3) and head < 0.02
    assert arts["int4"].to_dict()["quantized_fraction"] == _fraction(arts["int4"])
    reasons = artifacts_table(arts.values()).reasons
    assert f"int4: {head:.0%} of weights 4-bit" in reasons.values()
    assert any(r.startswith("int8-dynamic: ") for r in reasons.values())


def test_openvino_int4_without_a_4bit_weight_is_refused_or_skipped(cnn: nn.Module, cnn_calib: str,
                                                                    tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    x = (torch.randn(2, 3, 16, 16),)
    with pytest.raises(NoLowBitWeights, match="holds no 4-bit weight") as e:
        edgekit.convert(cnn, x, targets=["openvino"], precisions=["int4"], out=tmp_path / "a")
    assert "int8-weights" in e.value.fix
    arts = {a.precision.value: a for a in edgekit.convert(cnn, x, targets=["openvino"], out=tmp_path / "b",
                                                          calib=cnn_calib, options={"openvino": {"int8_loop": False}})}
    assert list(arts) == ["fp32", "int8", "int4"] and arts["int4"].status == "skipped"
    assert "no 4-bit weight" in arts["int4"].reason and not arts["int4"].path.exists()
    assert arts["fp32"].status == "ok" and _fraction(arts["int8"])["8"] > 0.99


def test_openvino_int4_on_linear_layers_is_mostly_4bit(tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8)).eval()
    (art,) = edgekit.convert(mlp, (torch.randn(2, 128),), targets=["openvino"], precisions=["int4"], out=tmp_path)
    share = _fraction(art)
    assert share["4"] == pytest.approx((128 * 256 + 256 * 256) / (128 * 256 + 256 * 256 + 256 * 8), abs=1e-3)
    assert share["8"] > 0  # the last layer is kept at 8 bit
