"""Accuracy-aware static int8: a depthwise-separable CNN whose first depthwise layer int8 cannot
represent misses its target as plain static int8 in every format; the loop ranks the layers,
keeps the fragile one (and, where needed, the next) in float, and reaches the target, with every
step and the applied exclusions in the manifest. Without the loop the variant is ``degraded``.

The fragile layer: each channel of ``dw0`` is 50 x a 3x3 kernel whose taps nearly cancel
(eight 1s around -7.98), on images that are nearly flat per channel. Its output is the small
remainder (0.02 x 50 x the pixel); int8 rounding of the taps, or of its input, is of the size of
that remainder, so the output is noise. In float the layer is exact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

import edgekit  # noqa: E402
from edgekit.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.slow
FORMATS = ["onnx", "openvino", "tflite"]


class SeparableNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.dw0 = nn.Conv2d(3, 3, 3, groups=3)
        self.pw0 = nn.Conv2d(3, 16, 1)
        self.dw1 = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw1 = nn.Conv2d(16, 32, 1)
        self.head = nn.Linear(32, 10)
        with torch.no_grad():
            k = torch.ones(3, 3)
            k[1, 1] = -8 + 0.02
            self.dw0.weight.copy_(50 * k.expand(3, 1, 3, 3))
            self.dw0.bias.zero_()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.pw0(self.dw0(pixels)))
        x = torch.relu(self.pw1(torch.relu(self.dw1(x))))
        return self.head(x.mean((2, 3)))


def images(n: int, seed: int) -> np.ndarray:
    """A level per image and channel plus a faint smooth pattern."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 4, 4, generator=g)
    pattern = torch.nn.functional.interpolate(low, size=(16, 16), mode="bilinear", align_corners=True)
    return (0.05 * pattern + torch.randn(n, 3, 1, 1, generator=g)).numpy().astype(np.float32)


def _convert(out: Path, calib: Path, formats: list[str], **options: Any) -> dict[str, Any]:
    arts = edgekit.convert(SeparableNet().eval(), (torch.from_numpy(images(4, 0)),), input_names=["pixels"],
                           output_names=["logits"], targets=formats, precisions=["int8"], out=out,
                           calib=calib, options={f: dict(options) for f in formats})
    return {a.format.value: a for a in arts}


def _conversion(art: Any) -> dict[str, Any]:
    return json.loads(art.manifest_path.read_text())["conversion"]


def _top1(art: Any) -> float:
    return art.verification.outputs[0].top1_agreement


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    np.savez(path, pixels=images(24, 1))
    return path


@pytest.fixture(scope="module")
def looped(calib: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    for module in ("openvino", "litert_torch", "ai_edge_quantizer"):
        pytest.importorskip(module)
    return _convert(tmp_path_factory.mktemp("looped"), calib, FORMATS)


@pytest.fixture(scope="module")
def plain(calib: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("openvino")
    return _convert(tmp_path_factory.mktemp("plain"), calib, ["onnx", "openvino"], int8_loop=False)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_loop_reaches_the_target_by_keeping_the_fragile_layer_float(looped: dict[str, Any], fmt: str) -> None:
    art = looped[fmt]
    loop = _conversion(art)["accuracy_loop"]
    assert loop["goal"] == "top-1 agreement >= 0.98" and loop["met"] and loop["stopped"] == "met"
    assert loop["ranking"][0] == "dw0"  # sensitivity ranks the fragile layer first
    first, last = loop["steps"][0], loop["steps"][-1]
    assert first["excluded"] == [] and first["value"] < 0.95  # plain static int8 misses the target
    assert last["excluded"][0] == "dw0" and last["value"] >= 0.98 and last["value"] == loop["value"]
    # the loop judges top-1 without the original's near-ties (edgekit.verify.NEAR_TIE)
    firm = art.verification.outputs[0].top1_agreement_no_ties
    assert art.status == "ok" and firm == pytest.approx(loop["value"]) and firm >= 0.98
    # the exclusions are checked as applied in the published artifact: dw0's op is still float
    ex = _conversion(art)["exclusions"]
    assert ex["applied"] == last["excluded"] == loop["excluded"] and ex["missing"] == []
    assert len(ex["native"]["dw0"]) == 1
    assert art.size_bytes <= 1.5 * first["size_bytes"]


def test_without_the_loop_the_variant_is_degraded(plain: dict[str, Any]) -> None:
    for fmt, art in plain.items():
        loop = _conversion(art)["accuracy_loop"]
        assert art.status == "degraded" and _top1(art) < 0.95, fmt
        assert loop["met"] is False and loop["stopped"] == "loop off (-O int8_loop=false)"
        assert "top-1 agreement >= 0.98 not met" in art.reason and "int8-dynamic" in art.reason
        assert "exclusions" not in _conversion(art)  # nothing was kept in float
        assert art.to_dict()["status"] == "degraded"


def test_a_lower_target_is_met_without_exclusions(calib: Path, tmp_path: Path) -> None:
    art = _convert(tmp_path, calib, ["onnx"], int8_target=0.5)["onnx"]
    loop = _conversion(art)["accuracy_loop"]
    assert loop["target"] == 0.5 and loop["met"] and len(loop["steps"]) == 1 and art.status == "ok"


def test_a_layer_over_the_size_budget_is_skipped_and_the_next_tried(calib: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """pw1 (512 weights, the largest conv) ranked first: in float it outgrows 1.01x the plain int8 (1.03x)
    file, so the loop records it as over the budget and goes on to dw0, which meets the target."""
    import edgekit.optimize.int8_loop as int8_loop

    monkeypatch.setattr(int8_loop, "_ranking", lambda ctx, reference, exclude: ["pw1", "dw0"])
    art = _convert(tmp_path, calib, ["onnx"], int8_max_size_ratio=1.01)["onnx"]
    loop = _conversion(art)["accuracy_loop"]
    over, last = loop["steps"][1], loop["steps"][2]
    assert over["excluded"] == ["pw1"] and over["error"] == "over the size budget"
    assert over["size_bytes"] > 1.01 * loop["steps"][0]["size_bytes"]
    assert last["excluded"] == ["dw0"] and last["value"] >= 0.98  # pw1 was not kept in float
    assert loop["met"] and loop["stopped"] == "met" and art.status == "ok"
    assert _conversion(art)["exclusions"]["applied"] == ["dw0"]


def test_loop_options_are_checked() -> None:
    from edgekit.converters.onnx import OnnxOptions

    with pytest.raises(ConfigError, match="int8_target"):
        OnnxOptions(int8_target=2.0)
    with pytest.raises(ConfigError, match="int8_max_size_ratio"):
        OnnxOptions(int8_max_size_ratio=0.5)


def test_cli_degraded_exits_0_with_a_warning_and_max_accuracy_drop_uses_eval(calib: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgekit.cli import main

    np.savez(tmp_path / "example.npz", pixels=images(4, 0))
    x = images(32, 7)
    with torch.no_grad():
        labels = SeparableNet().eval()(torch.from_numpy(x)).argmax(-1).numpy()  # the float model scores 1.0
    np.savez(tmp_path / "eval.npz", pixels=x, labels=labels)
    args = ["convert", "tests.test_int8_loop:SeparableNet", "--example", str(tmp_path / "example.npz"),
            "--to", "onnx", "--precision", "int8", "--calib", str(calib)]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a"), "-O", "int8_loop=false"])
    assert res.exit_code == 0, res.output
    assert "warning: separablenet-int8.onnx is degraded" in res.output.lower() and "fix:" in res.output
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "--max-accuracy-drop", "0.02"])
    assert res.exit_code == 2 and "--eval" in res.output
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "c"), "--eval", str(tmp_path / "eval.npz"),
                                    "--max-accuracy-drop", "0.02", "--json"])
    assert res.exit_code == 0, res.output
    (art,) = json.loads(res.output[res.output.index("{"):])["artifacts"]
    assert art["status"] == "ok" and art["verification"]["metric"]["value"] >= 0.98
    loop = json.loads(Path(art["path"] + ".edgekit.json").read_text())["conversion"]["accuracy_loop"]
    assert loop["figure"] == "metric_drop" and loop["target"] == 0.02 and loop["met"]
    assert loop["steps"][0]["value"] > 0.02 and loop["excluded"][0] == "dw0"
