"""ONNX: torch's dynamo exporter, then ONNX Runtime's quantizers for each precision.

fp32 is the exported graph; fp16 converts weights (float I/O kept); int8-dynamic and int8
(static QDQ, per-channel, calibrated) use ``onnxruntime.quantization``; int4 is block-wise
weight-only ``MatMulNBits`` (and ``GatherBlockQuantized`` for embedding tables).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.converters import CONVERTERS, BuildContext, Built, Converter
from edgekit.converters.onnx import graph
from edgekit.errors import CalibrationError, ExportError, QuantizationError, first_line
from edgekit.optimize.bits import fractions
from edgekit.optimize.int8_prep import CalibrationOptions
from edgekit.quiet import quiet as _quiet
from edgekit.types import Format, Precision

# int8 activation ranges: minmax (the extremes over all samples), mean-minmax (the mean of each
# sample's extremes, NNCF's default for activations: one outlier sample no longer sets the range),
# entropy or percentile (ORT's histogram methods)
CALIBRATION_METHODS = ("minmax", "mean-minmax", "entropy", "percentile")
FUSIONS = ("onnx-attention", "ort", "none")
FUSION_DEFAULT = "none"
ATTENTION_OPSET = 23  # from this opset torch's exporter writes scaled_dot_product_attention as ONNX Attention


@dataclass(frozen=True)
class OnnxOptions(CalibrationOptions):
    """Options of the ONNX converter (``-O name=value`` on the command line); the accuracy-aware
    int8 loop's options come from :class:`~edgekit.optimize.int8_loop.AccuracyOptions`."""

    opset: int | None = None  # None: the exporter's default
    external_data_threshold: int = 1_800_000_000  # bytes of weights above which data goes to .data
    per_channel: bool = True  # int8 weights per output channel
    # int8 weights in [-64, 64] (7 bits): ORT's x86 int8 kernels without VNNI (AVX2, AVX-512F) add
    # u8 x s8 products in pairs into int16 (vpmaddubsw), which saturates for |w| > 64 and silently
    # corrupts outputs (a 3-layer MLP: worst cosine 0.94 on an AVX2 host, 0.9996 computed exactly). The
    # artifact may run on either, so the default is the range that is exact on every CPU.
    reduce_range: bool = True
    calibration: str = "minmax"  # int8 activation ranges: one of CALIBRATION_METHODS
    calibration_samples: int = 128
    int4_block_size: int = 32
    int4_symmetric: bool = True
    # MatMulNBits compute type: 0 unset (fp32, weights dequantized per call), 1 fp32, 2 fp16, 3 bf16,
    # 4 int8 activations. 4: all-MiniLM-L6-v2 int4 at 16 tokens 0.82x fp32's time (level 0: 1.11x), at
    # 48 0.99x (1.01x), at 128 1.04-1.06x (0.99-1.04x); held-out embedding cosine 0.9629 vs 0.9631
    # (bench/int4.py, an AVX2 host without VNNI; VNNI and ARM dot-product CPUs have faster int8 kernels)
    int4_accuracy_level: int = 4
    quantize_embeddings: bool = True  # int8-dynamic/int4 also quantize Gather (embedding tables)
    # static int8 quantizes these ops only: quantizing softmax, masked adds or layer norms too
    # cost a 2-layer encoder its agreement (cosine 0.80 -> 0.9998 with this list). Relu and Clip
    # (ReLU6) are listed so that ORT removes them after a quantized op and gives that op their
    # range; unlisted, each conv kept a DequantizeLinear -> QuantizeLinear requantization pair at
    # run time (the sample CNN's int8 took 1.3-1.6x fp32's time, now 1.05-1.16x: bench/int8_cnn.py)
    int8_op_types: tuple[str, ...] = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "Relu", "Clip")
    # fp32: "onnx-attention" exports again at opset 23, where scaled_dot_product_attention becomes the
    # standard ONNX Attention op (models that call it); "ort" swaps the exporter's decomposed attention,
    # LayerNorm and GELU for ONNX Runtime's fused operators (com.microsoft Attention,
    # SkipLayerNormalization, BiasGelu; onnxscript's ort_fusions) when an attention block fuses; "none"
    # keeps the exporter's graph. Other precisions start from the exporter's graph either way. Off by
    # default: on all-MiniLM-L6-v2 (AVX2, ORT 1.32) onnx-attention took 0.93-0.99x the plain graph's
    # CPU time and 0.95-1.01x Optimum's file, ort 0.90-1.00x at 2 threads but 1.01-1.06x at 1; neither
    # beat Optimum's file beyond noise, ONNX Attention needs ORT >= 1.23 (CPU kernel) and GPU/NPU
    # providers may run it on the CPU, com.microsoft ops tie the file to ORT (docs/benchmarks.md section 5)
    fp32_fusion: str = FUSION_DEFAULT
    nodes_to_exclude: tuple[str, ...] = ()
    # PyTorch layer names (encoder.layer.0.output.dense) kept in float: mapped to node names, checked
    exclude_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from edgekit.errors import ConfigError

        super().__post_init__()
        if self.calibration not in CALIBRATION_METHODS:
            raise ConfigError(f"unknown calibration method {self.calibration!r}",
                              fix=f"use one of {CALIBRATION_METHODS}")
        if self.fp32_fusion not in FUSIONS:
            raise ConfigError(f"unknown fp32_fusion {self.fp32_fusion!r}", fix=f"use one of {FUSIONS}")
        if self.int4_accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"int4_accuracy_level must be 0 to 4, got {self.int4_accuracy_level}",
                              fix="use 4 (int8 compute, the default) or 0 (unset: fp32 compute)")
        if self.int4_block_size < 16 or self.int4_block_size & (self.int4_block_size - 1):
            raise ConfigError(f"int4_block_size must be a power of two >= 16, got {self.int4_block_size}",
                              fix="use 16, 32, 64 or 128")
        if self.calibration_samples < 1:
            raise ConfigError("calibration_samples must be at least 1", fix="use e.g. 128")


@dataclass
class Base:
    """The exported fp32 graph and its quantization-ready copy."""

    fp32: Path
    prepared: Path  # Gemm rewritten to MatMul, intermediate shapes dropped
    external: bool
    gemm_rewritten: int
    layer_nodes: dict[str, list[str]] = field(default_factory=dict)  # exclude_layers -> node names
    all_layer_nodes: dict[str, list[str]] = field(default_factory=dict)  # every layer -> node names
    fused: Path | None = None  # fp32 with ONNX Runtime's fused transformer operators, when they applied
    fusion: dict[str, Any] = field(default_factory=dict)  # what the fusion did, or why it was not used


# the exporter's and quantizers' loggers
QUIET = ("onnxruntime", "onnxscript", "torch.onnx", "root")


def quiet() -> AbstractContextManager[None]:
    return _quiet(*QUIET)


Builder = Callable[["OnnxConverter", Base, Path, BuildContext], tuple[str, dict[str, Any]]]
BUILDERS: dict[Precision, Builder] = {}


def builder(precision: Precision) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        BUILDERS[precision] = fn
        return fn

    return deco


@CONVERTERS.register(Format.ONNX)
class OnnxConverter(Converter):
    format = Format.ONNX
    precisions = (Precision.FP32, Precision.FP16, Precision.INT8_DYNAMIC, Precision.INT8, Precision.INT4)
    suffix = ".onnx"
    extra = "convert"
    requires = ("torch", "onnx", "onnxscript", "onnxruntime")
    distributions = ("torch", "onnx", "onnxscript", "onnxruntime")
    Options = OnnxOptions

    def needs_calibration(self, precision: Precision) -> bool:
        return precision is Precision.INT8

    # -- export --------------------------------------------------------------------------
    def native_exclusions(self, base: Base) -> dict[str, Any]:
        return {"nodes_to_exclude": [n for found in base.layer_nodes.values() for n in found]}

    def with_exclusions(self, base: Base, layers: list[str], ctx: BuildContext) -> Base:
        # the exporter's metadata is gone from the saved graph: every layer was mapped at export
        return replace(base, layer_nodes={name: list(base.all_layer_nodes.get(name, [])) for name in layers})

    def export(self, ctx: BuildContext) -> Base:
        import onnx

        from edgekit.converters.onnx import exclusions as excl
        from edgekit.optimize.exclusions import find_layers, resolve

        opts: OnnxOptions = ctx.options
        excluded = resolve(ctx.source, opts.exclude_layers)
        fp32 = ctx.workdir / "base.onnx"
        ctx.report("export to ONNX", 0, 2)
        with quiet():
            program = ctx.source.export()
        ctx.report("export to ONNX", 1, 2)
        weight_bytes = sum(int(np.prod(t.shape)) * t.element_size() for t in program.state_dict.values())
        external = weight_bytes > opts.external_data_threshold
        with quiet():
            try:
                onnx_program = _to_onnx(program, ctx, opts)
            except Exception as e:
                raise _export_error(e, program) from e
            onnx_program.save(str(fp32), external_data=external)
        model = onnx.load(str(fp32), load_external_data=False)
        every = excl.layer_nodes(model, program, find_layers(ctx.source))  # for the int8 loop's exclusions
        fused, fusion = _fuse(model, program, ctx, external)  # before the shapes go: the patterns need them
        graph.strip_value_info(model)
        graph.name_dynamic_axes(model, ctx.source.dynamic_axes)
        onnx.save(model, str(fp32))
        try:
            onnx.checker.check_model(str(fp32))
        except onnx.checker.ValidationError as e:
            raise ExportError(f"the exported ONNX graph is invalid: {str(e).splitlines()[0]}",
                              fix="report this model to edgekit with the torch version") from e
        full = onnx.load(str(fp32))
        rewritten = graph.gemm_to_matmul(full)
        prepared = ctx.workdir / "prepared.onnx"
        _save(full, prepared, external)
        ctx.report("export to ONNX", 2, 2)
        every = excl.renamed(every, full)
        return Base(fp32, prepared, external, rewritten, {name: every[name] for name in excluded}, every,
                    fused, fusion)

    # -- precisions ----------------------------------------------------------------------
    def build(self, base: Base, precision: Precision, stem: str, ctx: BuildContext) -> Built:
        out = ctx.workdir / f"{stem}{self.suffix}"
        if base.layer_nodes:  # exclude_layers: their nodes join nodes_to_exclude
            opts: OnnxOptions = ctx.options
            mapped = tuple(n for found in base.layer_nodes.values() for n in found)
            ctx = replace(ctx, options=replace(opts, nodes_to_exclude=(*opts.nodes_to_exclude, *mapped)))
        try:
            with quiet():
                route, details = BUILDERS[precision](self, base, out, ctx)
        except (CalibrationError, QuantizationError):
            raise
        except Exception as e:
            raise QuantizationError(f"{precision.value} quantization of {ctx.source.name} failed: "
                                    f"{first_line(e)}",
                                    fix="try another precision, or exclude the failing nodes with "
                                    "-O nodes_to_exclude=NAME,...") from e
        import onnx

        model = onnx.load(str(out), load_external_data=False)
        details["ops"] = graph.op_counts(model)
        details["quantized_fraction"] = fractions(graph.weight_bits(model))
        if base.layer_nodes:
            from edgekit.converters.onnx import exclusions as excl

            check = excl.check(model, base.layer_nodes)
            details["exclusions"] = check.to_dict()
            check.raise_if_missing(self.format.value, precision.value)
        companions = sorted(p for p in out.parent.glob(out.name + ".data"))
        return Built(out, companions, route, details)


def _to_onnx(program: Any, ctx: BuildContext, opts: OnnxOptions) -> Any:
    import torch

    kwargs: dict[str, Any] = {}
    if opts.opset is not None:
        kwargs["opset_version"] = opts.opset
    return torch.onnx.export(program, dynamo=True, input_names=ctx.source.input_names,
                             output_names=ctx.source.output_names, verbose=False, **kwargs)


def _fuse(model: Any, program: Any, ctx: BuildContext, external: bool) -> tuple[Path | None, dict[str, Any]]:
    """The fp32 graph with fused attention, saved beside the exported one, when ``fp32_fusion``
    asks for it and the model has attention that fuses; else None and the reason."""
    import onnx

    if ctx.options.fp32_fusion == "none":
        return None, {"applied": False, "reason": "-O fp32_fusion=none"}
    if external:
        return None, {"applied": False, "reason": "weights above the external-data threshold"}
    if ctx.options.fp32_fusion == "onnx-attention":
        return _attention_op(program, ctx)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        fused, counts = graph.fuse_for_ort(copy)
        graph.strip_value_info(fused)
        graph.name_dynamic_axes(fused, ctx.source.dynamic_axes)
        onnx.checker.check_model(fused)
    except Exception as e:  # onnxscript's rewriter on a graph it does not expect: keep the exporter's
        return None, {"applied": False, "reason": f"onnxscript ort_fusions failed: {first_line(e)}"}
    if not graph.ATTENTION_FUSIONS & set(counts):
        return None, {"applied": False, "reason": "no attention block fused", "fusions": counts}
    path = ctx.workdir / "fused.onnx"
    onnx.save(fused, str(path))
    return path, {"applied": True, "fusions": counts}


def _attention_op(program: Any, ctx: BuildContext) -> tuple[Path | None, dict[str, Any]]:
    """fp32 exported again at :data:`ATTENTION_OPSET`, where the exporter writes
    ``scaled_dot_product_attention`` as the ONNX ``Attention`` operator."""
    import onnx

    opts: OnnxOptions = ctx.options
    if not any("scaled_dot_product_attention" in str(n.target) for n in program.graph.nodes
               if n.op == "call_function"):
        return None, {"applied": False, "reason": "no scaled_dot_product_attention in the model"}
    if (opts.opset or 0) >= ATTENTION_OPSET:
        return None, {"applied": False, "reason": f"-O opset={opts.opset} already writes the Attention op"}
    path = ctx.workdir / "attention.onnx"
    try:
        _to_onnx(program, ctx, replace(opts, opset=ATTENTION_OPSET)).save(str(path))
        model = onnx.load(str(path))
        graph.strip_value_info(model)
        graph.name_dynamic_axes(model, ctx.source.dynamic_axes)
        onnx.checker.check_model(model)
    except Exception as e:  # the exporter or the checker on this opset: keep the first export
        return None, {"applied": False, "reason": f"opset {ATTENTION_OPSET} export failed: {first_line(e)}"}
    ops = sum(n.op_type == "Attention" and n.domain in ("", "ai.onnx") for n in model.graph.node)
    if not ops:
        return None, {"applied": False, "reason": f"the opset {ATTENTION_OPSET} export has no Attention op"}
    onnx.save(model, str(path))
    return path, {"applied": True, "opset": ATTENTION_OPSET, "attention_ops": ops}


def _export_error(e: Exception, program: Any) -> ExportError:
    text = str(e)
    failing_op = graph.failing_operator(text) or graph.failing_operator(str(e.__cause__ or ""))
    if failing_op:
        where = graph.module_of(program, failing_op)
        place = f" in module '{where[0]}' ({where[1]})" if where else ""
        return ExportError(f"the ONNX exporter has no translation for operator {failing_op}{place}",
                           fix="replace that operator in the module (or move it out of forward()), "
                           "or register a custom ONNX translation for it")
    first = first_line(e)
    return ExportError(f"ONNX export failed: {first}",
                       fix="run torch.onnx.export(..., dynamo=True, report=True) for the full report")


def _save(model: Any, path: Path, external: bool) -> None:
    import onnx

    onnx.save_model(model, str(path), save_as_external_data=external,
                    all_tensors_to_one_file=True, location=path.name + ".data")


class _Reader:
    """ORT's CalibrationDataReader protocol over our calibration set, reporting progress."""

    def __init__(self, ctx: BuildContext, limit: int) -> None:
        cal = ctx.calibration
        assert cal is not None  # convert() guarantees calibration data for int8
        self._batches = iter(list(cal.take(limit).batches(1)))
        self._total = min(limit, cal.size)
        self._done = 0
        self._ctx = ctx

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is not None:
            self._done += 1
            self._ctx.report("calibrate int8", self._done, self._total)
        return batch

    def rewind(self) -> None:  # part of ORT's reader protocol; calibration reads once
        pass


@builder(Precision.FP32)
def _fp32(conv: OnnxConverter, base: Base, out: Path, ctx: BuildContext) -> tuple[str, dict[str, Any]]:
    import onnx

    route = "torch.export + torch.onnx.export(dynamo=True)"
    if base.fused is None:
        _save(onnx.load(str(base.fp32)), out, base.external)
        return route, {"fusion": base.fusion}
    _save(onnx.load(str(base.fused)), out, base.external)
    if "opset" in base.fusion:
        return (f"torch.export + torch.onnx.export(dynamo=True, opset {base.fusion['opset']}: "
                "scaled_dot_product_attention as the ONNX Attention op)"), {"fusion": base.fusion}
    return route + " + onnxscript ort_fusions (ONNX Runtime's fused transformer operators)", {"fusion": base.fusion}


@builder(Precision.FP16)
def _fp16(conv: OnnxConverter, base: Base, out: Path, ctx: BuildContext) -> tuple[str, dict[str, Any]]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(base.fp32)), keep_io_types=True)
    _save(model, out, base.external)
    return "onnxruntime.transformers.float16 (float32 inputs/outputs kept)", {"keep_io_types": True}


@builder(Precision.INT8_DYNAMIC)
def _int8_dynamic(conv: OnnxConverter, base: Base, out: Path, ctx: BuildContext
                  ) -> tuple[str, dict[str, Any]]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    opts: OnnxOptions = ctx.options
    ops = ["MatMul", "Gather"] if opts.quantize_embeddings else ["MatMul"]
    quantize_dynamic(str(base.prepared), str(out), weight_type=QuantType.QInt8,
                     per_channel=opts.per_channel, reduce_range=opts.reduce_range, op_types_to_quantize=ops,
                     nodes_to_exclude=list(opts.nodes_to_exclude),
                     use_external_data_format=base.external)
    return "onnxruntime quantize_dynamic (int8 weights, dynamic activations)", {
        "op_types": ops, "reduce_range": opts.reduce_range}


@builder(Precision.INT8)
def _int8_static(conv: OnnxConverter, base: Base, out: Path, ctx: BuildContext
                 ) -> tuple[str, dict[str, Any]]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    opts: OnnxOptions = ctx.options
    method = {"minmax": CalibrationMethod.MinMax, "mean-minmax": CalibrationMethod.MinMax,
              "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[opts.calibration]
    # the reader gives one sample per batch, so ORT's moving average is the mean of per-sample extremes
    extra = {"CalibMovingAverage": True} if opts.calibration == "mean-minmax" else {}
    reader = _Reader(ctx, opts.calibration_samples)
    quantize_static(str(base.prepared), str(out), reader, quant_format=QuantFormat.QDQ,
                    per_channel=opts.per_channel, reduce_range=opts.reduce_range, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8, calibrate_method=method,
                    op_types_to_quantize=list(opts.int8_op_types) or None,
                    nodes_to_exclude=list(opts.nodes_to_exclude),
                    use_external_data_format=base.external, extra_options=extra)
    return ("onnxruntime quantize_static (QDQ, int8 weights"
            f"{' per channel' if opts.per_channel else ''}, uint8 activations)"), {
        "calibration": {"method": opts.calibration, "samples": reader._done,
                        "data": ctx.calibration.origin if ctx.calibration else None},
        "op_types": list(opts.int8_op_types), "reduce_range": opts.reduce_range}


@builder(Precision.INT4)
def _int4(conv: OnnxConverter, base: Base, out: Path, ctx: BuildContext) -> tuple[str, dict[str, Any]]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    opts: OnnxOptions = ctx.options
    ops = ("MatMul", "Gather") if opts.quantize_embeddings else ("MatMul",)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(base.prepared)), bits=4,
                                     block_size=opts.int4_block_size, is_symmetric=opts.int4_symmetric,
                                     accuracy_level=opts.int4_accuracy_level,
                                     nodes_to_exclude=list(opts.nodes_to_exclude),
                                     op_types_to_quantize=ops)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), base.external)
    return (f"onnxruntime MatMulNBitsQuantizer (4-bit weights, block-wise, accuracy_level "
            f"{opts.int4_accuracy_level})"), {
        "block_size": opts.int4_block_size, "symmetric": opts.int4_symmetric, "op_types": list(ops),
        "accuracy_level": opts.int4_accuracy_level}
