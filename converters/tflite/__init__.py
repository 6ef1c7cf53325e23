"""TFLite (LiteRT): litert-torch from PyTorch through ``torch.export`` (no TensorFlow), then each
precision by the route that works for the model.

- ``fp32``: ``litert_torch.convert`` on a fixed-shape export (see ``_tflite_export``).
- ``fp16``: fp16 weights, fp32 compute (ai-edge-quantizer float casting with explicit dequantize).
- ``int8-dynamic``: int8 weights, float activations quantized on the fly. ai-edge-quantizer's
  ``dynamic_wi8_afp32`` first: PT2E dynamic int8 builds models that LiteRT refuses at run time
  on embedding lookups (``EMBEDDING_LOOKUP ... zero_point == 0``).
- ``int8``: full integer, activations calibrated on ``--calib`` data. PT2E static int8 first
  (litert-torch's quantizer): ai-edge-quantizer's static recipe kept a transformer encoder's
  logits at cosine 0.63-0.74 where PT2E kept 0.998. Float I/O by default (a QUANTIZE op after each
  float input, a DEQUANTIZE op before each output); ``int8_io=true`` keeps int8 I/O tensors.

``auto`` routes are tried in order; each candidate runs once in a fresh process on the example and
a few calibration samples (a route that builds but fails or aborts at run time is skipped) and is
kept when its worst cosine to PyTorch reaches ``route_min_cosine``, else the best one is kept. The
manifest records every attempt (``conversion.attempts``) and the chosen ``route``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgekit.converters import CONVERTERS, BuildContext, Built, Converter
from edgekit.converters.tflite import export as tx
from edgekit.errors import CalibrationError, ConfigError, EdgekitError, QuantizationError
from edgekit.optimize.bits import fractions
from edgekit.optimize.int8_prep import CalibrationOptions
from edgekit.quiet import quiet as _quiet
from edgekit.types import Format, Precision

ROUTE_CHOICES = ("auto", "pt2e", "aeq")
LAYOUTS = ("nchw", "nhwc")
SMOKE_SAMPLES = 8  # calibration samples run (with the example) when choosing among routes


@dataclass(frozen=True)
class TfliteOptions(CalibrationOptions):
    """Options of the TFLite converter (``-O tflite.name=value`` on the command line); the
    accuracy-aware int8 loop's options come from :class:`~edgekit.optimize.int8_loop.AccuracyOptions`."""

    # fixed input shapes, e.g. "input_ids=1x128;attention_mask=1x128" (default: the example's)
    input_shapes: Mapping[str, Sequence[int]] | str | None = None
    batch_size: int = 1  # fixed batch of the graph; the runtime runs any batch in chunks of it
    layout: str = "nchw"  # nhwc: image inputs channel-last (what mobile camera pipelines feed)
    pad_sequences: bool = True  # let the runtime pad shorter sequences where that was checked safe
    int8_io: bool = False  # int8: keep int8 input/output tensors instead of float I/O
    int8_route: str = "auto"  # auto (pt2e, then aeq) | pt2e | aeq
    int8_dynamic_route: str = "auto"  # auto (aeq, then pt2e) | aeq | pt2e
    per_channel: bool = True  # PT2E int8 weights per output channel
    calibration_samples: int = 128
    route_min_cosine: float = 0.99  # auto: first route at or above this worst cosine is kept
    exclude_layers: tuple[str, ...] = ()  # PyTorch layer names kept in float (mapped to op scopes, checked)
    exclude_scopes: tuple[str, ...] = ()  # ai-edge-quantizer op-scope regexes kept in float

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "input_shapes", tx.parse_shapes(self.input_shapes) or None)
        object.__setattr__(self, "layout", str(self.layout).strip().lower())
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {self.layout!r}", fix=f"use one of: {', '.join(LAYOUTS)}")
        for name in ("int8_route", "int8_dynamic_route"):
            if getattr(self, name) not in ROUTE_CHOICES:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}",
                                  fix=f"use one of: {', '.join(ROUTE_CHOICES)}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}", fix="use batch_size=1")
        if self.calibration_samples < 1:
            raise ConfigError("calibration_samples must be at least 1", fix="use e.g. 128")
        if not -1.0 <= self.route_min_cosine <= 1.0:
            raise ConfigError("route_min_cosine must lie in [-1, 1]", fix="use e.g. 0.99")


@dataclass
class Base:
    """The fixed-shape export every precision starts from."""

    shapes: tx.ShapePlan
    module: Any  # the keyword-input nn.Module litert-torch converts
    sample: dict[str, np.ndarray]  # one input of exactly the fixed shapes, model layout
    fp32: Path
    fp32_bytes: bytes = b""
    exclusions: Any = field(default=None)  # an _exclusions_tflite.TfliteExclusions when asked for


RouteFn = Callable[[Base, BuildContext], bytes]


@dataclass(frozen=True)
class Route:
    name: str
    describe: str
    fn: RouteFn


ROUTES: dict[Precision, dict[str, Route]] = {}
# the order ``auto`` tries routes in; see the module docstring for why
AUTO_ORDER: dict[Precision, tuple[str, ...]] = {
    Precision.FP32: ("litert-torch",),
    Precision.FP16: ("aeq",),
    Precision.INT8_DYNAMIC: ("aeq", "pt2e"),
    Precision.INT8: ("pt2e", "aeq"),
}


def route(precision: Precision, name: str, describe: str) -> Callable[[RouteFn], RouteFn]:
    def deco(fn: RouteFn) -> RouteFn:
        ROUTES.setdefault(precision, {})[name] = Route(name, describe, fn)
        return fn

    return deco


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """litert-torch, MLIR passes, absl and the quantizer print to Python streams, the logging
    module and the raw file descriptors; the library must not print."""
    from edgekit.runtimes.litert.plan import native_output

    env = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    try:
        with _quiet("", "absl", "litert_torch", "torch", "torchao", "jax"), native_output():
            yield
    finally:
        if env is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = env


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


@CONVERTERS.register(Format.TFLITE)
class TfliteConverter(Converter):
    format = Format.TFLITE
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8_DYNAMIC, Precision.INT8)
    suffix = ".tflite"
    extra = "convert"
    requires = ("torch", "litert_torch", "ai_edge_quantizer", "ai_edge_litert")
    distributions = ("torch", "litert-torch", "ai-edge-litert", "ai-edge-quantizer")
    Options = TfliteOptions
    # verification runs the file in a process that never imported torch or litert-torch, feeding
    # the PyTorch layout (NCHW) and without a crash probe (that process is the probe)
    verify_options: ClassVar[dict[str, Any]] = {"probe": False, "feed_layout": "nchw"}
    verify_isolated = True

    def needs_calibration(self, precision: Precision) -> bool:
        return precision is Precision.INT8

    def check(self, precisions: list[Precision]) -> None:
        with quiet():  # the base check imports litert-torch, whose import logs (jax, torchao)
            super().check(precisions)

    # -- export --------------------------------------------------------------------------
    def native_exclusions(self, base: Base) -> dict[str, Any]:
        return {"exclude_scopes": base.exclusions.regexes() if base.exclusions else []}

    def with_exclusions(self, base: Base, layers: list[str], ctx: BuildContext) -> Base:
        from dataclasses import replace

        from edgekit.converters.tflite.exclusions import plan

        opts: TfliteOptions = ctx.options
        return replace(base, exclusions=plan(ctx.source, base.fp32_bytes, layers, opts.exclude_scopes, base.module))

    def export(self, ctx: BuildContext) -> Base:
        from edgekit.optimize.exclusions import resolve

        opts: TfliteOptions = ctx.options
        src = ctx.source
        excluded = resolve(src, opts.exclude_layers)
        ctx.report("export to TFLite", 0, 2)
        shapes = tx.plan_shapes(src, ctx.calibration, input_shapes=tx.parse_shapes(opts.input_shapes),
                                batch_size=opts.batch_size, layout=opts.layout, pad=opts.pad_sequences)
        module = tx.exportable(src, shapes.nhwc)
        sample = tx.sample(src, shapes)
        ctx.report("export to TFLite", 1, 2)
        try:
            with quiet():  # importing litert-torch (jax, torchao) logs to the descriptors too
                import litert_torch

                edge = litert_torch.convert(module, sample_kwargs=tx.to_torch(sample))
                data = bytes(edge.model_content())
        except EdgekitError:
            raise
        except Exception as e:  # torch.export and the MLIR lowering raise many types
            raise tx.check_traceable(e, src) from e
        fp32 = ctx.workdir / "base-fp32.tflite"
        fp32.write_bytes(data)
        ctx.report("export to TFLite", 2, 2)
        exclusions = None
        if excluded or opts.exclude_scopes:
            from edgekit.converters.tflite.exclusions import plan

            exclusions = plan(src, data, excluded, opts.exclude_scopes, module)
        return Base(shapes, module, sample, fp32, data, exclusions)

    # -- precisions ----------------------------------------------------------------------
    def _candidates(self, precision: Precision, opts: TfliteOptions) -> list[str]:
        forced = {Precision.INT8: opts.int8_route, Precision.INT8_DYNAMIC: opts.int8_dynamic_route}.get(precision)
        if forced and forced != "auto":
            return [forced]
        return list(AUTO_ORDER[precision])

    def build(self, base: Base, precision: Precision, stem: str, ctx: BuildContext) -> Built:
        opts: TfliteOptions = ctx.options
        out = ctx.workdir / f"{stem}{self.suffix}"
        names = self._candidates(precision, opts)
        attempts: list[dict[str, Any]] = []
        best: tuple[float, str, bytes, dict[str, Any]] | None = None
        for name in names:
            r = ROUTES[precision][name]
            try:
                with quiet():
                    raw = r.fn(base, ctx)
                    data, io_note = self._finish(raw, base, precision, opts)
                    if base.exclusions is not None and base.exclusions.layers:  # a route that ignored them fails
                        check = base.exclusions.check(data)
                        io_note = {**io_note, "exclusions": check.to_dict()}
                        check.raise_if_missing(self.format.value, precision.value)
            except CalibrationError:
                raise
            except Exception as e:  # a quantizer's own failure: record it, try the next route
                attempts.append({"route": name, "status": "failed", "reason": _first(e)})
                continue
            if len(names) == 1:
                best = (1.0, name, data, io_note)
                break
            out.write_bytes(data)
            try:
                cosine = self._smoke(out, base, ctx)
            except EdgekitError as e:
                attempts.append({"route": name, "status": "failed at run time", "reason": e.problem})
                continue
            attempts.append({"route": name, "status": "ok", "worst_cosine": round(cosine, 6)})
            if best is None or cosine > best[0]:
                best = (cosine, name, data, io_note)
            if cosine >= opts.route_min_cosine:
                break
        if best is None:
            tried = "; ".join(f"{a['route']}: {a['reason']}" for a in attempts)
            raise QuantizationError(f"no {precision.value} route worked for {ctx.source.name} ({tried})",
                                    fix="try another precision; for int8 check the calibration data, or "
                                    "force a route with -O tflite.int8_route=pt2e|aeq")
        _, chosen, data, io_note = best
        out.write_bytes(data)
        from edgekit.converters.tflite import flatbuffer as fb

        details: dict[str, Any] = {
            "route_key": chosen, **fb.summary(data), **io_note,
            "quantized_fraction": fractions(fb.weight_bits(data)),
            "static_shapes": {n: list(base.shapes.model_shape(n)) for n in base.shapes.fixed},
            "layout": opts.layout, "runtime_plan": base.shapes.plan.to_dict(),
            "padding": base.shapes.notes}
        if attempts:
            details["attempts"] = attempts
        if precision is Precision.INT8:
            details["calibration"] = {"samples": min(opts.calibration_samples, ctx.calibration.size)
                                      if ctx.calibration else 0,
                                      "data": ctx.calibration.origin if ctx.calibration else None}
        return Built(out, [], ROUTES[precision][chosen].describe, details)

    def _finish(self, raw: bytes, base: Base, precision: Precision, opts: TfliteOptions
                ) -> tuple[bytes, dict[str, Any]]:
        """Float I/O around an int8 graph (unless int8_io), then the runtime plan as metadata."""
        from edgekit.converters.tflite import flatbuffer as fb
        from edgekit.runtimes.litert.plan import METADATA_NAME

        note: dict[str, Any] = {}
        if precision is Precision.INT8:
            if opts.int8_io:
                note["int8_io"] = True
            else:
                plan = base.shapes.plan
                floats = {n for n, p in plan.inputs.items()
                          if base.sample[n].dtype.kind == "f"} | set(plan.outputs)
                raw, changed = fb.float_io(raw, floats)
                note["float_io_added"] = changed
        return fb.add_metadata(raw, METADATA_NAME, base.shapes.plan.to_json()), note

    def _smoke(self, path: Path, base: Base, ctx: BuildContext) -> float:
        """Run a candidate in a fresh process on the example and a few calibration samples;
        returns the worst per-sample cosine of its float outputs to PyTorch's."""
        from edgekit.isolation import run_isolated

        src = ctx.source
        feeds = [dict(src.example_inputs)]
        if ctx.calibration is not None:
            feeds += list(ctx.calibration.take(SMOKE_SAMPLES).batches(SMOKE_SAMPLES))
        got, _ = run_isolated(path, feeds, device="cpu", **self.verify_options)
        worst = 1.0
        for feed, out in zip(feeds, got):
            ref = src.reference(feed)
            for name, expected in ref.items():
                if expected.dtype.kind != "f":
                    continue
                e = np.asarray(expected, np.float64).reshape(len(expected), -1)
                g = np.asarray(out[name], np.float64).reshape(len(expected), -1)
                if not np.isfinite(g).all():
                    return -1.0
                den = np.linalg.norm(e, axis=1) * np.linalg.norm(g, axis=1)
                cos = np.where(den > 0, (e * g).sum(1) / np.maximum(den, 1e-30), 1.0)
                worst = min(worst, float(cos.min()))
        return worst


# -- routes ------------------------------------------------------------------------------------
def _calibration_rows(base: Base, ctx: BuildContext) -> list[dict[str, np.ndarray]]:
    opts: TfliteOptions = ctx.options
    if ctx.calibration is None:
        raise CalibrationError("int8 on tflite needs calibration data",
                               fix="pass --calib data.npz (or a text file for a HF text model), or ask for "
                               "int8-dynamic instead")
    rows = base.shapes.rows(ctx.calibration, opts.calibration_samples, "calibration")
    if not rows:
        raise CalibrationError(f"the calibration data has fewer samples than the fixed batch "
                               f"({opts.batch_size})", fix="give more samples, or use -O tflite.batch_size=1")
    return rows


def _aeq(base: Base, recipe: Any, calibration: list[dict[str, np.ndarray]] | None = None) -> bytes:
    from ai_edge_quantizer import quantizer

    if base.exclusions is not None:
        recipe = base.exclusions.recipe(recipe)
    qt = quantizer.Quantizer(bytearray(base.fp32_bytes), recipe)
    result = None
    if qt.need_calibration:
        feeds = [{k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in row.items()}
                 for row in calibration or []]
        result = qt.calibrate({"serving_default": feeds}, num_threads=max(1, os.cpu_count() or 1))
    return bytes(qt.quantize(result, enable_progress_report=False).quantized_model)


def _pt2e(base: Base, ctx: BuildContext, *, dynamic: bool) -> bytes:
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    opts: TfliteOptions = ctx.options
    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=opts.per_channel, is_dynamic=dynamic))
    sample = tx.to_torch(base.sample)
    graph = torch.export.export(base.module, (), sample, strict=False).module()
    if base.exclusions is not None:
        base.exclusions.skip_in_pt2e(quantizer, graph)
    graph = prepare_pt2e(graph, quantizer)
    rows = [sample] if dynamic else [tx.to_torch(r) for r in _calibration_rows(base, ctx)]
    with torch.inference_mode():
        for i, row in enumerate(rows):
            graph(**row)
            ctx.report("calibrate int8", i + 1, len(rows))
    graph = convert_pt2e(graph, fold_quantize=False)
    edge = litert_torch.convert(graph, sample_kwargs=sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return bytes(edge.model_content())


@route(Precision.FP32, "litert-torch", "torch.export + litert-torch (fixed shapes)")
def _fp32(base: Base, ctx: BuildContext) -> bytes:
    return base.fp32_bytes


# fp16 weights, fp32 compute: ai-edge-quantizer's float casting, dequantized explicitly
FP16_RECIPE = [{"regex": ".*", "operation": "*", "algorithm_key": "float_casting",
                "op_config": {"weight_tensor_config": {"num_bits": 16, "dtype": "FLOAT"},
                              "compute_precision": "FLOAT", "explicit_dequantize": True}}]


@route(Precision.FP16, "aeq", "ai-edge-quantizer float_casting (fp16 weights, fp32 compute)")
def _fp16(base: Base, ctx: BuildContext) -> bytes:
    return _aeq(base, FP16_RECIPE)


@route(Precision.INT8_DYNAMIC, "aeq", "ai-edge-quantizer dynamic_wi8_afp32 (int8 weights per channel, "
       "activations quantized at run time)")
def _int8_dynamic_aeq(base: Base, ctx: BuildContext) -> bytes:
    from ai_edge_quantizer import recipe

    return _aeq(base, recipe.dynamic_wi8_afp32())


@route(Precision.INT8_DYNAMIC, "pt2e", "litert-torch PT2E dynamic int8 (int8 weights, dynamic activations)")
def _int8_dynamic_pt2e(base: Base, ctx: BuildContext) -> bytes:
    return _pt2e(base, ctx, dynamic=True)


@route(Precision.INT8, "pt2e", "litert-torch PT2E static int8 (int8 weights and activations, calibrated)")
def _int8_pt2e(base: Base, ctx: BuildContext) -> bytes:
    return _pt2e(base, ctx, dynamic=False)


@route(Precision.INT8, "aeq", "ai-edge-quantizer static_wi8_ai8 (int8 weights and activations, calibrated)")
def _int8_aeq(base: Base, ctx: BuildContext) -> bytes:
    from ai_edge_quantizer import recipe

    return _aeq(base, recipe.static_wi8_ai8(), _calibration_rows(base, ctx))

