"""An in-memory ``nn.Module`` with example inputs: the base every other source builds on."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgekit.errors import SourceError
from edgekit.sources import ModelSource


def _to_numpy(x: Any, name: str) -> np.ndarray:
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise SourceError(
        f"example input {name!r} is a {type(x).__name__}, not a tensor or numpy array",
        fix="pass example inputs as torch tensors or numpy arrays",
    )


def _forward_params(module: Any) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def normalize_examples(module: Any, example_inputs: Any,
                       input_names: Sequence[str] | None) -> dict[str, np.ndarray]:
    """Examples as an ordered ``{name: array}``, from a tensor, a tuple or a dict."""
    if example_inputs is None:
        raise SourceError(
            "an nn.Module needs example inputs to be exported",
            fix="call edgekit.convert(model, example_inputs, ...) with a tensor, tuple or dict",
        )
    if isinstance(example_inputs, Mapping):
        return {str(k): _to_numpy(v, str(k)) for k, v in example_inputs.items()}
    items = list(example_inputs) if isinstance(example_inputs, (tuple, list)) else [example_inputs]
    names = list(input_names or [])
    if not names:
        params = _forward_params(module)
        names = params[: len(items)] if len(params) >= len(items) else []
        if not names:
            names = ["input"] if len(items) == 1 else [f"input_{i}" for i in range(len(items))]
    if len(names) != len(items):
        raise SourceError(f"{len(names)} input names for {len(items)} example inputs",
                          fix="give one name per example input")
    return {n: _to_numpy(x, n) for n, x in zip(names, items)}


def _flatten_outputs(out: Any, keys: Sequence[str] | None) -> tuple:
    import torch

    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, Mapping):  # includes Hugging Face ModelOutput
        use = keys or [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        return tuple(out[k] for k in use)
    if isinstance(out, (tuple, list)):
        flat: list = []
        for o in out:
            flat.extend(_flatten_outputs(o, None))
        return tuple(flat)
    raise SourceError(f"the model returned a {type(out).__name__}, not tensors",
                      fix="return a tensor, a tuple of tensors or a dict of tensors from forward()")


def _output_keys(out: Any) -> list[str] | None:
    import torch

    if isinstance(out, Mapping):
        return [k for k, v in out.items() if isinstance(v, torch.Tensor)]
    return None


def wrap(module: Any, input_names: Sequence[str], *, call_by_name: bool,
         output_keys: Sequence[str] | None = None) -> Any:
    """A module taking positional inputs in ``input_names`` order and returning a flat tuple."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *args: torch.Tensor) -> tuple:
            if call_by_name:
                out = self.inner(**dict(zip(input_names, args)))
            else:
                out = self.inner(*args)
            return _flatten_outputs(out, output_keys)

    wrapped = Wrapped()
    wrapped.training = False  # not .eval(): it recurses into ``module``, see _to_eval
    return wrapped


def _to_eval(module: Any) -> None:
    """Put ``module`` in inference mode.

    ``ExportedProgram.module()`` (a ``.pt2`` source) refuses ``eval()``/``train()`` with
    NotImplementedError: its training mode was fixed when it was exported, so there is nothing to do.
    """
    try:
        module.eval()
    except NotImplementedError:
        pass


def from_module(
    module: Any,
    example_inputs: Any,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    name: str | None = None,
    kind: str = "module",
    output_keys: Sequence[str] | None = None,
    **extra: Any,
) -> ModelSource:
    """Wrap a user ``nn.Module``; by default axis 0 of every input is the dynamic ``batch``."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise SourceError(f"expected a torch.nn.Module, got {type(module).__name__}",
                          fix="pass an nn.Module, a model directory, a .pt2 file or module:factory")
    _to_eval(module)
    examples = normalize_examples(module, example_inputs, input_names)
    names = list(examples)
    call_by_name = isinstance(example_inputs, Mapping)
    probe = wrap(module, names, call_by_name=call_by_name, output_keys=output_keys)
    with torch.inference_mode():
        raw = probe.inner(**{n: torch.from_numpy(v) for n, v in examples.items()}) \
            if call_by_name else probe.inner(*[torch.from_numpy(v) for v in examples.values()])
    keys = list(output_keys) if output_keys else _output_keys(raw)
    outs = _flatten_outputs(raw, keys)
    if output_names:
        outs_names = list(output_names)
        if len(outs_names) != len(outs):
            raise SourceError(f"{len(outs_names)} output names for {len(outs)} model outputs",
                              fix=f"give {len(outs)} output names")
    elif keys:
        outs_names = keys
    else:
        outs_names = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    axes = {n: dict(v) for n, v in dynamic_axes.items()} if dynamic_axes is not None \
        else {n: {0: "batch"} for n in names if examples[n].ndim > 0}
    unknown = set(axes) - set(names)
    if unknown:
        raise SourceError(f"dynamic_axes names unknown inputs: {sorted(unknown)}",
                          fix=f"the inputs are: {names}")
    return ModelSource(
        module=wrap(module, names, call_by_name=call_by_name, output_keys=keys),
        example_inputs=examples,
        input_names=names,
        output_names=outs_names,
        dynamic_axes=axes,
        name=name or type(module).__name__.lower(),
        kind=kind,
        **extra,
    )


def with_preprocess(source: ModelSource, preprocess: Mapping[str, Any]) -> ModelSource:
    """``source`` with the user's ``preprocess`` record (``convert(..., preprocess={...})``) merged
    over its own; a tokenizer file joins its assets, and a source with no task gets the one the
    record implies (an image spec: image-classification)."""
    from edgekit.tasks import check_preprocess, infer_task

    record, files = check_preprocess(preprocess)
    source.preprocess = {**source.preprocess, **record}
    source.assets = [*[a for a in source.assets if a.name not in {f.name for f in files}], *files]
    if source.task is None:
        source.task = infer_task(source.preprocess)
    return source
