"""OpenVINO: torch layers -> op names of the IR ``openvino.convert_model`` makes from the exported
program (what NNCF's ``IgnoredScope(names=...)`` takes), and the check that no FakeQuantize nor
compressed weight feeds the excluded ops.

OpenVINO names each op it converts ``<torch.export node>/<aten op>/<OpenVINO op>``, so the ops of
the export nodes that consume a layer's weight are that layer's. A convolution that absorbed a
batch norm gets a generated name; it is found by its weight instead (the unfused constant
reached through the folding Multiply, see :func:`edgekit.optimize.exclusions.fingerprint`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgekit.optimize.exclusions import ExclusionCheck, WeightIndex, weight_users

WEIGHT_OPS = frozenset({"MatMul", "Convolution", "GroupConvolution", "ConvolutionBackpropData",
                        "GroupConvolutionBackpropData", "Gather"})
# ops between a weight constant and its user: layout, casts, and the folding of a batch norm
_PASS_OPS = frozenset({"Convert", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Multiply", "Subtract"})
FLOAT_TYPES = frozenset({"f32", "f16", "bf16", "f64"})


def _weight_index(op: Any) -> int:
    return 0 if op.get_type_name() == "Gather" else 1


def _constants(node: Any, depth: int = 4) -> list[Any]:
    """Constants reached from ``node`` back through pass-through ops (a FakeQuantize stops it)."""
    kind = node.get_type_name()
    if kind == "Constant":
        return [node]
    if depth == 0 or kind not in _PASS_OPS:
        return []
    return [c for i in range(node.get_input_size()) for c in _constants(node.input_value(i).get_node(), depth - 1)]


def layer_ops(model: Any, program: Any, source: Any, layers: Iterable[str]) -> dict[str, list[str]]:
    """Layer -> friendly names of the weight-bearing ops that compute it, in graph order."""
    import numpy as np

    wanted = list(layers)
    users = weight_users(program, wanted)
    index = WeightIndex(source, wanted)
    out: dict[str, list[str]] = {name: [] for name in wanted}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in WEIGHT_OPS:
            continue
        name = op.get_friendly_name()
        layer = users.get(name.split("/", 1)[0])
        if layer is None:  # a fused op with a generated name: find it by its weight
            for const in _constants(op.input_value(_weight_index(op)).get_node()):
                data = const.get_data() if const.get_output_element_type(0).get_type_name() in FLOAT_TYPES else None
                if data is not None:
                    layer = layer or index.match(np.asarray(data))
        if layer is not None:
            out[layer].append(name)
    return out


def check(model: Any, ops: Mapping[str, Sequence[str]]) -> ExclusionCheck:
    """Which layers are still float in ``model``: each op is there under its name, no FakeQuantize
    feeds it, and its weight is a float constant (not ``i8/u4 Constant -> Convert -> Multiply``)."""
    by_name = {op.get_friendly_name(): op for op in model.get_ops()}
    applied, reasons = [], {}
    for layer, names in ops.items():
        problems = []
        for name in names:
            op = by_name.get(name)
            if op is None:
                problems.append(f"op {name} is not in the model")
                continue
            inputs = [op.input_value(i).get_node() for i in range(op.get_input_size())]
            if any(_through(node, "FakeQuantize") for node in inputs):
                problems.append(f"op {name} is fed by a FakeQuantize")
                continue
            consts = _constants(inputs[_weight_index(op)])
            kinds = {c.get_output_element_type(0).get_type_name() for c in consts
                     if _size(c) > 1}
            if not kinds or not kinds <= FLOAT_TYPES:
                problems.append(f"op {name} has a {'/'.join(sorted(kinds)) or 'non-constant'} weight")
        if names and not problems:
            applied.append(layer)
        elif problems:
            reasons[layer] = "; ".join(problems)
    return ExclusionCheck.of(ops, applied, reasons)


def _size(const: Any) -> int:
    shape = const.get_output_partial_shape(0)
    n = 1
    for d in shape.to_shape():
        n *= int(d)
    return n


def _through(node: Any, kind: str, depth: int = 3) -> bool:
    for _ in range(depth):
        if node.get_type_name() == kind:
            return True
        if node.get_type_name() not in ("Reshape", "Transpose", "Convert") or not node.get_input_size():
            return False
        node = node.input_value(0).get_node()
    return False
