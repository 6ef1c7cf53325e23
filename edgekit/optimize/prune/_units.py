"""Prunable groups: a set of coupled units (channels, neurons, heads, layers), scored and cut together.

Every structured pruner (the torch-pruning channel graph, the transformer layouts) describes
what it can remove as :class:`PruneGroup` objects. Scoring and selection live here once:
a unit's score is the sum over every weight slice it owns (the producing rows *and* the
consuming columns), by squared magnitude or by first-order Taylor ``|w * dL/dw|``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ApplyFn = Callable[[list[int]], None]  # called with the sorted unit indices to KEEP


@dataclass
class Slice:
    """Positions ``positions`` along ``dim`` of ``param`` belong to units ``units`` (same length)."""

    param: torch.Tensor
    dim: int
    positions: torch.Tensor  # long, 1-D
    units: torch.Tensor  # long, 1-D


@dataclass
class PruneGroup:
    """Coupled units that must be removed together, with the function that removes them."""

    name: str  # reported name: the block or the root layer
    target: str  # PruneTarget value
    unit: str  # "channels" | "neurons" | "heads" | "kv-groups" | "layers"
    size: int
    slices: list[Slice]
    apply: ApplyFn
    min_keep: int = 1
    scores: torch.Tensor | None = None  # precomputed (layers); otherwise computed from slices
    detail: dict = field(default_factory=dict)


def unit_scores(group: PruneGroup, weight_scores: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Per-unit score: ``weight_scores(param)`` summed over the slices each unit owns."""
    import torch

    if group.scores is not None:
        return group.scores.double()
    total = torch.zeros(group.size, dtype=torch.float64)
    for s in group.slices:
        per_elem = weight_scores(s.param).double()
        if per_elem.dim() == 0:
            continue
        dims = [d for d in range(per_elem.dim()) if d != s.dim]
        along = per_elem.sum(dim=dims) if dims else per_elem
        total.index_add_(0, s.units, along[s.positions])
    return total


def magnitude(param: torch.Tensor) -> torch.Tensor:
    """Squared weight: the group's L2 norm squared once summed over its slices."""
    return param.detach().float() ** 2


def select(groups: Sequence[PruneGroup], scores: Mapping[int, torch.Tensor], sparsity: float,
           scope: str, normalize: bool) -> dict[int, list[int]]:
    """Units to keep per group (keyed by ``id(group)``), removing ``sparsity`` of the units.

    ``scope="layer"`` removes the same fraction from every group; ``"global"`` ranks all units
    of the groups together (scores divided by their group's mean when ``normalize``, so layers of
    different scale compete fairly). Every group keeps at least ``min_keep`` units.
    """
    import torch

    keep: dict[int, list[int]] = {}
    if scope == "layer":
        for g in groups:
            n_remove = min(int(g.size * sparsity), g.size - g.min_keep)
            order = torch.argsort(scores[id(g)], stable=True)
            removed = set(order[:max(n_remove, 0)].tolist())
            keep[id(g)] = [i for i in range(g.size) if i not in removed]
        return keep
    flat: list[tuple[float, int, int]] = []
    for gi, g in enumerate(groups):
        s = scores[id(g)]
        if normalize:
            s = s / s.mean().clamp_min(1e-30)
        flat += [(float(v), gi, u) for u, v in enumerate(s.tolist())]
    flat.sort(key=lambda t: t[0])
    budget = int(sum(g.size for g in groups) * sparsity)
    left = [g.size for g in groups]
    removed_by: list[set[int]] = [set() for _ in groups]
    for _, gi, u in flat:
        if budget <= 0:
            break
        if left[gi] > groups[gi].min_keep:
            removed_by[gi].add(u)
            left[gi] -= 1
            budget -= 1
    for gi, g in enumerate(groups):
        keep[id(g)] = [i for i in range(g.size) if i not in removed_by[gi]]
    return keep


def arange_units(n_units: int, width: int, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and owners for ``n_units`` contiguous blocks of ``width`` starting at ``offset``."""
    import torch

    positions = torch.arange(n_units * width) + offset
    return positions, torch.arange(n_units).repeat_interleave(width)


@dataclass
class LayerReport:
    """What one group (a layer, block or channel space) had and kept."""

    name: str
    target: str
    unit: str
    before: int
    after: int
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"name": self.name, "target": self.target, "unit": self.unit, "before": self.before,
                "after": self.after, "removed": self.before - self.after, **self.detail}
