"""The CLI as people and CI see it (issue 11, items 6 to 9): brackets survive, tables fit 80
columns without shortening names, plain text in pipes, convert says what to do next, results carry
a host block, and ``edgekit compare`` gates on regressions."""

from __future__ import annotations

import copy
import csv
import inspect
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

import edgekit.errors as errors_module
from edgekit.cli import errors, main
from edgekit.cli.table import show
from edgekit.report import bench_table, runtimes_table

EDGEKIT = [sys.executable, "-m", "edgekit"]
LONG = "distilbert-base-uncased-finetuned-sst-2-english-tiny"  # 51 characters: wider than a default column
PROBLEM = "input 'pixels' has shape [N, 3, 224, 224], expected [1, 3, 224, 224] [bold]"
FIX = "pip install 'edgekit[convert]'"


# modules that define EdgekitError subclasses of their own (serving, devices, honest precisions)
DEFINING = ("edgekit.serve.responses", "edgekit.serve.batching", "edgekit.serve.llm", "edgekit.devices.ssh",
            "edgekit.optimize.bits")


def _all_errors() -> list[type[errors_module.EdgekitError]]:
    import importlib

    for module in DEFINING:
        importlib.import_module(module)
    seen, todo = [], [errors_module.EdgekitError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo += cls.__subclasses__()
    return seen


def _instance(cls: type[errors_module.EdgekitError]) -> errors_module.EdgekitError:
    """One of each error class, every positional argument a string with brackets in it."""
    params = [p for p in inspect.signature(cls.__init__).parameters.values()  # "problem" even with a default
              if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD and (p.default is p.empty or p.name == "problem")]
    args = [PROBLEM if p.name == "problem" else 400 if p.annotation in ("int", int) else f"{p.name}[x]"
            for p in params]
    return cls(*args, fix=FIX)


def _raising(e: errors_module.EdgekitError) -> click.Command:
    """A command that fails with ``e`` through the CLI's error path."""

    @click.command()
    def boom() -> None:
        with errors():
            raise e

    return boom


def test_every_error_class_keeps_its_brackets_on_the_cli() -> None:
    classes = _all_errors()
    names = {c.__name__ for c in classes}
    assert len(classes) >= 20 and {"RemoteDeviceError", "CommandTimeout", "HTTPError", "NoLowBitWeights"} <= names
    for cls in classes:
        e = _instance(cls)
        res = CliRunner().invoke(_raising(e), [])
        assert res.exit_code == e.exit_code, (cls.__name__, res.output)
        assert f"error: {e.problem}" in res.stderr, (cls.__name__, res.stderr)
        assert PROBLEM in res.stderr and f"fix: {FIX}" in res.stderr, (cls.__name__, res.stderr)
        assert "\x1b[" not in res.stderr and "Traceback" not in res.stderr


def test_a_real_error_keeps_its_shape(tmp_path: Path) -> None:
    """edgekit compare on a file that is not a result: the schema names in the fix keep their text."""
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"schema": "edgekit.convert/1", "artifacts": []}))  # convert --json, not bench
    res = CliRunner().invoke(main, ["compare", str(bad), str(bad)])
    assert res.exit_code == 2
    assert "is not an edgekit bench or matrix result (schema 'edgekit.convert/1')" in res.stderr
    assert "fix: pass JSON with schema edgekit.bench/1 (edgekit bench --save)" in res.stderr


def _render(sheet, width: int = 80, wide: bool = False) -> str:
    buf = io.StringIO()
    show(sheet, Console(file=buf, width=width, force_terminal=True, color_system=None), "table", wide)
    return buf.getvalue()


def test_devices_table_keeps_the_install_hint() -> None:
    rows = [{"runtime": "litert", "installed": False, "version": None, "formats": ["tflite"], "devices": {},
             "install": "pip install 'edgekit[tflite]'"},
            {"runtime": "onnxruntime", "installed": True, "version": "1.32.0", "formats": ["onnx"],
             "devices": {"cpu": ["CPUExecutionProvider"], "auto": ["CPUExecutionProvider"]}, "install": None}]
    for text in (_render(runtimes_table(rows)), _render(runtimes_table(rows), wide=True)):
        assert "pip install 'edgekit[tflite]'" in text and "cpu (CPUExecutionProvider)" in text
        assert "auto (" not in text


# --- a real artifact with a long name, converted and benchmarked once --------------------------------------

@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``edgekit convert LONG.pt2`` then ``edgekit bench --save``: the files the tests read."""
    import torch

    root = tmp_path_factory.mktemp("cliout")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    pt2 = root / f"{LONG}.pt2"
    torch.export.save(torch.export.export(net, (torch.randn(2, 16),)), str(pt2))
    out = root / "out"
    conv = CliRunner().invoke(main, ["convert", str(pt2), "--precision", "fp32,int8-dynamic", "--out", str(out)])
    assert conv.exit_code == 0, conv.output
    arts = [out / f"{LONG}-fp32.onnx", out / f"{LONG}-int8-dynamic.onnx"]
    save = root / "bench.json"
    bench = CliRunner().invoke(main, ["bench", *map(str, arts), "--runs", "20", "--warmup", "2", "--in-process",
                                      "--save", str(save)])
    assert bench.exit_code == 0, bench.output
    return {"root": root, "out": out, "arts": arts, "convert": conv, "bench": bench, "save": save}


def test_convert_names_the_folder_and_the_next_command(measured: dict) -> None:
    conv, out, arts = measured["convert"], measured["out"], measured["arts"]
    assert f"wrote 2 artifact(s), each with a .edgekit.json manifest, to {out}/" in conv.stderr
    assert f"next: edgekit bench {arts[0]} {arts[1]}" in conv.stderr
    assert f"edgekit inspect {arts[1]}" in conv.stderr
    # stdout is not a terminal here: plain text, every column, full names
    assert "┃" not in conv.stdout and "│" not in conv.stdout and "\x1b[" not in conv.stdout
    assert f"{LONG}-int8-dynamic.onnx" in conv.stdout and "total s" in conv.stdout


def test_convert_seconds_count_export_build_and_verification(measured: dict, tmp_path: Path) -> None:
    from edgekit.manifest import read_manifest

    m = read_manifest(measured["arts"][1])
    assert m is not None
    parts = m.conversion
    assert parts["verify_seconds"] > 0 and parts["build_seconds"] > 0 and parts["export_seconds"] > 0
    res = CliRunner().invoke(main, ["convert", str(measured["root"] / f"{LONG}.pt2"), "--precision", "fp32",
                                    "--out", str(tmp_path), "--json"])
    art = json.loads(res.stdout)["artifacts"][0]
    split = art["seconds_parts"]
    assert set(split) == {"export_share", "build", "verify"}
    assert split["export_share"] > 0 and split["verify"] > 0
    # the whole variant: at least the sum of its parts (the manifest and publishing come on top)
    assert art["seconds"] >= split["export_share"] + split["build"] + split["verify"] - 0.003


def test_80_column_terminal_keeps_full_artifact_names(measured: dict) -> None:
    import dataclasses

    from edgekit.harness import BenchResult

    rows = [BenchResult.from_dict(r) for r in json.loads(measured["save"].read_text())["results"]]
    # 70-character names: listed whole above a table of numbered rows that fits
    text = _render(bench_table(rows), 80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in text
    assert lines[1].endswith(f"1  {LONG}-fp32.onnx") and lines[2].endswith(f"2  {LONG}-int8-dynamic.onnx")
    assert "status" in text and "onnxruntime/cpu" in text and "p50" in text
    assert "not shown at this width: load ms, first ms, p99 ms, mean±std ms, runs (--wide" in " ".join(lines)
    # names that fit: the first column, whole, each on one line with its row
    short = [dataclasses.replace(r, artifact=f"out/digits-cnn-{p}.onnx") for r, p in zip(rows, ("fp32", "int8"))]
    text = _render(bench_table(short), 80)
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    assert any("digits-cnn-int8.onnx" in line and "ok" in line for line in text.splitlines())
    assert next(line for line in text.splitlines() if "artifact" in line).index("artifact") == 2
    wide = _render(bench_table(rows), 80, wide=True)
    header = next(line for line in wide.splitlines() if "artifact" in line)
    assert "peak RSS MB" in header and "p99 ms" in header and "runs" in header and f"{LONG}-fp32.onnx" in wide


def test_80_column_terminal_end_to_end(measured: dict) -> None:
    """A real `edgekit bench` in an 80-column terminal (rich's TTY_COMPATIBLE forces terminal output)."""
    env = {**os.environ, "TTY_COMPATIBLE": "1", "COLUMNS": "80", "NO_COLOR": "1"}
    proc = subprocess.run([*EDGEKIT, "bench", *map(str, measured["arts"]), "--runs", "10", "--warmup", "1",
                           "--in-process"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", proc.stdout).splitlines()  # styles, not characters
    assert "┃" in proc.stdout and max(len(line) for line in lines) <= 80
    assert any(f"{LONG}-int8-dynamic.onnx" in line for line in lines)


def test_piped_md_and_csv(measured: dict) -> None:
    arts = list(map(str, measured["arts"]))
    plain = measured["bench"].stdout
    assert "┃" not in plain and "│" not in plain and "\x1b[" not in plain
    header = next(line for line in plain.splitlines() if line.startswith("artifact"))
    assert "peak RSS MB" in header and "runs" in header  # a pipe gets every column
    res = CliRunner().invoke(main, ["bench", *arts, "--runs", "10", "--warmup", "1", "--in-process",
                                    "--format", "csv"])
    table = list(csv.reader(io.StringIO(res.stdout)))
    assert table[0][:3] == ["artifact", "status", "runtime/device"]
    assert [r[0] for r in table[1:]] == [Path(a).name for a in arts] and all(r[1] == "ok" for r in table[1:])
    assert float(table[1][table[0].index("p50 ms")]) > 0
    res = CliRunner().invoke(main, ["bench", *arts, "--runs", "10", "--warmup", "1", "--in-process",
                                    "--format", "md"])
    md = res.stdout.splitlines()
    assert md[0] == "**edgekit bench**" and md[2].startswith("| artifact | status |")
    assert md[3].startswith("| :-- | :-- |") and f"| {LONG}-fp32.onnx | ok |" in res.stdout


def test_bench_json_carries_a_host_block(measured: dict) -> None:
    data = json.loads(measured["save"].read_text())
    host = data["host"]
    assert host["cores"] == os.cpu_count() and host["python"] == sys.version.split()[0]
    assert host["cpu_model"] and host["os"] and host["started"] and host["finished"]
    assert len(host["load_before"]) == 3 and len(host["load_after"]) == 3
    import onnxruntime

    assert host["runtimes"]["onnxruntime"]["version"] == onnxruntime.__version__
    from edgekit.fsutil import sha256_file

    assert data["results"][0]["sha256"] == sha256_file(measured["arts"][0])


# --- edgekit compare: the CI gate ----------------------------------------------------------------------------

def _planted(measured: dict, tmp_path: Path, factor: float, name: str) -> Path:
    data = json.loads(measured["save"].read_text())
    new = copy.deepcopy(data)
    for r in new["results"]:
        for k in ("p50_ms", "p90_ms", "mean_ms"):
            r["latency"][k] *= factor
    path = tmp_path / name
    path.write_text(json.dumps(new))
    return path


def test_compare_fails_on_a_planted_20_percent_regression(measured: dict, tmp_path: Path) -> None:
    old = str(measured["save"])
    slow = _planted(measured, tmp_path, 1.20, "slow.json")
    res = CliRunner().invoke(main, ["compare", old, str(slow), "--max-regression", "10%"])
    assert res.exit_code == 1, res.output
    assert "2 regression(s)" in res.stderr and "+20.0%" in res.stdout and "regressed" in res.stdout
    data = json.loads(CliRunner().invoke(main, ["compare", old, str(slow), "--json"]).stdout)
    assert data["regressed"] and [round(d["latency_change"], 4) for d in data["deltas"]] == [0.2, 0.2]
    assert {d["matched_by"] for d in data["deltas"]} == {"sha256"}


def test_compare_passes_a_5_percent_change(measured: dict, tmp_path: Path) -> None:
    old = str(measured["save"])
    drift = _planted(measured, tmp_path, 1.05, "drift.json")
    res = CliRunner().invoke(main, ["compare", old, str(drift), "--max-regression", "10%"])
    assert res.exit_code == 0, res.output
    assert "+5.0%" in res.stdout and "no regression beyond 10.0% in 2 row(s)" in res.stderr
    # the same 5 % fails a 4 % gate
    assert CliRunner().invoke(main, ["compare", old, str(drift), "--max-regression", "4%"]).exit_code == 1


def test_compare_matches_by_name_and_flags_missing_rows(measured: dict, tmp_path: Path) -> None:
    data = json.loads(measured["save"].read_text())
    data["results"][0]["sha256"] = "0" * 64  # rebuilt: other bytes, same name
    del data["results"][1]
    path = tmp_path / "rebuilt.json"
    path.write_text(json.dumps(data))
    res = CliRunner().invoke(main, ["compare", str(measured["save"]), str(path), "--json"])
    assert res.exit_code == 1
    deltas = {d["name"]: d for d in json.loads(res.stdout)["deltas"]}
    assert deltas[f"{LONG}-fp32.onnx"]["matched_by"] == "name" and not deltas[f"{LONG}-fp32.onnx"]["regressions"]
    assert deltas[f"{LONG}-int8-dynamic.onnx"]["verdict"] == "missing"


def test_compare_matrix_metric_direction(tmp_path: Path) -> None:
    """Perplexity up and accuracy down are both losses; the threshold is a share of the old value."""
    def matrix_file(name: str, acc: float, ppl: float) -> Path:
        rows = [{"format": "onnx", "precision": "int8", "artifact": "m-int8.onnx", "status": "ok", "p50_ms": 1.0,
                 "metric_name": "accuracy", "metric": acc, "metric_higher_is_better": True},
                {"format": "gguf", "precision": "q4_k_m", "artifact": "lm-q4_k_m.gguf", "status": "ok",
                 "p50_ms": 5.0, "metric_name": "perplexity", "metric": ppl, "metric_higher_is_better": False}]
        path = tmp_path / name
        path.write_text(json.dumps({"schema": "edgekit.matrix/1", "rows": rows}))
        return path

    from edgekit.compare import compare

    base = matrix_file("a.json", 0.90, 20.0)
    c = compare(base, matrix_file("b.json", 0.89, 19.0), max_regression=0.10, max_metric_drop=0.02)
    assert not c.regressed and round(c.deltas[0].metric_change, 4) == 0.0111  # 1.1 % less accuracy
    assert round(c.deltas[1].metric_change, 4) == -0.05  # perplexity down: better
    c = compare(base, matrix_file("c.json", 0.95, 21.0), max_regression=0.10, max_metric_drop=0.02)
    assert [d.verdict for d in c.deltas] == ["ok", "regressed"]
    assert "perplexity 20.0000 -> 21.0000 (5.0% worse" in c.deltas[1].regressions[0]
    c = compare(base, matrix_file("d.json", 0.85, 20.0), max_regression=0.10, max_metric_drop=0.02)
    assert [d.verdict for d in c.deltas] == ["regressed", "ok"]
    # a row that failed before and still fails is reported as failed, not as a new regression
    broken = json.loads(base.read_text())
    broken["rows"][1].update(status="failed", reason="llama.cpp missing", p50_ms=None, metric=None)
    (tmp_path / "e.json").write_text(json.dumps(broken))
    c = compare(tmp_path / "e.json", tmp_path / "e.json")
    assert [d.verdict for d in c.deltas] == ["ok", "failed"] and not c.regressed
    # edgekit matrix A B --save: a set of matrices, rows without an artifact named by their source
    sets = []
    for name, acc in (("set-a.json", 0.90), ("set-b.json", 0.80)):
        rows = json.loads(matrix_file(name, acc, 20.0).read_text())["rows"]
        rows.append({"format": "pytorch", "precision": "fp32", "status": "ok", "p50_ms": 2.0})
        path = tmp_path / name
        path.write_text(json.dumps({"schema": "edgekit.matrix-set/1",
                                    "matrices": [{"source": {"name": "m"}, "rows": rows}]}))
        sets.append(path)
    c = compare(*sets, max_regression=0.10)
    assert [(d.name, d.verdict) for d in c.deltas] == [
        ("m-int8.onnx", "regressed"), ("lm-q4_k_m.gguf", "ok"), ("m:pytorch/fp32", "ok")]


def test_compare_threshold_must_be_a_percentage(measured: dict) -> None:
    save = str(measured["save"])
    res = CliRunner().invoke(main, ["compare", save, save, "--max-regression", "ten"])
    assert res.exit_code == 2 and "--max-regression 'ten' is not a percentage" in res.stderr
    assert "fix: write e.g. --max-regression 10%" in res.stderr


def test_quiet_and_verbose(measured: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from edgekit.cli import Output
    from edgekit.quiet import quiet

    save = str(measured["save"])
    res = CliRunner().invoke(main, ["-q", "compare", save, save])
    assert res.exit_code == 0 and res.stderr == "" and "edgekit compare" in res.stdout
    monkeypatch.delenv("EDGEKIT_VERBOSE", raising=False)
    with quiet("edgekit.test"):
        print("chatter")
    assert capsys.readouterr().out == ""
    res = CliRunner().invoke(main, ["-v", "compare", save, save])
    # -v sets EDGEKIT_VERBOSE for the command (and its worker processes) and takes it back after,
    # so a caller that runs main in-process (an app, a test) is not left verbose
    assert res.exit_code == 0 and Output.verbose and "EDGEKIT_VERBOSE" not in os.environ
    monkeypatch.setenv("EDGEKIT_VERBOSE", "1")
    with quiet("edgekit.test"):
        print("chatter")
    assert capsys.readouterr().out == "chatter\n"
    monkeypatch.delenv("EDGEKIT_VERBOSE")
    Output.quiet = Output.verbose = False


def test_python_m_edgekit_lists_compare() -> None:
    proc = subprocess.run([*EDGEKIT, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "compare" in proc.stdout and "-q, --quiet" in proc.stdout


@pytest.mark.slow
def test_matrix_json_carries_a_host_block_and_compares(measured: dict, tmp_path: Path) -> None:
    out = tmp_path / "m"
    res = CliRunner().invoke(main, ["matrix", str(measured["root"] / f"{LONG}.pt2"), "--to", "onnx", "--precision",
                                    "fp32", "--runs", "10", "--warmup", "1", "--in-process", "--no-plot",
                                    "--out", str(out), "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert next(csv.reader(io.StringIO(res.stdout)))[:2] == ["variant", "status"]
    data = json.loads((out / "matrix.json").read_text())
    host = data["host"]
    assert host["cores"] == os.cpu_count() and len(host["load_before"]) == 3 and len(host["load_after"]) == 3
    assert host["finished"] >= host["started"]
    res = CliRunner().invoke(main, ["compare", str(out / "matrix.json"), str(out / "matrix.json"), "--json"])
    assert res.exit_code == 0
    deltas = {d["name"]: d for d in json.loads(res.stdout)["deltas"]}
    assert deltas[f"{LONG}-fp32.onnx"]["matched_by"] == "sha256" and deltas["pytorch/fp32"]["matched_by"] == "name"


@pytest.mark.slow
def test_builtin_training_reports_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """One epoch instead of twelve: the callback hears (task, epoch, epochs) before each and at the end."""
    from edgekit.sources import builtin

    monkeypatch.setattr(builtin, "EPOCHS", 1)
    calls: list[tuple[str, int, int | None]] = []
    src = builtin.from_builtin("digits-cnn", progress=lambda task, done, total: calls.append((task, done, total)))
    assert [(d, t) for _, d, t in calls] == [(0, 1), (1, 1)]
    assert calls[0][0] == "train builtin digits-cnn" and src.name == "digits-cnn"
