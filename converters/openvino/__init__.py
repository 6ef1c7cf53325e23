"""OpenVINO IR: torch.export, then ``openvino.convert_model``, then NNCF for each precision.

fp32 is the converted graph (dynamic axes kept); fp16 stores weights in half precision
(``save_model(compress_to_fp16=True)``); int8 is NNCF post-training quantization
(``nncf.quantize``, or ``nncf.quantize_with_accuracy_control`` with labelled data and
``max_accuracy_drop``); int8-weights and int4 are NNCF weight compression
(``nncf.compress_weights``: INT8_ASYM; INT4_ASYM by groups, or INT4_SYM, embeddings and the last layer
kept at 8 bit unless ``int4_all_layers``). Each variant is ``<stem>.xml`` plus ``<stem>.bin``.

OpenVINO computes in bf16 by default on CPUs that have it; verification runs every variant with
an ``f32`` precision hint, and the manifest's ``runtime_hints`` tell the runtime which hint to use.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgekit.converters import CONVERTERS, BuildContext, Built, Converter
from edgekit.errors import CalibrationError, ConfigError, ExportError, QuantizationError
from edgekit.optimize.bits import fractions
from edgekit.optimize.int8_prep import CalibrationOptions
from edgekit.quiet import quiet as _quiet
from edgekit.types import Format, Precision

PRESETS = ("auto", "performance", "mixed")
GROUP_FALLBACKS = ("adjust", "ignore", "error")  # nncf.GroupSizeFallbackMode
MODEL_TYPES = ("auto", "transformer", "generic")
DROP_TYPES = ("absolute", "relative")
RUNTIME_HINTS = ("f32", "bf16", "f16", "default")
# tasks whose models are transformers over token sequences (nncf's ModelType.TRANSFORMER)
TEXT_TASKS = frozenset({"text-classification", "token-classification", "fill-mask", "text-generation"})
VERIFY_HINT = "f32"


@dataclass(frozen=True)
class OpenVinoOptions(CalibrationOptions):
    """Options of the OpenVINO converter (``-O name=value``, or ``-O openvino.name=value``); the
    accuracy-aware int8 loop's options (``int8_target``, ``max_accuracy_drop``...) come from
    :class:`~edgekit.optimize.int8_loop.AccuracyOptions`. With ``max_accuracy_drop`` and labelled
    data, int8 first runs NNCF's own accuracy control, then edgekit's loop checks the result."""

    # int8: NNCF post-training quantization on the calibration data
    # performance: symmetric activations; mixed: asymmetric activations; auto: mixed for transformers
    # (optimum-intel's choice: a swap test reproduced its better MiniLM cosine with mixed), else performance
    preset: str = "auto"
    model_type: str = "auto"  # auto: transformer for text tasks or attention graphs; transformer; generic
    calibration_samples: int = 300  # NNCF's default subset size
    fast_bias_correction: bool = True
    nodes_to_exclude: tuple[str, ...] = ()  # OpenVINO node names kept in float (int8) or uncompressed
    exclude_layers: tuple[str, ...] = ()  # PyTorch layer names, mapped to OpenVINO op names and checked
    # NNCF accuracy control (with max_accuracy_drop and --eval): how the drop is measured
    accuracy_drop_type: str = "absolute"  # absolute (0.01 = one point) or relative (fraction)
    # int8-weights: NNCF weight compression
    int8_weights_symmetric: bool = False  # INT8_SYM instead of INT8_ASYM
    # int4: NNCF weight compression
    # INT4_ASYM (optimum-intel's choice): all-MiniLM-L6-v2 embedding cosine 0.954 vs INT4_SYM's 0.949
    # (worst 0.934 vs 0.925), same size, 1-2% slower (within noise; bench/int4.py); True: INT4_SYM
    int4_symmetric: bool = False
    int4_block_size: int = 128  # weights per quantization group; -1: one group per output channel
    # a layer whose input width int4_block_size does not divide (a 64- or 96-wide MLP): adjust (NNCF
    # takes the largest power of two >= 32 that divides it, else keeps the layer at 8 bit), ignore
    # (kept in float) or error (NNCF's "Failed to apply group-wise quantization")
    int4_group_fallback: str = "adjust"
    int4_ratio: float = 1.0  # share of the ratio-defining layers in 4 bit, the rest int8
    int4_all_layers: bool = False  # embeddings and the last layer in 4 bit too (default: 8 bit)
    int4_awq: bool = False  # data-aware: activation-aware scaling (needs calibration data)
    int4_scale_estimation: bool = False  # data-aware scale search (needs calibration data)
    # the precision hint the manifest tells the runtime to use (verification always runs f32)
    runtime_precision_hint: str = "f32"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value, allowed in (("preset", self.preset, PRESETS), ("model_type", self.model_type, MODEL_TYPES),
                                     ("accuracy_drop_type", self.accuracy_drop_type, DROP_TYPES),
                                     ("int4_group_fallback", self.int4_group_fallback, GROUP_FALLBACKS),
                                     ("runtime_precision_hint", self.runtime_precision_hint, RUNTIME_HINTS)):
            if value not in allowed:
                raise ConfigError(f"unknown {name} {value!r}", fix=f"use one of: {', '.join(allowed)}")
        if self.calibration_samples < 1:
            raise ConfigError("calibration_samples must be at least 1", fix="use e.g. 300")
        if self.int4_block_size != -1 and (self.int4_block_size < 16 or
                                           self.int4_block_size & (self.int4_block_size - 1)):
            raise ConfigError(f"int4_block_size must be a power of two >= 16 or -1, got {self.int4_block_size}",
                              fix="use 32, 64, 128 (the default) or -1 for per-channel")
        if not 0.0 < self.int4_ratio <= 1.0:
            raise ConfigError(f"int4_ratio must be in (0, 1], got {self.int4_ratio}",
                              fix="use e.g. 0.8 to keep the 20% most sensitive layers at 8 bit")


@dataclass
class Base:
    """The converted fp32 IR every precision starts from, and facts about it."""

    xml: Path
    transformer: bool
    transformer_reason: str
    modules: dict[str, str]  # torch.export node name (the start of OpenVINO's op names) -> module path
    layer_ops: dict[str, list[str]] = field(default_factory=dict)  # exclude_layers -> op names
    program: Any = None  # the ExportedProgram, to map more layers later (the int8 loop)


Builder = Callable[["OpenVinoConverter", Base, BuildContext], tuple[Any, str, dict[str, Any]]]
BUILDERS: dict[Precision, Builder] = {}


def builder(*precisions: Precision) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        for p in precisions:
            BUILDERS[p] = fn
        return fn

    return deco


def quiet() -> AbstractContextManager[None]:
    """NNCF prints tables and progress bars and logs at INFO; OpenVINO and torch warn."""
    return _quiet("nncf", "openvino", "torch", "torch.export", "root")


def _message(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(e).__name__])[0]


@CONVERTERS.register(Format.OPENVINO)
class OpenVinoConverter(Converter):
    format = Format.OPENVINO
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT8_WEIGHTS,
                  Precision.INT8_DYNAMIC, Precision.INT4)
    suffix = ".xml"
    extra = "convert"
    requires = ("torch", "openvino", "nncf")
    distributions = ("torch", "openvino", "nncf")
    Options = OpenVinoOptions
    verify_options = {"precision_hint": VERIFY_HINT}

    def needs_calibration(self, precision: Precision) -> bool:
        return precision is Precision.INT8

    # -- export --------------------------------------------------------------------------
    def native_exclusions(self, base: Base) -> dict[str, Any]:
        return {"nodes_to_exclude": [n for found in base.layer_ops.values() for n in found]}

    def with_exclusions(self, base: Base, layers: list[str], ctx: BuildContext) -> Base:
        from edgekit.converters.openvino import exclusions as excl

        return replace(base, layer_ops=excl.layer_ops(_read(base), base.program, ctx.source, layers))

    def export(self, ctx: BuildContext) -> Base:
        import openvino as ov

        from edgekit.converters.openvino import exclusions as excl
        from edgekit.converters.openvino import graph
        from edgekit.optimize.exclusions import resolve

        _check_data(ctx)
        excluded = resolve(ctx.source, ctx.options.exclude_layers)
        ctx.report("export to OpenVINO", 0, 2)
        with quiet():
            program = ctx.source.export()
        ctx.report("export to OpenVINO", 1, 2)
        src = ctx.source
        try:
            with quiet():
                model = ov.convert_model(program)
        except Exception as e:  # the PyTorch frontend raises OpConversionFailure, RuntimeError, ...
            raise ExportError(f"openvino.convert_model could not convert {src.name}: {_message(e)}",
                              fix="check that every operator is supported by OpenVINO's PyTorch frontend, "
                              "or export to ONNX and load that with runtime='openvino'") from e
        if len(model.inputs) != len(src.input_names) or len(model.outputs) != len(src.output_names):
            raise ExportError(f"the OpenVINO model has {len(model.inputs)} inputs and {len(model.outputs)} "
                              f"outputs, the source {len(src.input_names)} and {len(src.output_names)}",
                              fix="return a flat tuple of tensors from forward() and take tensors only")
        for port, name in zip(model.inputs, src.input_names):
            port.get_tensor().set_names({name})
        for port, name in zip(model.outputs, src.output_names):
            port.get_tensor().set_names({name})
        graph.set_axis_names(model, src.dynamic_axes)
        graph.fix_static_axes(model, src.example_inputs, src.dynamic_axes)
        xml = ctx.workdir / "base.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        transformer, reason = _model_type(ctx)
        ctx.report("export to OpenVINO", 2, 2)
        layer_ops = excl.layer_ops(model, program, src, excluded) if excluded else {}
        return Base(xml, transformer, reason, graph.module_paths(program), layer_ops, program)

    # -- precisions ----------------------------------------------------------------------
    def build(self, base: Base, precision: Precision, stem: str, ctx: BuildContext) -> Built:
        import openvino as ov

        from edgekit.converters.openvino import graph

        opts: OpenVinoOptions = ctx.options
        out = ctx.workdir / f"{stem}{self.suffix}"
        if base.layer_ops:  # exclude_layers: their ops join nodes_to_exclude (NNCF's ignored scope)
            mapped = tuple(n for found in base.layer_ops.values() for n in found)
            ctx = replace(ctx, options=replace(opts, nodes_to_exclude=(*opts.nodes_to_exclude, *mapped)))
        try:
            with quiet():
                model, route, details = BUILDERS[precision](self, base, ctx)
                graph.set_axis_names(model, ctx.source.dynamic_axes)
                graph.set_precision_hint(model, None if opts.runtime_precision_hint == "default"
                                         else opts.runtime_precision_hint)
                ov.save_model(model, str(out), compress_to_fp16=bool(details.get("compress_to_fp16")))
        except (CalibrationError, QuantizationError, ConfigError):
            raise
        except Exception as e:
            raise QuantizationError(f"{precision.value} conversion of {ctx.source.name} to OpenVINO failed: "
                                    f"{_message(e)}",
                                    fix="try another precision, or keep the failing nodes in float with "
                                    "-O openvino.nodes_to_exclude=NAME,...") from e
        saved = ov.Core().read_model(str(out))
        details.update(ops=graph.op_counts(saved), weight_types=graph.weight_types(saved),
                       quantized_fraction=fractions(graph.weight_bits(saved)),
                       verification_precision_hint=VERIFY_HINT)
        if base.layer_ops:
            from edgekit.converters.openvino import exclusions as excl

            check = excl.check(saved, base.layer_ops)
            details["exclusions"] = check.to_dict()
            check.raise_if_missing(self.format.value, precision.value)
        hints = {} if opts.runtime_precision_hint == "default" else {"precision_hint": opts.runtime_precision_hint}
        return Built(out, [out.with_suffix(".bin")], route, details, runtime_hints=hints)


def _check_data(ctx: BuildContext) -> None:
    """Fail before any work when an option needs data the conversion was not given."""
    opts: OpenVinoOptions = ctx.options
    if opts.max_accuracy_drop is not None and ctx.evaluation is None:
        raise CalibrationError(f"max_accuracy_drop={opts.max_accuracy_drop} needs labelled evaluation data",
                               fix="pass --eval data.npz (the inputs plus 'labels'), or drop -O max_accuracy_drop")
    if (opts.int4_awq or opts.int4_scale_estimation) and ctx.calibration is None:
        raise CalibrationError("int4_awq and int4_scale_estimation need calibration data",
                               fix="pass --calib data.npz (or a text file for a Hugging Face text model)")


def _model_type(ctx: BuildContext) -> tuple[bool, str]:
    """NNCF's transformer mode (SmoothQuant, attention-aware quantizer placement) for text models."""
    choice = ctx.options.model_type
    if choice != "auto":
        return choice == "transformer", f"model_type={choice}"
    if ctx.source.task in TEXT_TASKS or ctx.source.tokenize is not None:
        return True, f"auto: text model (task {ctx.source.task or 'with a tokenizer'})"
    return False, "auto: not a text task (pass -O openvino.model_type=transformer to override)"


def _read(base: Base) -> Any:
    import openvino as ov

    return ov.Core().read_model(str(base.xml))


def _ignored(ctx: BuildContext) -> Any:
    import nncf

    names = list(ctx.options.nodes_to_exclude)
    return nncf.IgnoredScope(names=names) if names else None


def _dataset(ctx: BuildContext, limit: int, purpose: str) -> tuple[Any, int]:
    import nncf

    cal = ctx.calibration
    if cal is None:
        raise CalibrationError(f"{purpose} on openvino needs calibration data",
                               fix="pass --calib data.npz (or a text file for a Hugging Face text model)")
    items = list(cal.take(limit).batches(1))
    return nncf.Dataset(items), len(items)


@builder(Precision.FP32)
def _fp32(conv: OpenVinoConverter, base: Base, ctx: BuildContext) -> tuple[Any, str, dict[str, Any]]:
    return _read(base), "torch.export + openvino.convert_model", {}


@builder(Precision.FP16)
def _fp16(conv: OpenVinoConverter, base: Base, ctx: BuildContext) -> tuple[Any, str, dict[str, Any]]:
    # saved with compress_to_fp16: f16 weight constants, each followed by a
    # Convert to f32, so inputs, outputs and compute stay f32 (or what the precision hint says)
    return _read(base), "torch.export + openvino.convert_model, weights saved as fp16", {"compress_to_fp16": True}


@builder(Precision.INT8)
def _int8(conv: OpenVinoConverter, base: Base, ctx: BuildContext) -> tuple[Any, str, dict[str, Any]]:
    import nncf

    opts: OpenVinoOptions = ctx.options
    preset = opts.preset if opts.preset != "auto" else "mixed" if base.transformer else "performance"
    dataset, n = _dataset(ctx, opts.calibration_samples, "int8")
    kwargs: dict[str, Any] = dict(
        preset=nncf.QuantizationPreset(preset), subset_size=n,
        fast_bias_correction=opts.fast_bias_correction,
        model_type=nncf.ModelType.TRANSFORMER if base.transformer else None, ignored_scope=_ignored(ctx))
    details: dict[str, Any] = {
        "calibration": {"samples": n, "data": ctx.calibration.origin if ctx.calibration else None},
        "preset": preset, "model_type": "transformer" if base.transformer else "generic",
        "model_type_reason": base.transformer_reason}
    if opts.max_accuracy_drop is not None:
        from edgekit.converters.openvino.accuracy import quantize_with_accuracy_control

        model, control = quantize_with_accuracy_control(_read(base), dataset, ctx, kwargs, base.modules)
        details["accuracy_control"] = control
        return model, "nncf.quantize_with_accuracy_control (int8, layers reverted to float to fit the drop)", details
    model = nncf.quantize(_read(base), dataset, **kwargs)
    return model, f"nncf.quantize (int8 weights and activations, {preset} preset)", details


@builder(Precision.INT8_WEIGHTS, Precision.INT8_DYNAMIC)
def _int8_weights(conv: OpenVinoConverter, base: Base, ctx: BuildContext) -> tuple[Any, str, dict[str, Any]]:
    import nncf

    opts: OpenVinoOptions = ctx.options
    mode = nncf.CompressWeightsMode.INT8_SYM if opts.int8_weights_symmetric else nncf.CompressWeightsMode.INT8_ASYM
    model = nncf.compress_weights(_read(base), mode=mode, ignored_scope=_ignored(ctx))
    return model, (f"nncf.compress_weights ({mode.value}, per channel; the CPU plugin quantizes "
                   "activations at run time)"), {"mode": mode.value}


@builder(Precision.INT4)
def _int4(conv: OpenVinoConverter, base: Base, ctx: BuildContext) -> tuple[Any, str, dict[str, Any]]:
    import nncf

    from edgekit.converters.openvino.graph import group_sizes

    opts: OpenVinoOptions = ctx.options
    mode = nncf.CompressWeightsMode.INT4_SYM if opts.int4_symmetric else nncf.CompressWeightsMode.INT4_ASYM
    data_aware = opts.int4_awq or opts.int4_scale_estimation
    dataset, n = _dataset(ctx, opts.calibration_samples, "int4 with int4_awq/int4_scale_estimation") if data_aware else (None, 0)
    fallback = nncf.GroupSizeFallbackMode(opts.int4_group_fallback)
    kwargs: dict[str, Any] = dict(mode=mode, group_size=opts.int4_block_size, ratio=opts.int4_ratio,
                                  all_layers=opts.int4_all_layers, ignored_scope=_ignored(ctx),
                                  advanced_parameters=nncf.AdvancedCompressionParameters(
                                      group_size_fallback_mode=fallback))
    if data_aware:
        kwargs.update(dataset=dataset, subset_size=n, awq=opts.int4_awq,
                      scale_estimation=opts.int4_scale_estimation)
    try:
        model = nncf.compress_weights(_read(base), **kwargs)
    except nncf.InvalidGroupSizeError as e:  # int4_group_fallback=error on a narrow layer
        raise QuantizationError(f"int4 of {ctx.source.name}: {_message(e)} (a layer's input width is not a "
                                f"multiple of int4_block_size={opts.int4_block_size})",
                                fix="use -O openvino.int4_group_fallback=adjust (the default) or a smaller "
                                "-O openvino.int4_block_size") from e
    details = {"mode": mode.value, "group_size": opts.int4_block_size, "ratio": opts.int4_ratio,
               "all_layers": opts.int4_all_layers, "group_fallback": fallback.value,
               # 4-bit weight tensors per group size actually used (-1: per output channel)
               "group_sizes": group_sizes(model),
               "backup": "embeddings and last layer int8_asym" if not opts.int4_all_layers else None}
    if data_aware:
        details["calibration"] = {"samples": n, "awq": opts.int4_awq,
                                  "scale_estimation": opts.int4_scale_estimation}
    adjusted = sorted(set(details["group_sizes"]) - {str(opts.int4_block_size)}, key=int)
    return model, (f"nncf.compress_weights ({mode.value}, group size {opts.int4_block_size}"
                   f"{'; ' + ', '.join(adjusted) + ' where a layer width needs it' if adjusted else ''})"), details
