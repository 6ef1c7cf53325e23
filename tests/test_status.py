"""Status enums for artifacts, benchmark rows and matrix rows: the JSON keeps its strings."""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.conversion import Artifact
from edgekit.harness import BenchResult
from edgekit.matrix import MatrixRow
from edgekit.types import ArtifactStatus, BenchStatus, Format, Precision, RowStatus


def test_strings_from_json_or_older_callers_become_members_and_go_back_as_strings() -> None:
    a = Artifact(Path("m-fp32.onnx"), Format.ONNX, Precision.FP32, "failed", "no onnxscript")
    assert a.status is ArtifactStatus.FAILED and a.status == "failed"
    d = json.loads(json.dumps(a.to_dict()))
    assert d["status"] == "failed" and type(a.to_dict()["status"]) is str

    r = BenchResult.from_dict({"artifact": "m.onnx", "status": "timeout", "latency": None})
    assert r.status is BenchStatus.TIMEOUT and type(r.to_dict()["status"]) is str
    assert BenchResult.from_dict(r.to_dict()).status is BenchStatus.TIMEOUT

    row = MatrixRow.from_dict({"format": "onnx", "precision": "int8", "status": "converted"})
    assert row.status is RowStatus.CONVERTED and row.to_dict()["status"] == "converted"
    assert MatrixRow("onnx", "fp32").status is RowStatus.OK


def test_the_json_values_are_the_ones_files_already_hold() -> None:
    assert {"ok", "failed", "diverged"} <= {s.value for s in ArtifactStatus}
    assert {"ok", "failed", "crashed", "timeout"} <= {s.value for s in BenchStatus}
    assert {"ok", "failed", "diverged", "crashed", "timeout", "converted"} <= {s.value for s in RowStatus}
    assert json.dumps({"s": RowStatus.TIMEOUT}) == '{"s": "timeout"}' and f"{BenchStatus.CRASHED}" == "crashed"
