"""TFLite (LiteRT): torch layers -> op scopes of the fp32 flatbuffer (what ai-edge-quantizer's
recipe regexes match), modules PT2E leaves unannotated, and the check that the excluded ops'
weights are still float.

litert-torch names tensors after the module stack of the op that made them
(``<Class>_<attr>/<Class>_<attr>/...;<n>``, as ``litert_torch.backend.debuginfo`` builds it), so an
op whose output (or weight) tensor carries a layer's location belongs to that layer; an op whose
output was renamed to a signature output, or whose location is a parent's (``F.linear`` inside
``MultiheadAttention``), is found by its float weight instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgekit.optimize.exclusions import ExclusionCheck, WeightIndex, user_module

WEIGHT_OPS = frozenset({"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "TRANSPOSE_CONV",
                        "EMBEDDING_LOOKUP", "GATHER", "BATCH_MATMUL"})
_CONTAINERS = ("ModuleList", "ModuleDict", "ParameterList", "ParameterDict")  # never called: no stack entry


def _class_fullname(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def locations(source: Any, layers: Iterable[str]) -> dict[str, str]:
    """Layer -> the tail of its litert-torch location (one ``<Class>_<attr>`` per called module on
    the path from the user's model down to the layer)."""
    root = user_module(source)
    mods = dict(root.named_modules())
    out = {}
    for layer in layers:
        parts = layer.split(".")
        segments = []
        for i in range(1, len(parts) + 1):
            mod = mods[".".join(parts[:i])]
            if type(mod).__name__ not in _CONTAINERS:
                segments.append(f"{_class_fullname(type(mod))}_{parts[i - 1]}")
        out[layer] = "/".join(segments)
    return out


def _name(tensor: Any) -> str:
    name = tensor.name
    return name.decode() if isinstance(name, bytes) else (name or "")


def _owner(name: str, tails: Mapping[str, str]) -> str | None:
    loc = name.split(";", 1)[0]
    hits = [layer for layer, tail in tails.items() if loc == tail or loc.endswith("/" + tail)]
    return max(hits, key=lambda h: len(tails[h])) if hits else None


@dataclass
class _Op:
    index: int
    kind: str
    op: Any
    layer: str | None


def _ops(model: Any, tails: Mapping[str, str], index: WeightIndex) -> list[_Op]:
    """Weight-bearing ops of the first subgraph and the layer each belongs to (or None)."""
    import numpy as np
    from ai_edge_litert.tools import flatbuffer_utils

    sg = model.subgraphs[0]
    out = []
    for i, op in enumerate(sg.operators or []):
        kind = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
        if kind not in WEIGHT_OPS:
            continue
        consts = [t for t in op.inputs if t >= 0 and _data(model, sg.tensors[t]) is not None]
        if not consts:
            continue  # attention's activation x activation products
        layer = None
        for t in [*op.outputs, *consts]:
            layer = layer or _owner(_name(sg.tensors[t]), tails)
        if layer is None:
            for t in consts:
                tensor = sg.tensors[t]
                if tensor.type == 0:  # FLOAT32
                    arr = np.frombuffer(bytes(_data(model, tensor)), dtype=np.float32)
                    layer = layer or index.match(arr.reshape(tuple(tensor.shape) or (-1,)))
        out.append(_Op(i, kind, op, layer))
    return out


def _data(model: Any, tensor: Any) -> Any:
    buf = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    data = getattr(buf, "data", None)
    return data if data is not None and len(data) else None


@dataclass
class TfliteExclusions:
    """What the TFLite converter keeps in float: mapped layers and the user's own scope regexes."""

    layers: list[str]
    tails: dict[str, str]
    index: WeightIndex
    scopes: dict[str, list[str]] = field(default_factory=dict)  # layer -> op scopes in the fp32 model
    extra: tuple[str, ...] = ()  # exclude_scopes given as regexes
    module_prefix: str = ""  # the layers' path prefix in the module PT2E quantizes

    def regexes(self) -> list[str]:
        return [f"^{re.escape(s)}$" for found in self.scopes.values() for s in found] + list(self.extra)

    def recipe(self, recipe: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """``recipe`` with a no-quantize entry per excluded scope after it (the last match wins)."""
        return [*[dict(r) for r in recipe], *[{"regex": r, "operation": "*", "algorithm_key": "no_quantize"}
                                               for r in self.regexes()]]

    def skip_in_pt2e(self, quantizer: Any, graph: Any) -> None:
        """Leave the excluded layers unannotated by litert-torch's PT2EQuantizer.

        Its ``set_module_name`` refuses a None config, and its name filter matches the name it makes
        from each ``nn_module_stack`` key (``key[len("L__self___"):]`` with ``_`` -> ``.``); the
        entry for that name is set to None, which its annotator skips and its global config avoids.
        """
        paths = {self.module_prefix + layer for layer in self.layers}
        table = quantizer.module_name_config
        for node in graph.graph.nodes:
            for key, (path, _) in (node.meta.get("nn_module_stack") or {}).items():
                if path in paths:
                    table[key[len("L__self___"):].replace("_", ".")] = None

    def check(self, data: bytes) -> ExclusionCheck:
        """Which layers' ops still have float32 weights (no int8 constant, no DEQUANTIZE feeding)."""
        from ai_edge_litert.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
        sg = model.subgraphs[0]
        producers = {o: op for op in sg.operators or [] for o in op.outputs}
        native: dict[str, list[str]] = {layer: [] for layer in self.layers}
        bad: dict[str, list[str]] = {}
        for item in _ops(model, self.tails, self.index):
            if item.layer not in native:
                continue
            label = f"{item.kind} #{item.index}"
            native[item.layer].append(label)
            kinds = set()
            for t in item.op.inputs:
                if t < 0:
                    continue
                src = producers.get(t)
                if src is not None and flatbuffer_utils.opcode_to_name(model, src.opcodeIndex) == "DEQUANTIZE" \
                        and _data(model, sg.tensors[src.inputs[0]]) is not None:  # a stored low-bit weight
                    kinds.add("dequantized")
                elif _data(model, sg.tensors[t]) is not None and sg.tensors[t].type != 0:
                    kinds.add("integer/half")
            if kinds:
                bad.setdefault(item.layer, []).append(f"{label} has {'/'.join(sorted(kinds))} inputs")
        applied = [layer for layer, found in native.items() if found and layer not in bad]
        return ExclusionCheck.of(native, applied, {k: "; ".join(v) for k, v in bad.items()})


def plan(source: Any, fp32: bytes, layers: Sequence[str], extra: Sequence[str], module: Any) -> TfliteExclusions:
    """Map ``layers`` onto the op scopes of the fp32 flatbuffer ``fp32`` litert-torch made from
    ``module`` (the converter's keyword-input wrapper around ``source.module``)."""
    from ai_edge_litert.tools import flatbuffer_utils
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils

    tails = locations(source, layers)
    index = WeightIndex(source, layers)
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(fp32))
    scopes: dict[str, list[str]] = {layer: [] for layer in layers}
    for item in _ops(model, tails, index):
        if item.layer in scopes:
            scopes[item.layer].append(tfl_flatbuffer_utils.get_op_scope(item.op, model.subgraphs[0].tensors))
    root = user_module(source)
    prefix = next((name + "." for name, mod in module.named_modules() if mod is root and name), "")
    return TfliteExclusions(list(layers), tails, index, scopes, tuple(extra), prefix)
