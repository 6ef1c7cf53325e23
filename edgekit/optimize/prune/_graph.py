"""Conv channels and MLP hidden units of any traceable module, through torch-pruning's dependency graph.

torch-pruning traces the autograd graph once and couples every layer that shares a channel
space: the conv that produces it, its batch norm, the residual adds and concatenations that
merge it, depthwise convs, and the consumer's input columns (expanded through ``flatten``).
edgekit keeps only the groups it can cut safely: none that reaches a model output, none that
touches an excluded layer or a transformer block (those are cut by their layouts instead).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from edgekit.optimize.prune._units import PruneGroup, Slice

if TYPE_CHECKING:
    from torch import nn


def _param_dims(module: Any, out: bool) -> list[tuple[Any, int]]:
    """(parameter, axis) pairs a channel of ``module`` owns, for scoring only."""
    from torch import nn

    w, b = getattr(module, "weight", None), getattr(module, "bias", None)
    if not isinstance(w, nn.Parameter):
        return []
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return [(w, 1), *([(b, 0)] if b is not None else [])] if out else [(w, 0)]
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        return [(w, 0), *([(b, 0)] if b is not None else [])] if out else [(w, 1)]
    if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.PReLU)):
        return [(p, 0) for p in (w, b) if p is not None and p.dim() >= 1 and p.shape[0] > 1]
    return []


def _reaches_output(tp: Any, graph: Any, group: Any) -> bool:
    """A channel space that flows, unconsumed, to the end of the traced graph is a model output."""
    for item in group:
        if graph.is_in_channel_pruning_fn(item.dep.handler):
            continue  # a consumer's input columns; what it outputs is another space
        outs = item.dep.target.outputs
        if not outs or any(isinstance(o.module, tp.ops._OutputOp) for o in outs):
            return True
    return False


def channel_groups(model: nn.Module, example: Any, targets: Collection[str],
                   reserved: Collection[nn.Module], display: Any) -> list[PruneGroup]:
    """Prunable groups rooted at convs (target ``channels``) and linears (target ``ffn``)."""
    import torch
    from torch import nn

    from edgekit.deps import require
    from edgekit.quiet import quiet

    tp = require("torch_pruning", "convert", "structured channel pruning")
    roots: list[type] = []
    if "channels" in targets:
        roots.append(nn.modules.conv._ConvNd)
    if "ffn" in targets:
        roots.append(nn.Linear)
    if not roots:
        return []
    reserved_ids = {id(m) for m in reserved}
    names = {id(m): n for n, m in model.named_modules()}
    with quiet("torch_pruning"):
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    groups = []
    for group in graph.get_all_groups(ignored_layers=[], root_module_types=tuple(roots)):
        modules = [item.dep.target.module for item in group]
        if any(id(m) in reserved_ids for m in modules) or _reaches_output(tp, graph, group):
            continue
        root, handler = group[0].dep.target.module, group[0].dep.handler
        size = len(group[0].idxs)
        if size < 2:
            continue
        slices = []
        for item in group:
            mod = item.dep.target.module
            if not isinstance(mod, nn.Module):
                continue
            out = graph.is_out_channel_pruning_fn(item.dep.handler)
            pos = torch.tensor(item.idxs, dtype=torch.long)
            units = torch.tensor(item.root_idxs, dtype=torch.long)
            slices += [Slice(p, d, pos, units) for p, d in _param_dims(mod, out)]
        target = "channels" if isinstance(root, nn.modules.conv._ConvNd) else "ffn"
        unit = "channels" if target == "channels" else "neurons"

        def apply(keep: list[int], root: Any = root, handler: Any = handler, size: int = size) -> None:
            drop = sorted(set(range(size)) - set(keep))
            if drop:
                with quiet("torch_pruning"):
                    graph.get_pruning_group(root, handler, drop).prune()

        coupled = sorted({display(names[id(m)]) for m in modules
                          if isinstance(m, nn.Module) and id(m) in names and m is not root})
        groups.append(PruneGroup(display(names.get(id(root), type(root).__name__)), target, unit, size,
                                 slices, apply, detail={"coupled": coupled}))
    return groups
