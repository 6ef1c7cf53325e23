"""``prune``: make a PyTorch model smaller, structurally (fewer channels, units, heads, layers) or
by zeroing weights, before it is exported.

Structured pruning returns a plain ``nn.Module`` whose layers are really smaller, so ONNX,
OpenVINO, TFLite and GGUF export it unchanged. Conv channels and MLP units of any traceable
model go through torch-pruning's dependency graph; transformer heads, FFN units and layers are
cut by family layouts that also keep the Hugging Face config consistent. See docs/pruning.md.

>>> res = prune(model, sparsity=0.5, example_inputs=(x,))  # doctest: +SKIP
>>> res.params_after / res.params_before  # doctest: +SKIP
0.27
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import CalibrationError, ConfigError, SourceError
from edgekit.optimize.prune._units import LayerReport

if TYPE_CHECKING:
    from torch import nn

    from edgekit.sources import ModelSource


class PruneMethod(str, Enum):
    STRUCTURED = "structured"
    UNSTRUCTURED = "unstructured"


class PruneTarget(str, Enum):
    CHANNELS = "channels"  # conv output channels (+ batch norm, + the next layer's inputs)
    FFN = "ffn"  # transformer FFN units; MLP hidden units of other models
    HEADS = "heads"  # attention heads (whole KV groups under grouped-query attention)
    LAYERS = "layers"  # whole transformer blocks


class Importance(str, Enum):
    MAGNITUDE = "magnitude"
    TAYLOR = "taylor"


class Scope(str, Enum):
    GLOBAL = "global"  # rank the units of all layers together: layers end up of different sizes
    LAYER = "layer"  # the same fraction in every layer: uniform sizes (what GGUF needs)


DEFAULT_TARGETS = (PruneTarget.CHANNELS, PruneTarget.FFN, PruneTarget.HEADS)
Feed = Mapping[str, np.ndarray]


@dataclass
class PruneResult:
    """The pruned module and what was removed."""

    module: nn.Module
    method: str
    sparsity: float
    importance: str
    scope: str
    targets: tuple[str, ...]
    params_before: int
    params_after: int
    nonzero_before: int
    nonzero_after: int
    layers: list[LayerReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def param_ratio(self) -> float:
        """Parameters (structured) or non-zero weights (unstructured) kept, as a fraction."""
        if self.method == PruneMethod.UNSTRUCTURED.value:
            return self.nonzero_after / max(self.nonzero_before, 1)
        return self.params_after / max(self.params_before, 1)

    def to_dict(self) -> dict[str, Any]:
        """For the manifest (``optimize.prune``)."""
        return {"method": self.method, "sparsity": self.sparsity, "importance": self.importance,
                "scope": self.scope, "targets": list(self.targets),
                "params_before": self.params_before, "params_after": self.params_after,
                "nonzero_before": self.nonzero_before, "nonzero_after": self.nonzero_after,
                "param_ratio": round(self.param_ratio, 4), "seconds": round(self.seconds, 3),
                "layers": [r.to_dict() for r in self.layers], "notes": list(self.notes)}


def _enum(cls: type[Enum], value: Any, what: str) -> Any:
    try:
        return cls(value.value if isinstance(value, Enum) else str(value).strip().lower())
    except ValueError:
        raise ConfigError(f"unknown {what} {value!r}",
                          fix=f"use one of: {', '.join(m.value for m in cls)}") from None


def _check_sparsity(sparsity: Any) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not np.isfinite(sparsity):
        raise ConfigError(f"sparsity must be a number, got {sparsity!r}",
                          fix="pass the fraction to remove, e.g. sparsity=0.5")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(f"sparsity {sparsity} is outside [0, 1): it is the fraction of units to remove"
                          + (" and 1.0 would remove all of them" if sparsity == 1 else ""),
                          fix="pass a fraction such as 0.3 or 0.5 (not a percentage)")
    return float(sparsity)


def _targets(targets: Any) -> tuple[PruneTarget, ...]:
    if targets is None:
        return DEFAULT_TARGETS
    items = [targets] if isinstance(targets, (str, PruneTarget)) else list(targets or ())
    if not items:
        raise ConfigError("no pruning targets given",
                          fix=f"pass targets from: {', '.join(t.value for t in PruneTarget)}")
    return tuple(dict.fromkeys(_enum(PruneTarget, t, "pruning target") for t in items))


def _inner_prefix(model: nn.Module) -> str:
    """An edgekit source wraps the user's model as ``inner``: report and accept names without it."""
    children = dict(model.named_children())
    return "inner." if list(children) == ["inner"] else ""


def _excluded(model: nn.Module, exclude: Sequence[str], prefix: str) -> set[int]:
    """ids of every module under a name in ``exclude``; unknown names raise with close matches."""
    modules = dict(model.named_modules())
    display = {n[len(prefix):] if prefix and n.startswith(prefix) else n: m for n, m in modules.items() if n}
    ids: set[int] = set()
    for name in ([exclude] if isinstance(exclude, str) else exclude):
        mod = display.get(name) or modules.get(name)
        if mod is None:
            close = difflib.get_close_matches(name, list(display), n=3)
            raise ConfigError(f"exclude names {name!r}, which is no layer of this model",
                              fix=f"did you mean {', '.join(close)}?" if close else
                              "use names from model.named_modules(), e.g. 'features.0'")
        ids.update(id(m) for m in mod.modules())
    return ids


def _count(model: nn.Module) -> tuple[int, int]:
    import torch

    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int(torch.count_nonzero(p)) for p in params)


def prune(
    model: nn.Module,
    *,
    sparsity: float,
    method: str | PruneMethod = "structured",
    targets: Iterable[str | PruneTarget] | str | None = DEFAULT_TARGETS,
    importance: str | Importance = "magnitude",
    data: Iterable[Feed] | None = None,
    example_inputs: Any = None,
    exclude: Sequence[str] = (),
    scope: str | Scope | None = None,
    loss: Callable[[Any, Feed], Any] | None = None,
    input_names: Sequence[str] | None = None,
    task: str | None = None,
    inplace: bool = False,
) -> PruneResult:
    """Prune ``sparsity`` (a fraction in [0, 1)) of ``model``'s units or weights.

    ``method="structured"`` removes that fraction of each target's units (``targets``:
    ``channels``, ``ffn``, ``heads``, ``layers``); ``"unstructured"`` zeroes that fraction of the
    Linear/conv weights. ``importance="taylor"`` scores by ``|w * dL/dw|`` on ``data`` (batches
    of ``{input_name: array}``, optionally with ``labels``; ``loss(outputs, feed)`` overrides the
    objective). ``scope`` is ``"global"`` or ``"layer"``; None picks ``"layer"`` for transformers
    (uniform sizes, config kept exact, GGUF-ready) and ``"global"`` otherwise. ``exclude`` names
    layers to leave untouched. The model is copied unless ``inplace``.

    >>> res = prune(net, sparsity=0.5, example_inputs=(x,), targets=["channels"])  # doctest: +SKIP
    >>> edgekit.convert(res.module, (x,), targets=["onnx"])  # doctest: +SKIP
    """
    import torch

    from edgekit.optimize.prune._feeds import default_loss, make_call, taylor_scores
    from edgekit.optimize.prune._structured import Job, run_structured
    from edgekit.optimize.prune._units import magnitude
    from edgekit.optimize.prune.unstructured import prune_unstructured, weight_layers
    from edgekit.sources.module import normalize_examples

    if not isinstance(model, torch.nn.Module):
        raise SourceError(f"prune() takes a torch.nn.Module, got {type(model).__name__}",
                          fix="pass the model object, or use prune_source() for an edgekit ModelSource")
    sparsity = _check_sparsity(sparsity)
    method_ = _enum(PruneMethod, method, "pruning method")
    targets_ = _targets(targets)
    importance_ = _enum(Importance, importance, "importance")
    scope_ = None if scope is None else _enum(Scope, scope, "pruning scope")
    prefix = _inner_prefix(model)
    _excluded(model, exclude, prefix)  # names checked before the copy
    feeds = list(data) if data is not None else None
    if importance_ is Importance.TAYLOR and not feeds:
        raise ConfigError("importance='taylor' needs data: gradients are measured on real inputs",
                          fix="pass data=[{input_name: array, ...}, ...] or use importance='magnitude'")
    example = normalize_examples(model, example_inputs, input_names) if example_inputs is not None else None
    t0 = time.perf_counter()
    work = model if inplace else copy.deepcopy(model)
    excluded = _excluded(work, exclude, prefix)
    params_before, nonzero_before = _count(work)
    call = make_call(work, input_names)
    logits = task is None or task != "feature-extraction"
    grads = taylor_scores(work, feeds or [], call, loss or default_loss(logits)) \
        if importance_ is Importance.TAYLOR else None
    score = (lambda p: grads.get(id(p), torch.zeros_like(p))) if grads is not None else magnitude

    def display(name: str) -> str:
        return name[len(prefix):] if prefix and name.startswith(prefix) else name

    if method_ is PruneMethod.UNSTRUCTURED:
        layers = weight_layers(work, excluded)
        if not layers:
            raise ConfigError("found no Linear or conv weights to prune (all excluded?)",
                              fix="check exclude=")
        reports = prune_unstructured(layers, sparsity, scope_.value if scope_ else "global",
                                     (lambda p: score(p).abs()) if grads is not None else (lambda p: p.abs()))
        for r in reports:
            r.name = display(r.name)
        notes: list[str] = []
        scope_used = scope_.value if scope_ else "global"
    else:
        job = Job(work, sparsity, {t.value for t in targets_}, importance_.value,
                  scope_.value if scope_ else None, feeds, example, excluded, call, score, display)
        reports, notes, scope_used = run_structured(job)
    params_after, nonzero_after = _count(work)
    return PruneResult(work, method_.value, sparsity, importance_.value, scope_used,
                       tuple(t.value for t in targets_) if method_ is PruneMethod.STRUCTURED else ("weights",),
                       params_before, params_after, nonzero_before, nonzero_after, reports, notes,
                       time.perf_counter() - t0)


def prune_source(source: ModelSource, **kwargs: Any) -> tuple[ModelSource, PruneResult]:
    """Prune ``source.module`` (same arguments as :func:`prune`); returns a new source with the
    same inputs and outputs, and the result. Taylor importance uses ``source.calibration``
    when ``data`` is not given."""
    if "data" not in kwargs and source.calibration is not None:
        kwargs["data"] = list(source.calibration.batches(8))
    if kwargs.get("importance") in ("taylor", Importance.TAYLOR) and kwargs.get("data") is None:
        raise CalibrationError("importance='taylor' needs data and this source has no calibration set",
                               fix="pass data=... or calibration data (--calib) with the source")
    kwargs.setdefault("example_inputs", source.example_inputs)
    kwargs.setdefault("input_names", source.input_names)
    kwargs.setdefault("task", source.task)
    result = prune(source.module, **kwargs)
    pruned = dataclasses.replace(source, module=result.module, exported_program=None)
    return pruned, result
