"""ONNX graph helpers for the ONNX converter: export diagnosis and pre-quantization passes."""

from __future__ import annotations

import re
from typing import Any

# The exporter names the failing op like "OpOverload(op='aten.linalg_eig', ...)" or
# "target=torch.ops.aten.linalg_eig.default"; both spellings are tried.
_OP_PATTERNS = (re.compile(r"OpOverload\(op='([\w.]+)'"), re.compile(r"target=torch\.ops\.([\w.]+)"))


def failing_operator(message: str) -> str | None:
    """The ``aten.xxx`` operator an exporter error complains about, if it names one."""
    for pattern in _OP_PATTERNS:
        if m := pattern.search(message):
            op = m.group(1)
            return op[: -len(".default")] if op.endswith(".default") else op
    return None


def module_of(program: Any, op: str) -> tuple[str, str] | None:
    """(module path, module class) of the first node in ``program`` that calls ``op``."""
    for node in program.graph.nodes:
        if node.op == "call_function" and op in str(node.target):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, cls = list(stack.values())[-1]
                cls_name = getattr(cls, "__name__", None) or str(cls).rsplit(".", 1)[-1].strip("'>")
                return path.replace("L['self'].", "").replace("inner.", "", 1) or "<root>", cls_name
            return "<root>", "?"
    return None


def name_dynamic_axes(model: Any, axes: dict[str, dict[int, str]]) -> None:
    """Give dynamic dims the user's names (``batch``, ``sequence``) instead of torch's ``s0``.

    The symbol found on a named input axis is renamed wherever it appears on inputs and outputs.
    """
    rename: dict[str, str] = {}
    for value in model.graph.input:
        for axis, label in axes.get(value.name, {}).items():
            dims = value.type.tensor_type.shape.dim
            if axis < len(dims) and dims[axis].dim_param:
                rename[dims[axis].dim_param] = label
    for value in list(model.graph.input) + list(model.graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in rename:
                dim.dim_param = rename[dim.dim_param]


def strip_value_info(model: Any) -> None:
    """Drop the exporter's intermediate shapes (ORT's quantizers re-infer them and some disagree)
    and its per-node stack traces and class paths (about a tenth of a small model's bytes)."""
    del model.graph.value_info[:]
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def gemm_to_matmul(model: Any) -> int:
    """Rewrite ``Gemm(A, W[, C])`` with a constant W as ``MatMul(A, W') + C``.

    ORT's dynamic and 4-bit quantizers only handle MatMul; exporters emit Gemm for 2-D linear
    layers (classifier heads, CNN fully-connected layers). Returns how many nodes it rewrote.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    rewritten = 0
    nodes = []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
                 and not attrs.get("transA", 0))
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T.copy()
        wname = f"{node.input[1]}_matmul"
        model.graph.initializer.append(numpy_helper.from_array(weight, wname))
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], wname], [mm_out], name=f"{node.name}_MatMul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]],
                                          name=f"{node.name}_Add"))
        rewritten += 1
    if rewritten:
        used = {i for n in nodes for i in n.input}
        keep = [t for t in model.graph.initializer if t.name in used]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return rewritten


def op_counts(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


# TensorProto element type -> bits; 4-bit weights are also stored packed in uint8 (MatMulNBits)
BITS = {1: 32, 10: 16, 16: 16, 11: 64, 2: 8, 3: 8, 21: 4, 22: 4}
PACKED_4BIT_OPS = frozenset({"MatMulNBits", "GatherBlockQuantized"})


def weight_bits(model: Any) -> dict[int, int]:
    """Bit width -> weight values stored at it: initializers of two or more dimensions (biases,
    scales and zero points are 1-D), uint8 blobs of 4-bit operators counted as two 4-bit values."""
    packed = {n.input[1] if n.op_type == "MatMulNBits" else n.input[0]
              for n in model.graph.node if n.op_type in PACKED_4BIT_OPS}
    counts: dict[int, int] = {}
    for t in model.graph.initializer:
        bits = BITS.get(t.data_type)
        if bits is None or sum(int(d) > 1 for d in t.dims) < 2:
            continue
        n = 1
        for d in t.dims:
            n *= int(d)
        if t.name in packed:
            bits, n = 4, n * 2
        counts[bits] = counts.get(bits, 0) + n
    return counts


# onnxscript's fusion names that mean the graph's attention became one ONNX Runtime op
ATTENTION_FUSIONS = frozenset({"attention", "mha1", "mha2", "gqa", "sdpa_via_mha"})


def fuse_for_ort(model: Any) -> tuple[Any, dict[str, int]]:
    """The exporter's decomposed transformer blocks replaced by ONNX Runtime's fused operators
    (``com.microsoft`` Attention, SkipLayerNormalization, BiasGelu...) with onnxscript's
    ``ort_fusions``. The patterns need the exporter's intermediate shapes (run it before
    :func:`strip_value_info`). Returns the fused model and how many of each fusion applied."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    fused, counts = optimize_for_ort(ir.from_proto(model))
    return ir.to_proto(fused), {name: int(n) for name, n in counts.items() if n}
