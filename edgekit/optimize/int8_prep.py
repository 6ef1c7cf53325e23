"""Calibration fixes before static int8, the same on every format: the PyTorch module is copied,
its batch norms folded, cross-layer equalized (``int8_cle``) and its biases corrected for weight
rounding (``int8_bias_correction``), then exported again for the int8 build only; fp32 and the
other precisions keep the original export. What was applied goes into the manifest under
``conversion.int8_prep``. See :mod:`edgekit.optimize.equalize` and docs/int8.md for the figures.

>>> edgekit.convert(net, (x,), targets=["onnx"], precisions=["int8"], calib="c.npz",
...                 options={"onnx": {"int8_cle": True}})  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgekit.errors import ConfigError
from edgekit.optimize.int8_loop import AccuracyOptions

if TYPE_CHECKING:
    from edgekit.converters import BuildContext, Converter
    from edgekit.sources import ModelSource


@dataclass(frozen=True)
class CalibrationOptions(AccuracyOptions):
    """Static int8 calibration fixes shared by the converters (``-O int8_cle=true`` for every
    target, ``-O onnx.int8_cle=true`` for one), on top of the accuracy loop's options."""

    int8_cle: bool = False  # cross-layer equalization of conv -> (ReLU/ReLU6) -> conv pairs
    int8_bias_correction: bool = False  # subtract the mean output shift of weight rounding from biases
    int8_prep_samples: int = 64  # calibration samples that measure ReLU6 peaks and bias shifts

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.int8_prep_samples < 1:
            raise ConfigError("int8_prep_samples must be at least 1", fix="e.g. -O int8_prep_samples=64")


# the weight grid each format's static int8 quantizer rounds to: (qmax, per channel), or None where
# the quantizer corrects biases itself (NNCF's fast bias correction on OpenVINO)
WEIGHT_GRIDS: dict[str, Callable[[Any], tuple[int, bool] | None]] = {
    "onnx": lambda o: (64 if o.reduce_range else 127, o.per_channel),  # ORT: [-64, 64] with reduce_range
    "tflite": lambda o: (127, o.per_channel),  # PT2E symmetric int8: [-127, 127]
    "openvino": lambda o: None,
}


def wanted(opts: Any) -> bool:
    """Whether ``opts`` ask for any fix before static int8."""
    return bool(getattr(opts, "int8_cle", False) or getattr(opts, "int8_bias_correction", False))


def prepare(source: ModelSource, fmt: str, opts: Any, calibration: Any) -> tuple[ModelSource, dict[str, Any]]:
    """A copy of ``source`` with the fixes ``opts`` ask for, and the record of what was done."""
    import copy

    import torch

    from edgekit.optimize import equalize as eq

    record: dict[str, Any] = {"cle": opts.int8_cle, "bias_correction": opts.int8_bias_correction}
    if source.exported_program is not None or not isinstance(source.module, torch.nn.Module):
        return source, {**record, "applied": False, "reason": "a .pt2 source has no module to transform"}
    module = copy.deepcopy(source.module).eval()
    feeds = _feeds(source, calibration, opts.int8_prep_samples)
    record["samples"] = sum(len(f[0]) for f in feeds)
    record["batchnorm_folded"] = len(eq.fold_batchnorm(module))
    if opts.int8_cle:
        report = eq.equalize(module, feeds)
        record["cle"] = report.to_dict()
    if opts.int8_bias_correction:
        grid = WEIGHT_GRIDS.get(fmt, lambda o: None)(opts)
        if grid is None:
            record["bias_correction"] = {"applied": False, "reason": f"{fmt}'s quantizer corrects biases itself"}
        else:
            qmax, per_channel = grid
            shifts = eq.correct_bias(module, feeds, qmax, per_channel=per_channel, skip=opts.exclude_layers)
            record["bias_correction"] = {"layers": len(shifts), "weight_qmax": qmax, "per_channel": per_channel,
                                         "largest_shift": round(max(shifts.values(), default=0.0), 6)}
    changed = record["batchnorm_folded"] or (opts.int8_cle and record["cle"]["pairs"]) or \
        (isinstance(record["bias_correction"], dict) and record["bias_correction"].get("layers"))
    if not changed:  # e.g. a transformer: no batch norm, no conv pairs; the plain export serves
        return source, {**record, "applied": False, "reason": "nothing to fold, equalize or correct"}
    record["applied"] = True
    return dataclasses.replace(source, module=module), record


def _feeds(source: ModelSource, calibration: Any, limit: int) -> list[tuple]:
    import numpy as np
    import torch

    batches = [source.example_inputs] if calibration is None else calibration.take(limit).batches(16)
    return [tuple(torch.from_numpy(np.ascontiguousarray(b[n])) for n in source.input_names) for b in batches]


def prepared_base(conv: Converter, ctx: BuildContext) -> tuple[Any, BuildContext, dict[str, Any]]:
    """Export the prepared source with ``conv`` into ``ctx.workdir/int8-prep``: the base, the
    context and the record the static int8 build uses instead of the plain ones."""
    source, record = prepare(ctx.source, conv.format.value, ctx.options, ctx.calibration)
    if not record["applied"]:
        return None, ctx, record
    work = ctx.workdir / "int8-prep"
    work.mkdir(exist_ok=True)
    new_ctx = dataclasses.replace(ctx, source=source, workdir=work)
    return conv.export(new_ctx), new_ctx, record
