"""``edgekit convert`` keeps torchao's "Failed to load ... _C_mxfp8" lines and torch's ``_pytree``
deprecation notices off the terminal unless ``-v`` is given (issue 12, item 16)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

# The CLI run in a fresh process, with a converter export that imports torchao the way the TFLite
# int8 route and transformers' quantizer probes do. On this wheel torch logs its _pytree notice on
# that import; the "Failed to load" line is what a torchao wheel built for another Python logs.
SCRIPT = """
import logging, sys
import edgekit.converters.onnx as onnx
real = onnx.OnnxConverter.export
def export(self, ctx):
    import torchao  # noqa: F401
    logging.getLogger("torchao").warning(
        "Failed to load /venv/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: undefined symbol")
    return real(self, ctx)
onnx.OnnxConverter.export = export
from edgekit.cli import main
main(sys.argv[1:])
"""


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


@pytest.mark.slow
def test_convert_hides_torchao_and_pytree_noise_unless_verbose(tmp_path: Path) -> None:
    pytest.importorskip("torchao")
    program = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(Tiny().eval(), (torch.randn(2, 4),)), program)
    runs = {}
    # a clean environment: an in-process `edgekit -v` of an earlier test leaves EDGEKIT_VERBOSE set
    env = {k: v for k, v in os.environ.items() if k != "EDGEKIT_VERBOSE"}
    for flags in ([], ["-v"]):
        proc = subprocess.run([sys.executable, "-c", SCRIPT, *flags, "convert", str(program), "--to", "onnx",
                               "--precision", "fp32", "--out", str(tmp_path / f"out{len(flags)}")],
                              capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        runs[bool(flags)] = proc.stderr
    assert "_C_mxfp8" in runs[True]  # -v lets it through: the noise really was emitted
    assert "_C_mxfp8" not in runs[False] and "Failed to load" not in runs[False]
    assert "_pytree" not in runs[False] and "register_constant" not in runs[False]
    assert "Traceback" not in runs[False] + runs[True]
