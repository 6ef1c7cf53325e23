"""Model sources: everything edgekit converts starts as a :class:`ModelSource`.

``resolve_source`` accepts an ``nn.Module`` (with example inputs), a Hugging Face model
directory, a ``torch.export`` ``.pt2`` file, ``package.module:factory`` (with a weights file),
or ``builtin:NAME``. Weights are only read through safetensors or ``weights_only`` loading.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import ArtifactError, SourceError

if TYPE_CHECKING:
    import torch

    from edgekit.calib import CalibrationSet, EvalSet
    from edgekit.types import ExampleInputs, ModelRef, ProgressFn

TokenizeFn = Callable[[Sequence[str]], dict[str, np.ndarray]]


@dataclass
class ModelSource:
    """A PyTorch model ready to export: positional inputs in ``input_names`` order, tuple outputs."""

    module: torch.nn.Module
    example_inputs: dict[str, np.ndarray]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    name: str
    kind: str
    task: str | None = None
    location: str | None = None
    weights: list[dict[str, Any]] = field(default_factory=list)
    assets: list[Path] = field(default_factory=list)
    preprocess: dict[str, Any] = field(default_factory=dict)
    tokenize: TokenizeFn | None = None
    calibration: CalibrationSet | None = None
    evaluation: EvalSet | None = None
    exported_program: Any = None  # a torch.export.ExportedProgram when the source was a .pt2

    def reference(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs of the original PyTorch model on ``feed`` (numpy in, numpy out)."""
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in self.input_names]
        with torch.inference_mode():
            outs = self.module(*args)
        return {n: o.detach().float().numpy() if o.is_floating_point() else o.numpy()
                for n, o in zip(self.output_names, outs)}

    def export_args(self) -> tuple[tuple, tuple]:
        """``torch.export`` arguments: example tensors in input order (sizes of 1 on a dynamic axis
        widened to 2, which torch.export would specialize) and ``Dim.DYNAMIC`` shape specs, which
        let it infer each axis' range and its equalities with other axes (a named, unbounded
        ``Dim`` fails on models that bound an axis: BERT's position table caps the sequence)."""
        import torch

        args, shapes = [], []
        for name in self.input_names:
            arr = self.example_inputs[name]
            axes = self.dynamic_axes.get(name, {})
            for axis in axes:
                if arr.shape[axis] < 2:
                    arr = np.repeat(arr, 2, axis=axis)
            args.append(torch.from_numpy(np.ascontiguousarray(arr)))
            shapes.append({axis: torch.export.Dim.DYNAMIC for axis in axes} or None)
        return tuple(args), tuple(shapes)

    def export(self) -> Any:
        """The source as a ``torch.export.ExportedProgram``: a .pt2's own program, else
        ``torch.export.export`` on :meth:`export_args` with the dynamic axes kept. The one export
        helper of every converter that starts from torch.export (ONNX, OpenVINO); each wraps it in
        its own log silencing.

        >>> program = source.export()  # doctest: +SKIP
        """
        if self.exported_program is not None:
            return self.exported_program
        import torch

        from edgekit.errors import ExportError

        args, shapes = self.export_args()
        try:  # the wrapper takes *args, so the specs nest one level: (per-input specs,)
            return torch.export.export(self.module, args, dynamic_shapes=(shapes,), strict=False)
        except Exception as e:  # torch.export raises many types (UserError, GuardOnDataDependent...)
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            raise ExportError(f"torch.export could not trace {self.name}: {(lines or [type(e).__name__])[0]}",
                              fix="make forward() traceable (no data-dependent Python control flow), "
                              "or pass dynamic_axes={} to export with static shapes") from e

    def describe(self) -> dict[str, Any]:
        """Provenance for the manifest."""
        return {"kind": self.kind, "name": self.name, "location": self.location,
                "weights": self.weights, "task": self.task}


def resolve_source(
    model: ModelRef = None,
    example_inputs: ExampleInputs = None,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    weights: str | Path | None = None,
    seq_len: int | None = None,
    progress: ProgressFn | None = None,
) -> ModelSource:
    """Build a :class:`ModelSource` from any supported kind of model reference; ``progress`` hears
    about any training a built-in model does.

    >>> src = resolve_source("builtin:digits-cnn")  # doctest: +SKIP
    """
    if isinstance(model, ModelSource):
        return model
    if model is None:
        model = "builtin:" + _default_builtin()
    if not isinstance(model, (str, Path)):
        from edgekit.sources.module import from_module

        return from_module(model, example_inputs, input_names=input_names,
                           output_names=output_names, dynamic_axes=dynamic_axes)
    text = str(model)
    if text.startswith("builtin:"):
        from edgekit.sources.builtin import from_builtin

        return from_builtin(text.split(":", 1)[1], progress)
    path = Path(text).expanduser()
    if path.is_dir():
        from edgekit.sources.huggingface import from_hf_dir

        return from_hf_dir(path, seq_len=seq_len, example_inputs=example_inputs)
    if path.suffix == ".pt2":
        if not path.is_file():
            raise ArtifactError(f"no such file: {path}", fix="check the path to the .pt2 file")
        from edgekit.sources.pt2 import from_pt2

        return from_pt2(path)
    if ":" in text and not path.exists() and "/" not in text.split(":", 1)[0]:
        from edgekit.sources.factory import from_factory

        return from_factory(text, weights=weights, example_inputs=example_inputs,
                            input_names=input_names, output_names=output_names,
                            dynamic_axes=dynamic_axes)
    if not path.exists():
        raise ArtifactError(
            f"no such model source: {text}",
            fix="pass a Hugging Face model directory, a .pt2 file, package.module:factory, "
            "or builtin:digits-cnn",
        )
    raise SourceError(
        f"cannot tell what kind of model {text} is",
        fix="pass a Hugging Face model directory (config.json + safetensors), a torch.export "
        ".pt2 file, or package.module:factory with --weights",
    )


def _default_builtin() -> str:
    from edgekit.sources.builtin import DEFAULT

    return DEFAULT
