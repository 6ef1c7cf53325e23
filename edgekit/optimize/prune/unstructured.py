"""Unstructured pruning: zero the least important individual weights, permanently.

The layers keep their shapes; only their weights become sparse. Dense runtimes (ONNX Runtime,
OpenVINO, LiteRT, llama.cpp) compute the zeros like any other value, so latency does not move;
what a sparse model buys is smaller compressed files (zip/gzip of fp32 or int8 weights) and
speed on runtimes or hardware with sparse kernels. ``bench/pruning_sparse.py`` measures both.
Embeddings and weights tied to them (a language model's output head) are never pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from edgekit.optimize.prune._units import LayerReport

if TYPE_CHECKING:
    import torch
    from torch import nn

ScoreFn = Callable[["torch.Tensor"], "torch.Tensor"]


def weight_layers(model: nn.Module, skip: Collection[int]) -> list[tuple[str, Any]]:
    """(name, module) of every Linear / conv / transformers Conv1D whose weight may be pruned."""
    from torch import nn

    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    found = []
    for name, mod in model.named_modules():
        kind_ok = isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)) or type(mod).__name__ == "Conv1D"
        weight = getattr(mod, "weight", None)
        if kind_ok and isinstance(weight, nn.Parameter) and id(mod) not in skip and id(weight) not in tied:
            found.append((name, mod))
    return found


def _kth_smallest(values: torch.Tensor, k: int) -> float:
    import torch

    if k <= 0:
        return float("-inf")
    return float(torch.kthvalue(values.flatten(), k).values)


def prune_unstructured(layers: list[tuple[str, Any]], sparsity: float, scope: str,
                       score: ScoreFn) -> list[LayerReport]:
    """Zero ``sparsity`` of the weights of ``layers``: the lowest scores over all layers together
    (``scope="global"``) or within each layer (``"layer"``). Returns one report per layer."""
    import torch

    scores = [score(mod.weight).detach().float() for _, mod in layers]
    if scope == "global":
        total = sum(s.numel() for s in scores)
        limit = _kth_smallest(torch.cat([s.flatten() for s in scores]), int(total * sparsity))
        limits = [limit] * len(layers)
    else:
        limits = [_kth_smallest(s, int(s.numel() * sparsity)) for s in scores]
    reports = []
    with torch.no_grad():
        for (name, mod), s, limit in zip(layers, scores, limits):
            before = int(torch.count_nonzero(mod.weight))
            mod.weight.masked_fill_(s <= limit, 0.0)
            after = int(torch.count_nonzero(mod.weight))
            reports.append(LayerReport(name, "weights", "weights", before, after,
                                       {"weights": mod.weight.numel(),
                                        "sparsity": round(1 - after / mod.weight.numel(), 4)}))
    return reports
