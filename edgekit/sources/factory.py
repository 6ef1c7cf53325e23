"""``package.module:factory`` plus a weights file (safetensors, or a weights-only state dict)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgekit.errors import ArtifactError, SourceError
from edgekit.fsutil import sha256_file
from edgekit.sources import ModelSource


def load_state_dict(path: Path) -> dict[str, Any]:
    """Read weights without unpickling arbitrary objects."""
    if not path.is_file():
        raise ArtifactError(f"no such weights file: {path}", fix="check the --weights path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses arbitrary pickles, which is the point
        raise SourceError(f"{path} is not a plain state dict loadable with weights_only=True: {e}",
                          fix="save weights with safetensors, or torch.save(model.state_dict(), path)") from e
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise SourceError(f"{path} holds a {type(state).__name__}, not a state dict",
                          fix="save torch.save(model.state_dict(), path)")
    return dict(state)


def from_factory(spec: str, *, weights: str | Path | None, example_inputs: Any,
                 input_names: Sequence[str] | None = None,
                 output_names: Sequence[str] | None = None,
                 dynamic_axes: Mapping[str, Mapping[int, str]] | None = None) -> ModelSource:
    """Import ``module:factory``, call it, and load ``weights`` into the returned module."""
    from edgekit.sources.module import from_module

    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise SourceError(f"cannot import {spec}: {e}",
                          fix="check that the module is importable (PYTHONPATH) and defines the factory") from e
    model = factory()
    described = []
    if weights is not None:
        wpath = Path(weights)
        state = load_state_dict(wpath)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise SourceError(f"weights {wpath.name} do not fit {spec}: {str(e).splitlines()[0]}",
                              fix="pass the weights saved from this architecture") from e
        described = [{"file": wpath.name, "sha256": sha256_file(wpath), "bytes": wpath.stat().st_size}]
    if example_inputs is None:
        raise SourceError(f"{spec} needs example inputs to export",
                          fix="pass --example inputs.npz or --shape NAME=1x3x224x224")
    return from_module(model, example_inputs, input_names=input_names, output_names=output_names,
                       dynamic_axes=dynamic_axes, name=attr, kind="factory",
                       location=spec, weights=described)
