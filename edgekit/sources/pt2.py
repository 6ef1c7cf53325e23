"""A ``torch.export`` program saved with ``torch.export.save`` (``.pt2``)."""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import SourceError
from edgekit.fsutil import sha256_file
from edgekit.sources import ModelSource


def from_pt2(path: Path) -> ModelSource:
    """Load the program; its example inputs and dynamic dims come from the file itself."""
    import torch

    from edgekit.sources.module import from_module

    try:
        program = torch.export.load(str(path))
    except Exception as e:  # a truncated zip, a pickle, a newer serialization version...
        raise SourceError(f"{path} is not a loadable torch.export program: {e}",
                          fix="save it with torch.export.save(torch.export.export(model, args), path)") from e
    sig = program.graph_signature
    names = [spec.arg.name for spec in sig.input_specs if spec.kind.name == "USER_INPUT"]
    examples = getattr(program, "example_inputs", None)
    if not examples or not examples[0] or examples[1]:
        raise SourceError(f"{path} carries no positional example inputs",
                          fix="export with positional example tensors: torch.export.export(model, (x,))")
    args = examples[0]
    axes: dict[str, dict[int, str]] = {}
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in names]
    for node in placeholders:
        val = node.meta.get("val")
        dims = {i: ("batch" if i == 0 else f"{node.name}_dim{i}")
                for i, d in enumerate(getattr(val, "shape", ())) if not isinstance(d, int)}
        if dims:
            axes[node.name] = dims
    src = from_module(program.module(), tuple(args), input_names=names, dynamic_axes=axes,
                      name=path.stem, kind="pt2", location=str(path.resolve()),
                      weights=[{"file": path.name, "sha256": sha256_file(path),
                                "bytes": path.stat().st_size}])
    src.exported_program = program
    return src
