"""Calibration fixes before static int8 (edgekit/optimize/equalize.py, int8_prep.py): batch-norm
folding and cross-layer equalization keep the function and even out channel ranges, ReLU6 pairs
stay exact on the data, bias correction shifts biases by the derived amount, and on ONNX CLE lifts
a depthwise CNN whose depthwise channels span three decades from worst cosine < 0.99 to > 0.999,
recorded in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgekit.errors import ConfigError  # noqa: E402
from edgekit.optimize import equalize as eq  # noqa: E402


def depthwise_net(act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """stem -> depthwise (+BN) -> pointwise, the depthwise channels scaled 0.01..10 and the pointwise
    inputs by the inverse: the same function as balanced channels, but one activation range for all."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), act(),
                      nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), act(),
                      nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    f = torch.logspace(-2, 1, 16)
    with torch.no_grad():
        m[3].running_mean.uniform_(-0.1, 0.1)
        m[3].weight.copy_(f)
        m[3].bias.copy_(0.1 * f)
        m[5].weight.div_(f[None, :, None, None])
    return m.eval()


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def ranges(conv: nn.Conv2d) -> torch.Tensor:
    return conv.weight.detach().abs().reshape(conv.out_channels, -1).amax(1)


def test_fold_and_equalize_keep_the_function_and_even_out_ranges() -> None:
    m, x = depthwise_net(), images(8)
    ref = m(x)
    assert eq.fold_batchnorm(m) == ["2"] and isinstance(m[3], nn.Identity)
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-4)
    before = ranges(m[2])
    report = eq.equalize(m)
    assert [(p.first, p.second, p.act) for p in report.pairs] == [("0", "2", "relu"), ("2", "5", "relu")]
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-4)
    after = ranges(m[2])
    assert (before.max() / before.min()) > 300 and (after.max() / after.min()) < 10


def test_relu6_pairs_stay_exact_on_the_data() -> None:
    m, x = depthwise_net(nn.ReLU6), images(16)
    with torch.no_grad():
        m[0].weight.mul_(20)  # the stem's ReLU6 clips on some channels
    ref = m(x)
    eq.fold_batchnorm(m)
    report = eq.equalize(m, [(x,)])
    assert report.relu6_pinned > 0  # clipped channels keep scale 1
    torch.testing.assert_close(m(x), ref, atol=1e-4, rtol=1e-4)
    assert eq.equalize(depthwise_net(nn.ReLU6)).pairs == []  # without data a ReLU6 pair is left alone


def test_bias_correction_shifts_biases_by_the_mean_rounding_error() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(4, 6, 1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 5 * 5, 3)).eval()
    x = torch.rand(32, 4, 5, 5) * torch.tensor([1.0, 2.0, 3.0, 4.0])[None, :, None, None]
    b_conv, b_lin = m[0].bias.detach().clone().numpy(), m[3].bias.detach().clone().numpy()
    w = m[0].weight.detach().numpy()[:, :, 0, 0].astype(np.float64)
    scale = np.abs(w).max(1, keepdims=True) / 64
    dw = np.clip(np.round(w / scale), -64, 64) * scale - w
    mean_x = x.numpy().mean((0, 2, 3))
    lin_in = torch.relu(m[0](x)).flatten(1).detach().numpy().mean(0)  # the Linear's mean input (float model)
    wl = m[3].weight.detach().numpy().astype(np.float64)
    dwl = np.clip(np.round(wl / (np.abs(wl).max(1, keepdims=True) / 64)), -64, 64) * (np.abs(wl).max(1, keepdims=True) / 64) - wl
    shifts = eq.correct_bias(m, [(x,)], qmax=64)
    np.testing.assert_allclose(m[0].bias.detach().numpy(), b_conv - dw @ mean_x, atol=1e-6)
    np.testing.assert_allclose(m[3].bias.detach().numpy(), b_lin - dwl @ lin_in, atol=1e-5)
    assert shifts["0"] == pytest.approx(np.abs(dw @ mean_x).max(), rel=1e-4) and shifts["0"] > 1e-4


def test_prepare_records_what_it_did() -> None:
    from edgekit.converters.onnx import OnnxOptions
    from edgekit.optimize.int8_prep import prepare
    from edgekit.sources import resolve_source

    src = resolve_source(depthwise_net(), (images(2).numpy(),), input_names=["x"], output_names=["logits"])
    new, record = prepare(src, "onnx", OnnxOptions(int8_cle=True, int8_bias_correction=True), None)
    assert record["applied"] and record["batchnorm_folded"] == 1 and len(record["cle"]["pairs"]) == 2
    assert record["bias_correction"]["weight_qmax"] == 64  # reduce_range: ORT's 7-bit grid
    assert new.module is not src.module and isinstance(src.module.get_submodule("inner.3"), nn.BatchNorm2d)
    mlp = resolve_source(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), (np.ones((2, 4), np.float32),))
    same, why = prepare(mlp, "onnx", OnnxOptions(int8_cle=True), None)
    assert same is mlp and not why["applied"]  # nothing to equalize: no second export
    with pytest.raises(ConfigError):
        OnnxOptions(int8_prep_samples=0)


@pytest.mark.slow
def test_cle_lifts_onnx_static_int8_and_is_recorded(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import edgekit

    calib = images(64).numpy()
    np.savez(tmp_path / "calib.npz", x=calib)
    got = {}
    for label, opts in (("plain", {"int8_loop": False}), ("cle", {"int8_loop": False, "int8_cle": True})):
        (art,) = edgekit.convert(depthwise_net(), (calib[:2],), input_names=["x"], output_names=["logits"],
                                 targets=["onnx"], precisions=["int8"], calib=tmp_path / "calib.npz",
                                 out=tmp_path / label, options={"onnx": opts})
        got[label] = (art.verification.outputs[0].min_cosine, json.loads(art.manifest_path.read_text()))
    (plain, m0), (cle, m1) = got["plain"], got["cle"]
    assert plain < 0.99 < 0.999 < cle, (plain, cle)
    assert "int8_prep" not in m0["conversion"] and m0["options"]["int8_cle"] is False
    prep = m1["conversion"]["int8_prep"]
    assert m1["options"]["int8_cle"] is True and prep["applied"] and prep["batchnorm_folded"] == 1
    assert prep["cle"]["pairs"] == ["inner.0 -relu-> inner.2", "inner.2 -relu-> inner.5"]
