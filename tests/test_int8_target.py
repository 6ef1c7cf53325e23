"""The static int8 target's data: top-1 agreement does not count positions where the original's top
two scores are a near-tie (one swapped coin toss among ~34 verification samples is 3 points), and
with labelled ``--eval`` data the default target is the accuracy drop on that data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.optimize.int8_loop import DEFAULT_DROP, AccuracyOptions, Goal
from edgekit.types import Precision
from edgekit.verify import NEAR_TIE, Reference, compare, near_ties


def _logits() -> np.ndarray:
    rows = np.zeros((50, 4))
    rows[np.arange(50), np.arange(50) % 4] = 5.0  # 50 decisive rows: class i % 4 by 5 points
    rows[0, 1] = 5.0 - 0.5 * NEAR_TIE * 5.0  # row 0: classes 0 and 1 within half the tie margin
    return rows


def test_near_ties_are_relative_to_the_score_range() -> None:
    ties = near_ties(_logits())
    assert ties[0] and not ties[1:].any()
    assert near_ties(np.full((2, 3), 7.0)).all()  # all scores equal: a tie
    assert not near_ties(np.ones((3, 1))).any()  # one score: nothing to swap
    seq = np.stack([_logits(), 10 * _logits()])  # (batch, positions, classes): per position, scale-free
    assert near_ties(seq).sum() == 2


def _verify(got: np.ndarray) -> object:
    ref = Reference(feeds=[{"x": np.zeros((50, 1), np.float32)}], outputs=[{"logits": _logits()}],
                    top1_outputs=frozenset({"logits"}))
    return compare(ref, [{"logits": got}], Precision.INT8)


def test_a_swapped_near_tie_is_not_counted_a_decisive_flip_is() -> None:
    got = _logits()
    got[0, 1] += NEAR_TIE * 5.0  # the near-tie swaps: class 1 now wins row 0
    v = _verify(got)
    (p,) = v.outputs
    assert p.top1_agreement == pytest.approx(49 / 50) and p.near_ties == 1 and p.top1_agreement_no_ties == 1.0
    goal = Goal.of(AccuracyOptions(), v, None)
    assert goal.figure == "top1" and goal.value(v, None) == 1.0 and goal.met(goal.value(v, None))
    got[7] = got[7, ::-1]  # row 7 (class 3 by 5 points) now says class 0: a real flip
    v = _verify(got)
    assert v.outputs[0].top1_agreement_no_ties == pytest.approx(48 / 49)
    assert not goal.met(goal.value(v, None))  # 0.9796 < 0.98


@pytest.mark.slow
def test_labelled_eval_data_sets_the_default_target(tmp_path: Path) -> None:
    """An int8 variant judged on 200 labelled held-out images: the accuracy drop (<= one point) is the
    default target; the loop keeps the fragile layer in float to meet it."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    import edgekit
    from tests.test_int8_loop import SeparableNet, images

    net = SeparableNet().eval()
    x = images(200, 11)
    with torch.no_grad():
        labels = net(torch.from_numpy(x)).argmax(-1).numpy()  # the float model scores 1.0
    np.savez(tmp_path / "eval.npz", pixels=x, labels=labels)
    np.savez(tmp_path / "calib.npz", pixels=images(24, 1))
    (art,) = edgekit.convert(net, (torch.from_numpy(images(4, 0)),), input_names=["pixels"],
                             output_names=["logits"], targets=["onnx"], precisions=["int8"], out=tmp_path / "out",
                             calib=tmp_path / "calib.npz", eval_data=tmp_path / "eval.npz")
    loop = json.loads(art.manifest_path.read_text())["conversion"]["accuracy_loop"]
    assert loop["figure"] == "metric_drop" and loop["target"] == DEFAULT_DROP and loop["met"]
    assert loop["steps"][0]["value"] > DEFAULT_DROP and loop["excluded"][0] == "dw0"
    assert art.status == "ok" and art.verification.metric["samples"] == 200
    assert art.verification.metric["value"] >= 1.0 - DEFAULT_DROP
