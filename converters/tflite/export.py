"""The torch side of the TFLite converter: fixed shapes, the runtime plan, the exportable module
and the feeds (export sample, calibration rows) shaped for the fixed-shape graph.

TFLite graphs have fixed shapes. Per input the shape is the user's (``input_shapes``) or the
example's, with the batch axis at ``batch_size`` (1) and every other dynamic axis (a sequence) at
the largest size in the example and calibration data. The runtime then runs any batch in chunks
of the fixed batch, and pads a shorter sequence only where padding was checked here, on the
PyTorch model, not to change the outputs (a BERT classifier with an attention mask: yes; a model
that averages over every position: no).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import CalibrationError, ConfigError, ExportError, first_line
from edgekit.options import parse_shapes as _parse_shapes
from edgekit.runtimes.litert.plan import InputPlan, OutputPlan, Plan

if TYPE_CHECKING:
    from edgekit.calib import CalibrationSet
    from edgekit.sources import ModelSource

Feed = dict[str, np.ndarray]
PAD_VALUE = 0  # token id, mask and segment ids past the end of a padded sequence
# parity of a padded run with the unpadded one: the fp32 tolerance of edgekit.verify
PAD_ATOL, PAD_RTOL, PAD_MIN_COSINE = 1e-4, 1e-3, 0.9999


def parse_shapes(value: Mapping[str, Sequence[int]] | str | None) -> dict[str, tuple[int, ...]]:
    """``{"input_ids": (1, 128)}`` or ``"input_ids=1x128;attention_mask=1x128"``."""
    return _parse_shapes(value, "input_shapes",
                         "-O tflite.input_shapes=input_ids=1x128;attention_mask=1x128")


@dataclass
class ShapePlan:
    """Fixed shapes (in the PyTorch model's layout), the runtime plan and what was decided why."""

    fixed: dict[str, tuple[int, ...]]
    plan: Plan
    nhwc: list[str]
    notes: dict[str, Any] = field(default_factory=dict)

    def model_shape(self, name: str) -> tuple[int, ...]:
        """The shape the ``.tflite`` input has (channel-last where asked)."""
        s = self.fixed[name]
        return (s[0], *s[2:], s[1]) if name in self.nhwc else s

    def fit(self, feed: Feed, what: str) -> Feed:
        """A feed shaped for the graph: padded where the plan allows, in the model's layout."""
        out = {}
        for name, arr in feed.items():
            p = self.plan.inputs.get(name, InputPlan())
            want = self.fixed[name]
            if p.pad_axis is not None and arr.shape[p.pad_axis] < want[p.pad_axis]:
                widths = [(0, 0)] * arr.ndim
                widths[p.pad_axis] = (0, want[p.pad_axis] - arr.shape[p.pad_axis])
                arr = np.pad(arr, widths, constant_values=p.pad_value)
            if arr.shape != want:
                raise CalibrationError(
                    f"{what} input {name!r} has shape {list(arr.shape)}, the TFLite graph is fixed at "
                    f"{list(want)}", fix=f"give {what} data of that shape, or convert with "
                    f"-O tflite.input_shapes={name}={'x'.join(map(str, arr.shape))}")
            out[name] = np.transpose(arr, (0, 2, 3, 1)) if name in self.nhwc else arr
        return out

    def rows(self, data: CalibrationSet | None, limit: int, what: str) -> list[Feed]:
        """Up to ``limit`` samples of ``data`` in batches of the fixed batch, fitted to the graph."""
        if data is None:
            return []
        batch = next((self.fixed[n][0] for n, p in self.plan.inputs.items() if p.batch_axis == 0), 1)
        return [self.fit(b, what) for b in data.take(limit).batches(batch)
                if len(next(iter(b.values()))) == batch]


def plan_shapes(source: ModelSource, calibration: CalibrationSet | None, *, input_shapes: dict[str, tuple[int, ...]],
                batch_size: int, layout: str, pad: bool) -> ShapePlan:
    """Decide the fixed shapes and the runtime plan for ``source`` (see the module docstring)."""
    names = source.input_names
    unknown = sorted(set(input_shapes) - set(names))
    if unknown:
        raise ConfigError(f"input_shapes names unknown input(s) {unknown}", fix=f"the inputs are: {names}")
    examples = source.example_inputs
    sizes: dict[str, dict[int, int]] = {}
    for name in names:
        for axis in source.dynamic_axes.get(name, {}):
            seen = [examples[name].shape[axis]]
            if calibration is not None and name in calibration.arrays:
                seen.append(calibration.arrays[name].shape[axis])
            sizes.setdefault(name, {})[axis] = max(seen)
    fixed: dict[str, tuple[int, ...]] = {}
    batch_inputs = [n for n in names if 0 in source.dynamic_axes.get(n, {})]
    for name in names:
        shape = list(examples[name].shape)
        for axis, size in sizes.get(name, {}).items():
            shape[axis] = batch_size if (axis == 0 and name in batch_inputs) else size
        if name in input_shapes:
            given = input_shapes[name]
            if len(given) != len(shape):
                raise ConfigError(f"input_shapes gives {name!r} rank {len(given)}, the model takes rank {len(shape)}",
                                  fix=f"give {len(shape)} sizes, e.g. {name}={'x'.join(map(str, shape))}")
            shape = list(given)
        fixed[name] = tuple(int(s) for s in shape)
    nhwc = [n for n in names if layout == "nhwc" and examples[n].ndim == 4 and examples[n].dtype.kind == "f"]
    if layout == "nhwc" and not nhwc:
        raise ConfigError("layout=nhwc, but the model has no rank-4 float (image) input",
                          fix="drop -O tflite.layout=nhwc for this model")
    # axes the runtime may pad: dynamic, not the batch, grouped by the source's axis name
    groups: dict[str, list[tuple[str, int]]] = {}
    for name in names:
        for axis, axis_name in source.dynamic_axes.get(name, {}).items():
            if not (axis == 0 and name in batch_inputs):
                groups.setdefault(str(axis_name), []).append((name, axis))
    notes: dict[str, Any] = {}
    paddable: dict[str, list[tuple[str, int]]] = {}
    crops: dict[str, dict[str, int]] = {}
    for axis_name, members in groups.items():
        if not pad or any(n in nhwc for n, _ in members):
            notes[axis_name] = "not padded (pad_sequences=false)" if not pad else "not padded (channel-last input)"
            continue
        ok, crop, why = _padding_is_safe(source, members, fixed)
        notes[axis_name] = why
        if ok:
            paddable[axis_name] = members
            crops[axis_name] = crop
    out_batch = _output_batch_axes(source) if batch_inputs else {}
    inputs = {}
    for name in names:
        pad_at = next(((a, n) for n, m in paddable.items() for (i, a) in m if i == name), None)
        dtype = str(examples[name].dtype)
        inputs[name] = InputPlan(batch_axis=0 if name in batch_inputs else None,
                                 pad_axis=pad_at[0] if pad_at else None,
                                 pad_name=pad_at[1] if pad_at else None, pad_value=PAD_VALUE,
                                 nhwc=name in nhwc, source_dtype=dtype if dtype in ("int64", "float64") else None)
    ref = source.reference({n: examples[n] for n in names})
    outputs = {}
    for name in source.output_names:
        crop_at = next(((c[name], n) for n, c in crops.items() if name in c), None)
        dtype = str(ref[name].dtype)
        outputs[name] = OutputPlan(batch_axis=out_batch.get(name), crop_axis=crop_at[0] if crop_at else None,
                                   crop_name=crop_at[1] if crop_at else None,
                                   source_dtype=dtype if dtype in ("int64", "float64") else None)
    return ShapePlan(fixed, Plan(inputs, outputs), nhwc, notes)


def _row(feed: Feed, batch_inputs: Sequence[str], repeat: int = 1) -> Feed:
    return {n: np.repeat(a[:1], repeat, axis=0) if n in batch_inputs else a for n, a in feed.items()}


def _output_batch_axes(source: ModelSource) -> dict[str, int]:
    """Outputs whose axis 0 follows the input batch (one row vs two rows of the example)."""
    batch_inputs = [n for n in source.input_names if 0 in source.dynamic_axes.get(n, {})]
    one = source.reference(_row(source.example_inputs, batch_inputs, 1))
    two = source.reference(_row(source.example_inputs, batch_inputs, 2))
    return {n: 0 for n in source.output_names
            if one[n].ndim and two[n].ndim and one[n].shape[0] == 1 and two[n].shape[0] == 2}


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    a64, b64 = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a64.shape != b64.shape:
        return False
    limit = PAD_ATOL + PAD_RTOL * float(np.abs(a64).max(initial=0.0))
    den = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    cos = float(a64 @ b64) / den if den > 0 else 1.0
    return float(np.abs(a64 - b64).max(initial=0.0)) <= limit and cos >= PAD_MIN_COSINE


def _padding_is_safe(source: ModelSource, members: list[tuple[str, int]], fixed: dict[str, tuple[int, ...]]
                     ) -> tuple[bool, dict[str, int], str]:
    """Run the PyTorch model on the example and on the example padded with zeros on this axis;
    padding is safe when every output, cut back to the original length, is unchanged."""
    examples = source.example_inputs
    name0, axis0 = members[0]
    length = examples[name0].shape[axis0]
    target = max(fixed[name0][axis0], length + 1)
    padded = dict(examples)
    for name, axis in members:
        widths = [(0, 0)] * examples[name].ndim
        widths[axis] = (0, target - examples[name].shape[axis])
        padded[name] = np.pad(examples[name], widths, constant_values=PAD_VALUE)
    try:
        base, more = source.reference(examples), source.reference(padded)
    except Exception as e:  # the model refuses the longer input (e.g. past its position table)
        return False, {}, f"not padded: the model fails on a padded input ({type(e).__name__})"
    crop: dict[str, int] = {}
    for out in source.output_names:
        a, b = base[out], more[out]
        diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
        if len(diff) > 1 or a.ndim != b.ndim:
            return False, {}, f"not padded: output {out!r} changes shape on several axes"
        if diff:
            if (a.shape[diff[0]], b.shape[diff[0]]) != (length, target):
                return False, {}, f"not padded: output {out!r} does not follow the padded length"
            crop[out] = diff[0]
            b = np.take(b, np.arange(length), axis=diff[0])
        if not _close(a, b):
            return False, {}, f"not padded: output {out!r} changes when the input is padded"
    return True, crop, f"padded with {PAD_VALUE} up to the fixed size (checked: outputs unchanged)"


def exportable(source: ModelSource, nhwc: Sequence[str]) -> Any:
    """An ``nn.Module`` taking the inputs by keyword (their names become the TFLite signature's)
    and returning a dict of outputs by name; NHWC inputs are permuted back to NCHW inside."""
    import torch

    names, outs, channel_last = list(source.input_names), list(source.output_names), set(nhwc)

    class Exportable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = source.module

        def forward(self, **kw: torch.Tensor) -> dict[str, torch.Tensor]:
            args = [kw[n].permute(0, 3, 1, 2) if n in channel_last else kw[n] for n in names]
            return dict(zip(outs, self.inner(*args)))

    module = Exportable()
    module.training = False  # not .eval(): a .pt2 source's module refuses train()/eval()
    return module


def sample(source: ModelSource, shapes: ShapePlan) -> Feed:
    """One export sample of exactly the fixed shapes, from the example's first rows."""
    out = {}
    for name in source.input_names:
        arr = source.example_inputs[name]
        want = shapes.fixed[name]
        p = shapes.plan.inputs[name]
        if p.batch_axis == 0:
            arr = np.take(arr, np.minimum(np.arange(want[0]), arr.shape[0] - 1), axis=0)
        if p.pad_axis is not None and arr.shape[p.pad_axis] < want[p.pad_axis]:  # never channel-last
            widths = [(0, 0)] * arr.ndim
            widths[p.pad_axis] = (0, want[p.pad_axis] - arr.shape[p.pad_axis])
            arr = np.pad(arr, widths, constant_values=p.pad_value)
        if arr.shape != want:  # the user fixed other sizes: tracing only needs the shape and dtype
            arr = np.ones(want, arr.dtype) if arr.dtype.kind in "iub" else np.zeros(want, arr.dtype)
        out[name] = arr
    return {n: np.transpose(a, (0, 2, 3, 1)) if n in shapes.nhwc else a for n, a in out.items()}


def to_torch(feed: Feed) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}


def check_traceable(e: Exception, source: ModelSource) -> ExportError:
    return ExportError(f"litert-torch could not convert {source.name}: {first_line(e)}",
                       fix="make forward() traceable by torch.export (no data-dependent control flow), "
                       "or replace the operator LiteRT lacks; fixed shapes: -O tflite.input_shapes=...")
