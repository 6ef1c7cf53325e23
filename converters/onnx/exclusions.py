"""ONNX: torch layers -> node names of edgekit's exported graph, and the check that the excluded
nodes are still float in a quantized model.

The dynamo exporter records, per node, the FX node it came from (``pkg.torch.onnx.fx_node``,
whose arguments name the parameter placeholders ``%p_<fqn>``) and keeps parameter names on
initializers it did not fold (``inner.head.weight``); either names the layer. The converter
strips that metadata from the artifact, so the mapping is taken right after export.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgekit.optimize.exclusions import ExclusionCheck, parameter_layer

WEIGHT_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather"})
FX_NODE_KEY = "pkg.torch.onnx.fx_node"
_PLACEHOLDER = re.compile(r"%(p_\w+)")
# ops that only move a weight between its initializer and the node using it
_LAYOUT_OPS = frozenset({"Transpose", "Cast", "Reshape", "Identity", "Unsqueeze", "Squeeze"})
FLOAT_TYPES = frozenset({1, 10, 11, 16})  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def layer_nodes(model: Any, program: Any, layers: Iterable[str]) -> dict[str, list[str]]:
    """Layer -> names of the weight-bearing nodes that compute it, in graph order; ``model`` must
    still carry the exporter's metadata."""
    wanted = list(layers)
    params = dict(program.graph_signature.inputs_to_parameters)
    inits = {t.name for t in model.graph.initializer}
    out: dict[str, list[str]] = {name: [] for name in wanted}
    for node in model.graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        owners = {parameter_layer(i, wanted) for i in node.input if i in inits}
        meta = {p.key: p.value for p in node.metadata_props}
        for placeholder in _PLACEHOLDER.findall(meta.get(FX_NODE_KEY, "")):
            if placeholder in params:
                owners.add(parameter_layer(params[placeholder], wanted))
        owners.discard(None)
        if len(owners) == 1:
            out[owners.pop()].append(node.name)  # type: ignore[index]
    return out


def renamed(nodes: Mapping[str, Sequence[str]], model: Any) -> dict[str, list[str]]:
    """The same mapping in a graph whose Gemm nodes were rewritten as ``<name>_MatMul``."""
    names = {n.name for n in model.graph.node}
    return {layer: [n if n in names else f"{n}_MatMul" for n in found] for layer, found in nodes.items()}


def check(model: Any, nodes: Mapping[str, Sequence[str]]) -> ExclusionCheck:
    """Which layers are still float in ``model`` (an ``onnx.ModelProto``): each of their nodes is
    present under its name (or its Gemm-rewritten name), still a plain float op, and its weight is a
    float initializer, not an integer one nor the output of a DequantizeLinear."""
    by_name = {n.name: n for n in model.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: t.data_type for t in model.graph.initializer}
    applied, reasons = [], {}
    for layer, found in nodes.items():
        problems = []
        for name in found:
            # fp32/fp16 keep the exported Gemm; the quantizers saw it rewritten as <name>_MatMul
            node = by_name.get(name) or by_name.get(f"{name}_MatMul") or by_name.get(name.removesuffix("_MatMul"))
            if node is None:
                problems.append(f"node {name} was replaced (quantized)")
            elif node.op_type not in WEIGHT_OPS:
                problems.append(f"node {name} is {node.op_type}")
            elif not _float_weight(node, producer, inits):
                problems.append(f"node {name} takes a quantized weight")
        if found and not problems:
            applied.append(layer)
        elif problems:
            reasons[layer] = "; ".join(problems)
    return ExclusionCheck.of(nodes, applied, reasons)


def _float_weight(node: Any, producer: Mapping[str, Any], inits: Mapping[str, int]) -> bool:
    """At least one input comes from a float initializer and none from a quantized one."""
    saw_float = False
    for name in node.input:
        for _ in range(4):  # follow layout ops back to the initializer
            if name in inits:
                if inits[name] not in FLOAT_TYPES:
                    return False
                saw_float = True
                break
            src = producer.get(name)
            if src is None:
                break
            if src.op_type == "DequantizeLinear" and (src.input[0] in inits or src.input[0] not in producer):
                return False
            if src.op_type not in _LAYOUT_OPS:
                break
            name = src.input[0]
    return saw_float
