"""Verification never reads NaN or infinite outputs as a match.

NaN compares false with every threshold: before ``ParityStats``, an all-NaN output reported max
error 0 and cosine 1, and passed the fp32 gate. These tests feed the statistics the outputs a
broken artifact gives (a freed input buffer, an fp16 overflow on a GPU, a bad int8 scale)."""

from __future__ import annotations

import numpy as np
import pytest

from edgekit.types import Precision
from edgekit.verify import ParityStats, output_parity, within_tolerance

RNG = np.random.default_rng(0)


def test_all_nan_output_is_the_worst_match_and_fails_every_precision() -> None:
    ref = [RNG.standard_normal((4, 10)).astype(np.float32)]
    p = output_parity("logits", ref, [np.full((4, 10), np.nan, np.float32)], top1=True)
    assert p.non_finite == 40
    assert p.cosine == -1.0 and p.min_cosine == -1.0 and p.top1_agreement == 0.0
    for precision in Precision:
        assert not within_tolerance(p, precision, scale=1.0), precision


def test_one_infinite_value_is_counted_and_its_row_is_the_worst() -> None:
    ref = RNG.standard_normal((4, 10))
    got = ref.copy()
    got[2, 3] = np.inf
    p = output_parity("y", [ref], [got], top1=True)
    assert p.non_finite == 1 and p.min_cosine == -1.0
    assert p.cosine == pytest.approx((3 * 1.0 - 1.0) / 4)  # three exact rows, one broken
    assert p.top1_agreement == pytest.approx(0.75) and p.max_abs_err == 0.0  # finite values all equal
    assert not within_tolerance(p, Precision.FP32, scale=float(np.abs(ref).max()))


def test_values_non_finite_in_the_original_too_are_left_out() -> None:
    ref = RNG.standard_normal((3, 6))
    ref[:, 0] = -np.inf  # a masked logit
    got = ref + 1e-7
    p = output_parity("logits", [ref], [got], top1=True)
    assert p.non_finite == 0 and p.max_abs_err == pytest.approx(1e-7)
    assert p.min_cosine > 0.999999 and p.top1_agreement == 1.0
    assert within_tolerance(p, Precision.FP32, scale=float(np.abs(ref[:, 1:]).max()))


def test_statistics_across_feeds_of_different_shapes() -> None:
    a, b = RNG.standard_normal((2, 5, 7)), RNG.standard_normal((1, 9, 7))
    shifted = [a + 0.5, b]
    p = output_parity("logits", [a, b], shifted, top1=True)
    assert p.max_abs_err == pytest.approx(0.5) and p.non_finite == 0
    assert p.mean_abs_err == pytest.approx(0.5 * a.size / (a.size + b.size))
    assert p.top1_agreement == 1.0  # a constant shift keeps every argmax
    # cosine per sample (2 + 1 rows), top-1 per position (10 + 9)
    stats = ParityStats("x")
    stats.add(a, a + 0.5)
    assert len(stats.cosines[0]) == 2


def test_fp16_gate_fails_only_when_far_off_in_value_and_direction() -> None:
    ref = RNG.standard_normal((8, 16))
    tiny = np.full((8, 1), 1e-5)  # a near-zero scalar output whose sign fp16 may flip
    flipped = output_parity("s", [tiny], [-tiny], top1=False)
    assert flipped.min_cosine == -1.0 and within_tolerance(flipped, Precision.FP16, scale=1e-5)
    assert not within_tolerance(flipped, Precision.FP32, scale=1e-5)
    garbage = output_parity("y", [ref], [RNG.standard_normal((8, 16))], top1=False)
    assert not within_tolerance(garbage, Precision.FP16, scale=float(np.abs(ref).max()))
    rounded = output_parity("y", [ref], [ref.astype(np.float16).astype(np.float64)], top1=False)
    assert within_tolerance(rounded, Precision.FP16, scale=float(np.abs(ref).max()))
    # int8 and int4 report their figures (the int8 loop judges static int8 on its own targets)
    assert within_tolerance(garbage, Precision.INT8, scale=1.0)


def test_a_real_conversion_reads_nan_from_the_artifact_as_diverged(tmp_path) -> None:
    """The gate as conversion applies it: the original's real outputs against the same outputs
    with one NaN, through ``edgekit.verify.compare`` with a Reference built from a real source."""
    import torch

    from edgekit.sources import resolve_source
    from edgekit.verify import Reference, compare

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    src = resolve_source(net, example_inputs=(torch.randn(4, 6),))
    feeds = [{src.input_names[0]: RNG.standard_normal((4, 6)).astype(np.float32)} for _ in range(3)]
    ref = Reference.build(src, feeds)
    good = [dict(o) for o in ref.outputs]
    assert compare(ref, good, Precision.FP32).passed
    bad = [{k: v.copy() for k, v in o.items()} for o in ref.outputs]
    name = src.output_names[0]
    bad[1][name][0, 0] = np.nan
    for precision in (Precision.FP32, Precision.FP16, Precision.INT8_DYNAMIC, Precision.INT4):
        v = compare(ref, bad, precision)
        assert not v.passed and v.gated and v.failed_output == name, precision
        assert v.outputs[0].non_finite == 1
