"""One torch.export helper (``ModelSource.export``) behind the ONNX and OpenVINO converters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import edgekit
from edgekit.errors import ExportError
from edgekit.sources import resolve_source


class Branchy(torch.nn.Module):
    """Python control flow on a tensor's value: torch.export cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x - 1


def test_export_keeps_named_dynamic_axes() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    source = resolve_source(net, (torch.randn(1, 4),), input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    program = source.export()
    assert isinstance(program, torch.export.ExportedProgram)
    (placeholder,) = [n for n in program.graph.nodes if n.op == "placeholder" and n.name not in
                      program.graph_signature.inputs_to_parameters]
    assert not isinstance(placeholder.meta["val"].shape[0], int)  # the batch axis stayed symbolic
    x = torch.randn(5, 4)
    (y,) = program.module()(x)  # the source's wrapper returns its outputs in order
    torch.testing.assert_close(y, net(x))


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_every_converter_reports_an_untraceable_model_the_same_way(target: str, tmp_path: Path) -> None:
    if target == "openvino":
        pytest.importorskip("openvino")
    with pytest.raises(ExportError) as info:
        edgekit.convert(Branchy().eval(), (torch.ones(2, 3),), targets=[target], precisions=["fp32"],
                        out=tmp_path / "o")
    assert info.value.problem.startswith("torch.export could not trace branchy: Could not guard on "
                                         "data-dependent expression")
    assert info.value.fix.startswith("make forward() traceable")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
