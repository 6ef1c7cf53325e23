"""The command line, driven the way a user types it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main

EDGEKIT = [sys.executable, "-m", "edgekit.cli"]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """`edgekit convert` with no arguments: the README's main job."""
    out = tmp_path_factory.mktemp("default")
    proc = subprocess.run([*EDGEKIT, "convert", "--out", str(out), "--json"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_default_convert_writes_verified_artifacts(default_run: tuple[Path, dict]) -> None:
    out, data = default_run
    arts = {a["precision"]: a for a in data["artifacts"]}
    assert list(arts) == ["fp32", "int8", "int4"]  # the built-in model ships calibration data
    assert all(a["status"] == "ok" for a in arts.values())
    assert arts["fp32"]["verification"]["outputs"][0]["max_abs_err"] < 1e-4
    metric = arts["int8"]["verification"]["metric"]
    assert metric["reference"] > 0.95 and abs(metric["delta"]) < 0.02  # digits test-split accuracy
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"digits-cnn-{p}.onnx" for p in arts] + [f"digits-cnn-{p}.onnx.edgekit.json" for p in arts])


def test_inspect_shows_manifest(default_run: tuple[Path, dict]) -> None:
    out, _ = default_run
    res = CliRunner().invoke(main, ["inspect", str(out / "digits-cnn-int8.onnx"), "--json"])
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert data["precision"] == "int8" and data["signature"]["inputs"][0]["shape"] == ["batch", 1, 8, 8]
    text = CliRunner().invoke(main, ["inspect", str(out / "digits-cnn-int8.onnx")]).output
    assert "onnx / int8" in text and "accuracy" in text
    assert "[batch, 1, 8, 8]" in text  # shapes are not swallowed as rich markup


def test_run_with_input_file(default_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = default_run
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:4] / 16).astype(np.float32)[:, None]
    np.savez(tmp_path / "sample.npz", pixels=x)
    res = CliRunner().invoke(main, ["run", str(out / "digits-cnn-fp32.onnx"), "--input",
                                    str(tmp_path / "sample.npz"), "--output", str(tmp_path / "o.npz"), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["outputs"]["logits"]["shape"] == [4, 10]
    assert data["outputs"]["logits"]["labels"] == [str(d) for d in digits.target[:4]]
    saved = np.load(tmp_path / "o.npz")["logits"]
    assert saved.argmax(1).tolist() == digits.target[:4].tolist()


def test_bench_table_keeps_a_row_for_a_broken_artifact(default_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = default_run
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    res = CliRunner().invoke(main, ["bench", str(out / "digits-cnn-fp32.onnx"), str(broken), "--runs", "20",
                                    "--warmup", "2", "--json"])
    assert res.exit_code == 1  # one row failed
    rows = json.loads(res.output)["results"]
    assert [r["status"] for r in rows] == ["ok", "failed"]
    assert rows[0]["latency"]["runs"] == 20 and rows[0]["mode"] == "isolated"
    assert "broken.onnx" in rows[1]["reason"]


def test_devices_lists_onnxruntime_cpu() -> None:
    res = CliRunner().invoke(main, ["devices", "--json"])
    assert res.exit_code == 0
    ort = next(r for r in json.loads(res.output)["runtimes"] if r["runtime"] == "onnxruntime")
    assert ort["installed"] and ort["devices"]["cpu"] == ["CPUExecutionProvider"]


def test_help_everywhere() -> None:
    for cmd in ([], ["convert"], ["inspect"], ["run"], ["bench"], ["devices"]):
        res = CliRunner().invoke(main, [*cmd, "--help"])
        assert res.exit_code == 0 and "Usage:" in res.output


def test_errors_are_one_line_and_a_fix_with_exit_codes(tmp_path: Path) -> None:
    proc = subprocess.run([*EDGEKIT, "convert", "--to", "coreml"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown format 'coreml'" in proc.stderr and "onnx, openvino, tflite, gguf" in proc.stderr
    proc = subprocess.run([*EDGEKIT, "run", str(tmp_path / "nope.onnx")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no such file or directory" in proc.stderr and "fix:" in proc.stderr


def test_bench_dim_must_be_a_whole_number(default_run: tuple[Path, dict]) -> None:
    out, _ = default_run
    res = CliRunner().invoke(main, ["bench", str(out / "digits-cnn-fp32.onnx"), "--dim", "batch=two"])
    assert res.exit_code == 2 and "--dim takes NAME=SIZE with a whole number" in res.output
    assert "fix: write e.g. --dim sequence=128" in res.output
