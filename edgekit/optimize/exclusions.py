"""Layers kept out of quantization: PyTorch layer names, each backend's own names for them, and
the check, after export, that the exclusion took effect.

A *layer* is a module that owns a ``weight`` parameter of two or more dimensions (Linear, Conv,
Embedding, GPT-2's Conv1D, the plain holders of a ``.pt2`` program), named by its path in the
user's model (``encoder.layer.0.attention.output.dense``), without edgekit's wrapper. Every
converter takes these names as ``-O exclude_layers=...`` and maps them itself (ONNX node names,
OpenVINO op names, LiteRT op scopes, GGUF tensor names; see each converter package's ``exclusions.py``), then
records an :class:`ExclusionCheck` in the manifest (``conversion.exclusions``).

>>> check = ExclusionCheck.of({"head": ["node_linear_8"]}, applied={"head"})  # doctest: +SKIP
>>> check.to_dict()["missing"]  # doctest: +SKIP
[]
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.errors import ConfigError, QuantizationError

if TYPE_CHECKING:
    import torch

    from edgekit.sources import ModelSource

WRAPPER = "inner"  # edgekit.sources.module.wrap keeps the user's model under this attribute


@dataclass(frozen=True)
class Layer:
    """One weight-bearing layer of the user's model."""

    name: str
    kind: str  # the module's class name
    shape: tuple[int, ...]  # of its weight

    @property
    def params(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def user_module(model: Any) -> torch.nn.Module:
    """The user's ``nn.Module`` inside a :class:`ModelSource` (or the module itself)."""
    if hasattr(model, "input_names") and hasattr(model, "module"):  # a ModelSource: edgekit's wrapper
        return getattr(model.module, WRAPPER, model.module)
    return model


def find_layers(model: Any) -> dict[str, Layer]:
    """Every layer of ``model`` (a ModelSource or nn.Module), by name, in module order."""
    out: dict[str, Layer] = {}
    for name, mod in user_module(model).named_modules():
        weight = mod._parameters.get("weight") if hasattr(mod, "_parameters") else None
        if name and weight is not None and weight.dim() >= 2:
            out[name] = Layer(name, type(mod).__name__, tuple(int(s) for s in weight.shape))
    return out


def resolve(model: Any, names: Iterable[str], *, also: Iterable[str] = (), what: str = "layer") -> list[str]:
    """``names`` checked against the layers of ``model`` (and the extra names in ``also``, e.g. GGUF
    tensor names), in the order given, repeats dropped; an unknown one raises ConfigError with the
    nearest real names."""
    names = [str(n) for n in names]
    if not names:
        return []
    known = list(find_layers(model))
    extra = list(also)
    valid = set(known) | set(extra)
    out: list[str] = []
    for raw in names:
        name = str(raw).strip().removeprefix(f"{WRAPPER}.")
        if not name or name in out:
            continue
        if name not in valid:
            raise unknown_layer(name, known + extra, what)
        out.append(name)
    return out


def unknown_layer(name: str, known: Sequence[str], what: str = "layer") -> ConfigError:
    near = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    if not near:  # a partial path ("layers.0.fc1") still finds its full names
        near = [k for k in known if name in k][:5]
    hint = f"did you mean: {', '.join(near)}? " if near else ""
    sample = ", ".join(list(known)[:8]) + (" ..." if len(known) > 8 else "")
    return ConfigError(f"no {what} named {name!r} in this model",
                       fix=f"{hint}layer names are module paths of weight-bearing layers, e.g. {sample} "
                       "(edgekit sensitivity SRC lists them all)")


def parameter_layer(fqn: str, layers: Iterable[str]) -> str | None:
    """The layer that owns parameter ``fqn`` (``inner.encoder.fc1.weight`` -> ``encoder.fc1``)."""
    owner = fqn.rsplit(".", 1)[0].removeprefix(f"{WRAPPER}.")
    return owner if owner in set(layers) else None


def weight_users(program: Any, layers: Iterable[str]) -> dict[str, str]:
    """torch.export node name -> the layer whose weight (or bias) it consumes directly, for every
    ``call_function`` node of ``program`` (an ExportedProgram) that takes a layer's parameter."""
    wanted = set(layers)
    params = dict(program.graph_signature.inputs_to_parameters)
    out: dict[str, str] = {}
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        for arg in node.all_input_nodes:
            layer = parameter_layer(params[arg.name], wanted) if arg.name in params else None
            if layer is not None:
                out[node.name] = layer
                break
    return out


@dataclass
class ExclusionCheck:
    """What was asked to stay unquantized, what the artifact shows, and each layer's native names.

    ``applied``: layers whose every mapped op/tensor is still float (or the kept type);
    ``missing``: layers the backend has no name for, or that were quantized anyway.
    """

    requested: list[str]
    applied: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    native: dict[str, list[str]] = field(default_factory=dict)  # layer -> backend names
    reasons: dict[str, str] = field(default_factory=dict)  # layer -> why it is missing
    note: str | None = None

    @classmethod
    def of(cls, native: Mapping[str, Sequence[str]], applied: Iterable[str],
           reasons: Mapping[str, str] | None = None, note: str | None = None) -> ExclusionCheck:
        done = set(applied)
        why = dict(reasons or {})
        requested = list(native)
        for name in requested:
            if name not in done and name not in why:
                why[name] = "no op or tensor of the artifact maps to it" if not native[name] else "quantized"
        return cls(requested, [n for n in requested if n in done], [n for n in requested if n not in done],
                   {k: list(v) for k, v in native.items()}, {k: v for k, v in why.items() if k not in done},
                   note)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"requested": self.requested, "applied": self.applied, "missing": self.missing,
                             "native": self.native}
        if self.reasons:
            d["reasons"] = self.reasons
        if self.note:
            d["note"] = self.note
        return d

    def summary(self) -> str:
        return "; ".join(f"{n}: {self.reasons.get(n, 'quantized')}" for n in self.missing)

    def raise_if_missing(self, fmt: str, precision: str) -> None:
        """A requested exclusion that did not take effect is an error, never a silent artifact."""
        if self.missing:
            raise QuantizationError(
                f"{fmt} {precision}: exclusion of {len(self.missing)} layer(s) did not take effect "
                f"({self.summary()})",
                fix="check the names with `edgekit sensitivity SRC`; a layer the backend fused or "
                "shares with another cannot be kept apart: exclude its neighbours or the whole block")


def fingerprint(array: Any, per_channel: bool = False) -> tuple:
    """Sorted shape, sum, sum of squares, min and max: equal for a weight and the same weight
    stored transposed or channel-last (ONNX MatMul, TFLite OHWI, OpenVINO), different once the
    values were quantized. ``per_channel`` first scales each output channel (axis 0) to a maximum
    |value| of 1, so a convolution with a batch norm folded into it still matches its weight."""
    import numpy as np

    a = np.asarray(array, dtype=np.float64)
    if a.size == 0:
        return ((), 0.0, 0.0, 0.0, 0.0)
    if per_channel:
        rows = np.abs(a.reshape(a.shape[0], -1))
        a = rows / np.maximum(rows.max(axis=1, keepdims=True), 1e-30)
    return (tuple(sorted(int(s) for s in np.shape(array) if s != 1)), float(a.sum()), float((a * a).sum()),
            float(a.min()), float(a.max()))


def same_fingerprint(a: tuple, b: tuple, rtol: float = 1e-5) -> bool:
    if a[0] != b[0]:
        return False
    scale = max(abs(b[2]), 1e-12) ** 0.5
    return all(abs(x - y) <= rtol * (abs(y) + scale) for x, y in zip(a[1:], b[1:]))


class WeightIndex:
    """Finds the layer a stored weight array belongs to, by :func:`fingerprint`: exactly first,
    then per output channel (for weights a batch norm was folded into)."""

    def __init__(self, model: Any, names: Iterable[str]) -> None:
        mods = dict(user_module(model).named_modules())
        weights = {n: mods[n]._parameters["weight"].detach().float().cpu().numpy() for n in names}
        self.exact = {n: fingerprint(w) for n, w in weights.items()}
        self.channel = {n: fingerprint(w, per_channel=True) for n, w in weights.items() if w.ndim >= 3}

    def match(self, array: Any) -> str | None:
        """The one layer whose weight ``array`` is (None when none or several are)."""
        import numpy as np

        arr = np.asarray(array)
        if arr.size <= 1:
            return None
        for table, per_channel in ((self.exact, False), (self.channel, True)):
            if per_channel and arr.ndim < 3:
                break
            # per channel, output channels first, then last (TFLite depthwise [1, kh, kw, C])
            for view in (arr, np.moveaxis(arr, -1, 0)) if per_channel else (arr,):
                fp = fingerprint(view, per_channel)
                hits = [n for n, other in table.items() if same_fingerprint(fp, other)]
                if len(hits) == 1:
                    return hits[0]
        return None


def native_options(source: ModelSource, fmt: str, layers: Sequence[str]) -> dict[str, Any]:
    """The converter option, in the backend's own names, that keeps ``layers`` unquantized:
    ONNX Runtime's and NNCF's ``nodes_to_exclude``, ai-edge-quantizer's ``exclude_scopes``, GGUF
    tensor names. Runs that format's export once (in a temporary directory) to learn the names.

    >>> native_options(src, "onnx", ["encoder.layer.0.output.dense"])  # doctest: +SKIP
    {'nodes_to_exclude': ['node_MatMul_115']}
    """
    import tempfile
    from pathlib import Path

    from edgekit.converters import CONVERTERS, BuildContext
    from edgekit.options import parse_options
    from edgekit.types import Format

    fmt_ = Format.parse(fmt)
    conv = CONVERTERS.get(fmt_)()
    conv.check([])
    opts = parse_options(conv.Options, {"exclude_layers": tuple(layers)})
    with tempfile.TemporaryDirectory(prefix="edgekit-exclusions-") as tmp:
        base = conv.export(BuildContext(source, opts, Path(tmp), source.calibration))
        return conv.native_exclusions(base)
