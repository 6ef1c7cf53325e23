"""The latency harness: statistics, run counts, isolation and crash rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.harness import MIN_RUNS, LatencyStats, time_calls
from tests.conftest import install_runtime_plugin


def test_stats_match_numpy() -> None:
    ns = [1_000_000, 2_000_000, 3_000_000, 4_000_000, 10_000_000]
    s = LatencyStats.from_ns(ns)
    ms = np.array(ns) / 1e6
    assert (s.runs, s.min_ms, s.max_ms, s.mean_ms) == (5, 1.0, 10.0, 4.0)
    assert s.p50_ms == 3.0 and s.p90_ms == pytest.approx(np.percentile(ms, 90))
    assert s.std_ms == pytest.approx(ms.std(ddof=1))


def test_fixed_run_count_and_warmup() -> None:
    calls = []
    first, samples = time_calls(lambda: calls.append(1), warmup=5, runs=7)
    assert len(samples) == 7 and len(calls) == 12 and first > 0


def test_min_time_runs_at_least_the_minimum() -> None:
    first, samples = time_calls(lambda: None, warmup=1, runs=None, min_time=0.0)
    assert len(samples) == MIN_RUNS
    _, timed = time_calls(lambda: None, warmup=0, runs=None, min_time=0.05)
    assert len(timed) > MIN_RUNS  # a no-op runs many times in 50 ms


def test_isolated_benchmark_measures_in_a_fresh_process(cnn_artifacts: dict) -> None:
    r = edgekit.benchmark(cnn_artifacts["fp32"].path, runs=20, warmup=2, isolated=True)
    assert r.status == "ok" and r.mode == "isolated" and r.latency.runs == 20
    assert r.load_ms > 0 and r.first_ms > 0 and r.peak_rss_mb > 10



@pytest.mark.parametrize("isolated", [False, True])
def test_runtime_options_reach_the_runtime(cnn_artifacts: dict, isolated: bool) -> None:
    """A static shape given as a load option fixes the benchmarked shape; a bad option is a row."""
    path = cnn_artifacts["fp32"].path
    r = edgekit.benchmark(path, runtime="openvino", runs=10, warmup=1, isolated=isolated, batch=3,
                          options={"static_shapes": "pixels=3x3x16x16"})
    assert r.status == "ok", r.reason
    assert r.inputs == {"pixels": [3, 3, 16, 16]} and r.batch == 3
    bad = edgekit.benchmark(path, runtime="openvino", runs=10, warmup=1, isolated=isolated,
                            options={"static_shapes": "pixels"})
    assert bad.status == "failed" and "NAME=DxD" in bad.reason

PLUGIN = '''
import os
from edgekit.runtimes.onnxruntime import OrtModel
from edgekit.runtimes import RUNTIMES

@RUNTIMES.register("aborting")
class Aborting(OrtModel):
    """A runtime that dies the way a native library does on a bad model."""
    name = "aborting"
    def _run(self, feed):
        os.abort()
'''


@pytest.fixture
def aborting_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A third-party runtime, registered through the entry-point group like a real plugin."""
    install_runtime_plugin(tmp_path, monkeypatch, "aborting_rt", PLUGIN)
    return "aborting"


def test_a_crashing_runtime_becomes_a_row_not_a_dead_caller(cnn_artifacts: dict, aborting_plugin: str) -> None:
    r = edgekit.benchmark(cnn_artifacts["fp32"].path, runtime=aborting_plugin, runs=5, isolated=True)
    assert r.status == "crashed" and "SIGABRT" in r.reason


def test_run_isolated_matches_in_process_and_survives_a_crash(cnn_artifacts: dict, aborting_plugin: str) -> None:
    from edgekit.isolation import run_isolated

    path = cnn_artifacts["int8"].path
    feeds = [{"pixels": np.random.default_rng(i).standard_normal((2, 3, 16, 16)).astype(np.float32)}
             for i in range(3)]
    got, sig = run_isolated(path, feeds)
    with edgekit.load(path) as m:
        for feed, out in zip(feeds, got):
            np.testing.assert_array_equal(out["logits"], m.run(feed)["logits"])
    assert sig.input_names == ["pixels"]
    with pytest.raises(edgekit.RuntimeFailure, match="crashed \\(SIGABRT\\)"):
        run_isolated(path, feeds, runtime=aborting_plugin)


def test_in_process_failure_is_a_row(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    r = edgekit.benchmark(bad)
    assert r.status == "failed" and "cannot load broken.onnx" in r.reason


def test_isolated_peak_rss_is_the_childs_own(cnn_artifacts: dict) -> None:
    ballast = np.ones(400 * 2**20 // 8)  # 400 MB resident in the calling process
    r = edgekit.benchmark(cnn_artifacts["fp32"].path, runs=10, warmup=1, isolated=True)
    assert ballast.sum() > 0
    assert 10 < r.peak_rss_mb < 300, r.peak_rss_mb  # a forked child must not inherit the parent's peak


def test_benchmark_rows_carry_the_artifacts_sha256(cnn_artifacts: dict, tmp_path: Path) -> None:
    """edgekit.benchmark() from Python fills the row's sha256 (edgekit compare matches rows by it
    first), in-process and isolated, from the manifest or by hashing a bare file; the same bytes
    under another name are matched by content."""
    import hashlib
    import json
    import shutil

    from edgekit.compare import compare
    from edgekit.harness import SCHEMA

    art = cnn_artifacts["fp32"].path
    want = hashlib.sha256(art.read_bytes()).hexdigest()
    bare = tmp_path / "renamed.onnx"  # no manifest beside it: hashed
    shutil.copy(art, bare)
    rows = [edgekit.benchmark(art, runs=3, warmup=1), edgekit.benchmark(art, runs=3, warmup=1, isolated=True),
            edgekit.benchmark(bare, runs=3, warmup=1)]
    assert [r.status for r in rows] == ["ok"] * 3
    assert [r.sha256 for r in rows] == [want] * 3
    assert edgekit.benchmark(tmp_path / "missing.onnx", runs=3).sha256 is None  # a failed row: nothing to hash
    for name, r in (("old.json", rows[0]), ("new.json", rows[2])):
        (tmp_path / name).write_text(json.dumps({"schema": SCHEMA, "results": [r.to_dict()]}))
    (d,) = compare(tmp_path / "old.json", tmp_path / "new.json", max_regression=10.0).deltas
    assert d.matched_by == "sha256"
