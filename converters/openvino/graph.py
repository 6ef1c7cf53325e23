"""Read-only facts about an ``openvino.Model`` graph, for manifests, tests and accuracy control.

Everything here takes an ``ov.Model`` and returns plain data; nothing imports openvino at module
level (the caller already has).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

from edgekit.runtimes.openvino import AXES_KEY, HINT_KEY

# operations that carry weights and that NNCF quantizes (activations via FakeQuantize, weights to int8)
COMPUTE_OPS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData",
                         "GroupConvolutionBackpropData", "MatMul", "Gather"})
# element types of low-precision weight constants, as OpenVINO names them
LOW_BIT_TYPES = ("i8", "u8", "i4", "u4", "nf4", "f8e4m3", "f16")


def op_counts(model: Any) -> dict[str, int]:
    """Operation type -> count, sorted by type name."""
    counts = Counter(op.get_type_name() for op in model.get_ops())
    return dict(sorted(counts.items()))


def weight_types(model: Any) -> dict[str, int]:
    """Element type -> number of weight tensors stored in a low-precision type (compressed
    weights are ``Constant(i8/u4/...) -> Convert -> ...``); float32 constants and zero points are
    not counted."""
    counts: Counter[str] = Counter()
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        etype = op.get_output_element_type(0).get_type_name()
        if etype in LOW_BIT_TYPES and _size(op) > 1 and not _is_zero_point(op):
            counts[etype] += 1
    return dict(sorted(counts.items()))


def _is_zero_point(const: Any) -> bool:
    """A dequantization parameter, not a weight: compressed weights are
    ``Constant(w) -> Convert -> [Subtract(zero point)] -> Multiply(scale)``; zero points and scales
    enter the Subtract/Multiply at input 1 (directly or through their own Convert)."""
    uses = [(t.get_node(), t.get_index()) for t in const.output(0).get_target_inputs()]
    if uses and all(node.get_type_name() == "Convert" for node, _ in uses):
        uses = [(t.get_node(), t.get_index()) for node, _ in uses for t in node.output(0).get_target_inputs()]
    for node, index in uses:
        kind = node.get_type_name()
        if index == 1 and (kind == "Subtract" or (kind == "Multiply" and node.input_value(0).get_node()
                                                  .get_type_name() in ("Convert", "Subtract"))):
            return True
    return False


def _size(op: Any) -> int:
    shape = op.get_output_partial_shape(0)
    if shape.is_dynamic:
        return 0
    n = 1
    for d in shape.to_shape():
        n *= int(d)
    return n


def quantized_ops(model: Any) -> list[str]:
    """Names of weight-bearing operations whose activation input comes through a FakeQuantize
    (the ops NNCF runs in int8), in graph order."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in COMPUTE_OPS - {"Gather"}:
            continue
        if any(_through_fq(op.input_value(i).get_node()) for i in range(op.get_input_size())):
            names.append(op.get_friendly_name())
    return names


def _through_fq(node: Any, depth: int = 3) -> bool:
    """A FakeQuantize feeding ``node`` directly or through layout-only ops (Reshape, Transpose)."""
    for _ in range(depth):
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind not in ("Reshape", "Transpose", "Convert", "Squeeze", "Unsqueeze") or not node.get_input_size():
            return False
        node = node.input_value(0).get_node()
    return False


def set_axis_names(model: Any, axes: dict[str, dict[int, str]]) -> None:
    """Record ``{input: {axis: name}}`` in the model's rt_info, saved with the IR (OpenVINO has
    no dimension names; the runtime reads them back to name the signature's dynamic axes)."""
    model.set_rt_info(json.dumps({k: {str(a): n for a, n in v.items()} for k, v in axes.items()}), AXES_KEY)


def fix_static_axes(model: Any, examples: dict[str, Any], axes: dict[str, dict[int, str]]) -> None:
    """Give each input axis that is not a declared dynamic axis its example size in the IR itself.

    ``convert_model`` of an ExportedProgram leaves every axis dynamic (``[?, ?]``), so the IR would
    take a 1x1x16x16 image meant to be 1x1x8x8 and silently reshape it into 4 rows. A model that
    cannot be reshaped is left as it is: the runtime still checks inputs against the manifest."""
    import openvino as ov

    shapes = {}
    for port in model.inputs:
        name, example = port.get_any_name(), examples.get(port.get_any_name())
        pshape = port.get_partial_shape()
        if example is None or pshape.rank.is_dynamic or pshape.rank.get_length() != len(example.shape):
            continue
        dynamic = axes.get(name, {})
        want = [-1 if i in dynamic else int(n) for i, n in enumerate(example.shape)]
        if any(d.is_dynamic and w >= 0 for d, w in zip(pshape, want)):
            shapes[port] = ov.PartialShape(want)
    if shapes:
        try:
            model.reshape(shapes)
        except RuntimeError:
            pass


def set_precision_hint(model: Any, hint: str | None) -> None:
    """Record the inference precision the IR was verified with in its rt_info
    (``runtime_options/INFERENCE_PRECISION_HINT``), so a bare ``.xml`` copied without its manifest
    runs in that precision under edgekit too (a bf16-capable CPU otherwise picks bf16)."""
    if hint:
        model.set_rt_info(hint, HINT_KEY)


def module_paths(program: Any) -> dict[str, str]:
    """torch.export node name -> the module that called it (``inner.encoder.layers.0.linear1``).

    OpenVINO names the ops it converts from an ExportedProgram ``<node>/<aten op>/<OV op>``, so
    the first part finds the module; ops that OpenVINO fused (a Convolution absorbing a
    BatchNorm) carry a generated name and find none.
    """
    out: dict[str, str] = {}
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") if node.op == "call_function" else None
        if stack:
            path = list(stack.values())[-1][0]
            # edgekit wraps the user's module as ``inner`` (edgekit.sources.module.wrap)
            out[node.name] = path.removeprefix("L['self'].").removeprefix("L__self__.").removeprefix("inner.")
    return out


BITS = {"f64": 64, "f32": 32, "f16": 16, "bf16": 16, "i8": 8, "u8": 8, "f8e4m3": 8, "f8e5m2": 8,
        "i4": 4, "u4": 4, "nf4": 4}


def _weights(model: Any) -> Iterator[tuple[Any, int, list[int]]]:
    """(constant, bits, shape) of every weight: constants with two or more dimensions above 1 that
    are not zero points or scales (see :mod:`edgekit.optimize.bits`)."""
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        bits = BITS.get(op.get_output_element_type(0).get_type_name())
        shape = op.get_output_partial_shape(0)
        if bits is None or shape.is_dynamic:
            continue
        dims = [int(d) for d in shape.to_shape()]
        if sum(d > 1 for d in dims) < 2 or _is_zero_point(op):  # a bias reshaped to [1, n] is not a weight
            continue
        yield op, bits, dims


def weight_bits(model: Any) -> dict[int, int]:
    """Bit width -> weight values stored at it (:func:`_weights`)."""
    counts: Counter[int] = Counter()
    for op, bits, _ in _weights(model):
        counts[bits] += _size(op)
    return dict(counts)


def group_sizes(model: Any) -> dict[str, int]:
    """Group size -> number of 4-bit weight tensors using it: NNCF stores a grouped weight as
    ``[out, groups, group size]`` and a per-channel one as ``[out, in]`` ("-1")."""
    counts: Counter[str] = Counter(str(shape[-1]) if len(shape) == 3 else "-1"
                                   for _, bits, shape in _weights(model) if bits == 4)
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0])))
