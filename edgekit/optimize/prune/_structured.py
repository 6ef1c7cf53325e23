"""The structured pruning pass: find groups, score them, choose the units to keep, cut, check.

Layers are cut first (their scores need the full model); heads, FFN units and channels are then
scored on the weights as they were before any cut (Taylor gradients were taken on the original
model) and cut together. A forward pass on the example inputs checks that every output kept its
shape: a dependency the graph walk missed fails here, not in an exporter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgekit.errors import ConfigError, SourceError
from edgekit.optimize.prune._units import LayerReport, PruneGroup, select, unit_scores

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgekit.optimize.prune._transformer import Stack


@dataclass
class Job:
    model: nn.Module
    sparsity: float
    targets: set[str]
    importance: str  # "magnitude" | "taylor"
    scope: str | None  # None: "layer" for transformers, "global" otherwise
    data: list[Any] | None
    example: dict[str, Any] | None
    excluded: set[int]
    call: Callable[[Any], Any]
    score: Callable[[torch.Tensor], torch.Tensor]
    display: Callable[[str], str]
    input_names: Sequence[str] | None = None


def _touches(module: nn.Module, excluded: set[int]) -> bool:
    return any(id(m) in excluded for m in module.modules())


def _shapes(job: Job) -> list[tuple[int, ...]] | None:
    import torch

    from edgekit.sources.module import _flatten_outputs

    if job.example is None:
        return None
    with torch.no_grad():
        return [tuple(o.shape) for o in _flatten_outputs(job.call(job.example), None)]


def _cut_layers(job: Job, stacks: list[Stack]) -> list[LayerReport]:
    import torch

    from edgekit.optimize.prune._transformer import block_influence, hf_configs, layer_group

    feeds = job.data or ([job.example] if job.example is not None else None)
    configs = hf_configs(job.model)
    reports = []
    for stack in stacks:
        blocks = stack.blocks()
        if job.importance == "taylor":
            scores = torch.tensor([float(sum(job.score(p).sum() for p in b.parameters())) for b in blocks])
        elif feeds:
            scores = block_influence(job.model, stack, feeds, job.call)
        else:
            raise ConfigError("pruning whole layers ranks them on inputs, and none were given",
                              fix="pass example_inputs= or data= to prune()")
        protected = [i for i, b in enumerate(blocks) if _touches(b, job.excluded)]
        group = layer_group(stack, job.display, scores, protected, configs)
        keep = select([group], {id(group): group.scores}, job.sparsity, "layer", False)[id(group)]
        group.apply(keep)
        removed = sorted(set(range(group.size)) - set(keep))
        reports.append(LayerReport(group.name, "layers", "layers", group.size, len(keep),
                                   {"removed_layers": removed, **group.detail}))
    return reports


def _unit_groups(job: Job, stacks: list[Stack]) -> list[PruneGroup]:
    from edgekit.optimize.prune._transformer import ffn_group, head_group

    groups: list[PruneGroup] = []
    names = {id(m): n for n, m in job.model.named_modules()}
    for stack in stacks:
        layout = stack.layout
        for block in stack.blocks():
            if _touches(block, job.excluded):
                continue
            name = job.display(names[id(block)])
            if "heads" in job.targets and layout.attention:
                groups.append(head_group(name, block, layout))
            if "ffn" in job.targets and layout.ffn:
                groups.append(ffn_group(name, block, layout))
    return [g for g in groups if g.size > 1]


def _graph_groups(job: Job, stacks: list[Stack]) -> list[PruneGroup]:
    """Conv channels (and, in models without transformer blocks, MLP units) via torch-pruning."""
    from torch import nn

    from edgekit.optimize.prune._feeds import feed_args
    from edgekit.optimize.prune._graph import channel_groups

    in_stacks = {id(m) for s in stacks for m in getattr(s.parent, s.attr).modules()}
    wanted = {"channels"} & job.targets if stacks else {"channels", "ffn"} & job.targets
    kinds = tuple(k for t, k in (("channels", nn.modules.conv._ConvNd), ("ffn", nn.Linear)) if t in wanted)
    if not kinds or not any(isinstance(m, kinds) and id(m) not in in_stacks and id(m) not in job.excluded
                            for m in job.model.modules()):
        return []
    if job.example is None:
        raise ConfigError("pruning channels traces the model, and no example inputs were given",
                          fix="pass example_inputs= (a tensor, tuple or dict) to prune()")
    args, kwargs = feed_args(job.model, job.input_names)(job.example)
    reserved = [m for m in job.model.modules() if id(m) in in_stacks or id(m) in job.excluded]
    try:
        return channel_groups(job.model, kwargs or args, wanted, reserved, job.display)
    except Exception as e:  # torch-pruning raises assorted errors on graphs it cannot trace
        raise SourceError(f"torch-pruning could not trace this model's channel graph: {e}",
                          fix="exclude the layers around the failing operator, prune other targets, "
                          "or use method='unstructured'") from e


def run_structured(job: Job) -> tuple[list[LayerReport], list[str], str]:
    """Cut ``job.model`` in place; returns the reports, notes and the scope used."""
    import torch

    from edgekit.optimize.prune._transformer import find_stacks, update_configs

    stacks = find_stacks(job.model)
    scope = job.scope or ("layer" if stacks else "global")
    shapes = _shapes(job)
    reports: list[LayerReport] = []
    if "layers" in job.targets and stacks:
        reports += _cut_layers(job, stacks)
    groups = _unit_groups(job, stacks) + _graph_groups(job, stacks)
    if not groups and not reports:
        found = f"{len(stacks)} transformer layer stack(s)" if stacks else "no transformer blocks"
        raise ConfigError(f"nothing to prune for targets {sorted(job.targets)}: the model has {found} and no "
                          "prunable conv channel or hidden-unit group outside excluded layers and outputs",
                          fix="choose targets that exist in this model (channels for CNNs; heads, ffn, "
                          "layers for transformers) or use method='unstructured'")
    scores = {id(g): unit_scores(g, job.score) for g in groups}
    keep: dict[int, list[int]] = {}
    for target in sorted({g.target for g in groups}):
        pool = [g for g in groups if g.target == target]
        keep.update(select(pool, scores, job.sparsity, scope, job.importance == "magnitude"))
    with torch.no_grad():
        for g in groups:
            if len(keep[id(g)]) < g.size:
                g.apply(keep[id(g)])
    reports += [LayerReport(g.name, g.target, g.unit, g.size, len(keep[id(g)]), dict(g.detail))
                for g in groups]
    notes = update_configs(job.model, find_stacks(job.model))
    after = _shapes(job)
    if shapes is not None and after != shapes:
        raise SourceError(f"pruning changed the model's output shapes from {shapes} to {after}",
                          fix="a dependency was missed: exclude the layers feeding that output "
                          "(exclude=[...]) or prune other targets")
    return reports, notes, scope
