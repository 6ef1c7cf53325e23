"""``sensitivity --mode quantize`` recommends keeping a layer in float only when its score stands
out from the noise floor, and says so when nothing does (issue 12, item 17)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner
from torch import nn

from edgekit.cli import main
from edgekit.optimize.sensitivity import sensitivity
from tests.test_sensitivity import Fragile


class Robust(nn.Module):
    """Four well-conditioned layers: int8 costs each one about 1e-5 of cosine, which is noise."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3, self.fc4 = (nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 32),
                                                  nn.Linear(32, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc2(torch.relu(self.fc1(x))))
        return self.fc4(torch.relu(self.fc3(x)))


def _x(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def test_noise_level_scores_recommend_nothing(tmp_path: Path) -> None:
    report = sensitivity(Robust().eval(), (torch.from_numpy(_x(4, 0)),), input_names=["x"], data=[{"x": _x(16, 1)}])
    assert len(report.rows) == 4 and max(r.score for r in report.rows) < 1e-3
    assert report.standouts() == []
    assert report.select(top=2, above_noise=True) == []
    assert report.exclusions("onnx", top=5, above_noise=True) == {"exclude_layers": []}
    assert len(report.select(top=2)) == 2  # the plain ranking is unchanged for library callers
    assert report.to_dict()["noise_floor"] == report.noise_floor >= 1e-3

    np.savez(tmp_path / "x.npz", x=_x(4, 0))
    np.savez(tmp_path / "calib.npz", x=_x(16, 1))
    args = ["sensitivity", "tests.test_sensitivity_floor:Robust", "--example", str(tmp_path / "x.npz"),
            "--calib", str(tmp_path / "calib.npz"), "--top", "5", "--to", "onnx"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "no layer stands out from the noise floor" in text and "-O exclude_layers" not in text
    res = CliRunner().invoke(main, [*args, "--json"])
    d = json.loads(res.stdout)
    assert d["exclusions"] == {"onnx": {"exclude_layers": []}} and d["noise_floor"] > 0


def test_a_layer_that_stands_out_is_still_recommended(tmp_path: Path) -> None:
    report = sensitivity(Fragile().eval(), (torch.from_numpy(_x(4, 0)),), input_names=["x"],
                         data=[{"x": _x(24, 1)}])
    assert report.standouts() == ["fc2"]
    assert report.select(top=3, above_noise=True) == ["fc2"]
    assert report.rows[0].score > 10 * report.noise_floor
