"""edgekit: convert a PyTorch model to ONNX (and more), verify it, run it, benchmark it.

>>> import edgekit
>>> arts = edgekit.convert(model, example_inputs, targets=["onnx"], precisions=["fp32", "int8"])  # doctest: +SKIP
>>> m = edgekit.load(arts[0].path, device="cpu")  # doctest: +SKIP
>>> out = m.run({"input_ids": ids, "attention_mask": mask})  # doctest: +SKIP

Importing edgekit imports neither torch nor any runtime; they load when a function needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekit.errors import (
    ArtifactError,
    CalibrationError,
    ConfigError,
    ConversionError,
    DeviceUnavailableError,
    EdgekitError,
    EdgekitWarning,
    ExportError,
    GateError,
    InputError,
    MissingDependencyError,
    QuantizationError,
    RecipeError,
    RuntimeFailure,
    SourceError,
    VerificationError,
)
from edgekit.types import Device, DeviceRequest, Format, Precision, Signature, TensorSpec

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edgekit.conversion import Artifact, convert
    from edgekit.harness import BenchResult, benchmark
    from edgekit.optimize.recipe import Recipe, load_recipe
    from edgekit.runtime import Model, load

# public name -> module that defines it, imported on first use
_LAZY = {
    "convert": "edgekit.conversion", "Artifact": "edgekit.conversion",
    "load": "edgekit.runtime", "Model": "edgekit.runtime",
    "benchmark": "edgekit.harness", "BenchResult": "edgekit.harness",
    "Recipe": "edgekit.optimize.recipe", "load_recipe": "edgekit.optimize.recipe",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "devices":  # edgekit.devices.connect("ssh://..."), imported on first use
        import importlib

        return importlib.import_module("edgekit.devices")
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")


__all__ = [
    "convert", "load", "benchmark", "Artifact", "Model", "BenchResult",
    "Recipe", "load_recipe", "GateError", "RecipeError",
    "Format", "Precision", "Device", "DeviceRequest", "Signature", "TensorSpec",
    "EdgekitError", "EdgekitWarning", "ArtifactError", "CalibrationError", "ConfigError", "ConversionError",
    "DeviceUnavailableError", "ExportError", "InputError", "MissingDependencyError",
    "QuantizationError", "RuntimeFailure", "SourceError", "VerificationError",
]
