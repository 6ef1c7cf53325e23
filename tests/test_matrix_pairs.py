"""Matrix speed ratios that a load burst cannot inflate (issue 12, item 17): interleaved
eager/artifact pairs, the median of the per-pair ratios, rows flagged "noisy" in the table and
the JSON when the eager timings disagree."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from edgekit.matrix import NOISY_SPREAD, PAIRS, BenchSettings, matrix, paired_ratio


def test_median_of_pair_ratios_ignores_one_burst() -> None:
    burst = paired_ratio([0.14, 102.0, 0.15], [0.10, 0.11, 0.10])
    assert burst.ratio == 1.5 and burst.noisy and burst.spread == pytest.approx(102 / 0.14, rel=1e-3)
    quiet = paired_ratio([0.14, 0.16, 0.15], [0.10, 0.11, 0.10])
    assert quiet.ratio == pytest.approx(1.45, abs=0.01) and not quiet.noisy
    assert paired_ratio([0.1, None], [0.2, 0.2]).pairs == [(0.1, 0.2)]  # a failed timing is dropped
    assert paired_ratio([], []).ratio is None


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Burst(nn.Module):
    """The same model during a load burst: every call takes 30 ms longer."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        time.sleep(0.03)
        return self.inner(*args)


def test_planted_burst_in_one_eager_window_is_flagged_not_reported(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import edgekit.matrix as m

    real, calls = m._eager_row, []

    def eager_row(src, feed, s):
        calls.append(s.min_time)
        if len(calls) == 3:  # the baseline, pair 1, then pair 2's eager window hits a burst
            src = dataclasses.replace(src, module=Burst(src.module))
        return real(src, feed, s)

    monkeypatch.setattr(m, "_eager_row", eager_row)
    torch.manual_seed(0)
    res = matrix(Tiny().eval(), (torch.randn(2, 8),), output_names=["y"], name="tiny", targets="onnx",
                 precisions="fp32", out=tmp_path / "m", plot=False,
                 bench=BenchSettings(warmup=1, runs=5, min_time=0.3, isolated=False))
    assert len(calls) == 1 + PAIRS and calls[1:] == [pytest.approx(0.1)] * PAIRS  # min_time shared
    (row,) = [r for r in res.rows if r.format == "onnx"]
    assert row.status == "ok" and len(row.eager_pairs) == PAIRS
    eager = [e for e, _ in row.eager_pairs]
    assert eager[1] > 25 and max(eager[0], eager[2]) < 5  # the planted burst is where it was planted
    ratios = sorted(e / a for e, a in row.eager_pairs)
    assert row.speedup_vs_eager == pytest.approx(ratios[1], rel=1e-3)  # the median pair
    assert row.speedup_vs_eager < (row.eager_pairs[1][0] / row.eager_pairs[1][1]) / 10
    assert row.noisy and max(eager) / min(eager) > NOISY_SPREAD
    saved = json.loads((tmp_path / "m" / "matrix.json").read_text())
    (onnx,) = [r for r in saved["rows"] if r["format"] == "onnx"]
    assert onnx["noisy"] is True and len(onnx["eager_pairs"]) == PAIRS

    from edgekit.report import matrix_table

    sheet = matrix_table(res)
    (cells,) = [c for c in sheet.rows if c[0].startswith("onnx")]
    assert cells[-1].endswith("x noisy")
    assert any(n.startswith("noisy = PyTorch eager p50 varied") for n in sheet.notes)
