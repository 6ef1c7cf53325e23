"""Transformer structures as prunable groups: attention heads, FFN units, whole layers.

Blocks are found by layout (``_layouts.LAYOUTS``): an ``nn.ModuleList`` whose every
element has all the paths of one layout is a layer stack. Each cut slices the projection
weights (``nn.Linear`` or Hugging Face's transposed ``Conv1D``), updates the attention module's
own attributes, and, when every layer ends up the same size, the model's config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgekit.optimize.prune._layouts import LAYOUTS, BlockLayout
from edgekit.optimize.prune._units import PruneGroup, Slice, arange_units

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class Stack:
    """One ``nn.ModuleList`` of transformer blocks of one layout."""

    name: str  # module path of the ModuleList
    parent: Any
    attr: str
    layout: BlockLayout

    def blocks(self) -> list[Any]:
        return list(getattr(self.parent, self.attr))


def get(module: Any, path: str) -> Any:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def find_stacks(model: nn.Module) -> list[Stack]:
    """Every ModuleList whose elements all match one layout."""
    from torch import nn

    stacks = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        for layout in LAYOUTS:
            if all(all(get(b, p) is not None for p in layout.paths()) for b in mod):
                parent_name, _, attr = name.rpartition(".")
                stacks.append(Stack(name, get(model, parent_name) if parent_name else model, attr, layout))
                break
    return stacks


# --- projections: nn.Linear stores weight (out, in); transformers' Conv1D stores (in, out) ---

def _is_conv1d(mod: Any) -> bool:
    return type(mod).__name__ == "Conv1D" and hasattr(mod, "nf")


def out_axis(mod: Any) -> int:
    return 1 if _is_conv1d(mod) else 0


def in_axis(mod: Any) -> int:
    return 0 if _is_conv1d(mod) else 1


def out_width(mod: Any) -> int:
    return int(mod.weight.shape[out_axis(mod)])


def _param(t: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    from torch import nn

    return nn.Parameter(t.contiguous().clone(), requires_grad=like.requires_grad)


def keep_out(mod: Any, idx: torch.Tensor) -> None:
    """Keep output features ``idx`` (weight rows of a Linear, columns of a Conv1D, and the bias)."""
    mod.weight = _param(mod.weight.detach().index_select(out_axis(mod), idx), mod.weight)
    if getattr(mod, "bias", None) is not None:
        mod.bias = _param(mod.bias.detach().index_select(0, idx), mod.bias)
    if _is_conv1d(mod):
        mod.nf = len(idx)
    else:
        mod.out_features = len(idx)


def keep_in(mod: Any, idx: torch.Tensor) -> None:
    """Keep input features ``idx``."""
    mod.weight = _param(mod.weight.detach().index_select(in_axis(mod), idx), mod.weight)
    if _is_conv1d(mod):
        mod.nx = len(idx)
    else:
        mod.in_features = len(idx)


def _out_slices(mod: Any, positions: torch.Tensor, units: torch.Tensor) -> list[Slice]:
    slices = [Slice(mod.weight, out_axis(mod), positions, units)]
    if getattr(mod, "bias", None) is not None:
        slices.append(Slice(mod.bias, 0, positions, units))
    return slices


# --- attention heads ---

@dataclass
class HeadShape:
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def rep(self) -> int:  # query heads per KV head
        return self.heads // self.kv_heads


def head_shape(block: Any, layout: BlockLayout) -> HeadShape:
    att = layout.attention
    assert att is not None
    hd = int(getattr(get(block, att.owner), att.head_dim_attr))
    if att.qkv:
        heads = out_width(get(block, att.qkv)) // (3 * hd)
        return HeadShape(heads, heads, hd)
    return HeadShape(out_width(get(block, att.q)) // hd, out_width(get(block, att.k)) // hd, hd)


def _head_positions(units: torch.Tensor, width: int) -> torch.Tensor:
    import torch

    return (units[:, None] * width + torch.arange(width)[None, :]).reshape(-1)


def head_group(name: str, block: Any, layout: BlockLayout) -> PruneGroup:
    """Units are KV heads (with their ``rep`` query heads); for plain multi-head attention, heads."""
    att = layout.attention
    assert att is not None
    shape = head_shape(block, layout)
    n, hd, q_w = shape.kv_heads, shape.head_dim, shape.rep * shape.head_dim
    q_pos, q_units = arange_units(n, q_w)
    kv_pos, kv_units = arange_units(n, hd)
    o = get(block, att.o)
    slices = [Slice(o.weight, in_axis(o), q_pos, q_units)]
    if att.qkv:
        qkv = get(block, att.qkv)
        width = shape.heads * hd
        for part in range(3):
            slices += _out_slices(qkv, q_pos + part * width, q_units)
    else:
        slices += _out_slices(get(block, att.q), q_pos, q_units)
        for path in (att.k, att.v):
            slices += _out_slices(get(block, path), kv_pos, kv_units)

    def apply(keep: list[int]) -> None:
        import torch

        units = torch.tensor(keep, dtype=torch.long)
        q_idx, kv_idx = _head_positions(units, q_w), _head_positions(units, hd)
        keep_in(o, q_idx)
        if att.qkv:
            width = shape.heads * hd
            keep_out(get(block, att.qkv), torch.cat([q_idx, q_idx + width, q_idx + 2 * width]))
        else:
            keep_out(get(block, att.q), q_idx)
            keep_out(get(block, att.k), kv_idx)
            keep_out(get(block, att.v), kv_idx)
        values = {"heads": len(keep) * shape.rep, "kv_heads": len(keep), "width": len(keep) * q_w}
        owner = get(block, att.owner)
        for attr, what in att.owner_attrs.items():
            if hasattr(owner, attr):
                setattr(owner, attr, values[what])

    unit = "heads" if shape.rep == 1 else "kv-groups"
    return PruneGroup(f"{name}.attention", "heads", unit, n, slices, apply,
                      detail={"head_dim": hd, "query_heads_per_unit": shape.rep})


# --- FFN hidden units ---

def ffn_group(name: str, block: Any, layout: BlockLayout) -> PruneGroup:
    ffn = layout.ffn
    assert ffn is not None
    ups = [get(block, p) for p in ffn.up]
    down = get(block, ffn.down)
    n = out_width(ups[0])
    pos, units = arange_units(n, 1)
    slices = [Slice(down.weight, in_axis(down), pos, units)]
    for up in ups:
        slices += _out_slices(up, pos, units)

    def apply(keep: list[int]) -> None:
        import torch

        idx = torch.tensor(keep, dtype=torch.long)
        for up in ups:
            keep_out(up, idx)
        keep_in(down, idx)

    return PruneGroup(f"{name}.ffn", "ffn", "neurons", n, slices, apply)


# --- whole layers ---

def hf_configs(model: nn.Module) -> list[Any]:
    """The distinct Hugging Face configs held by ``model``'s submodules."""
    found = {id(c): c for c in (getattr(m, "config", None) for m in model.modules())
             if c is not None and hasattr(c, "model_type")}
    return list(found.values())


def layer_group(stack: Stack, display: Callable[[str], str], scores: torch.Tensor | None,
                protected: Sequence[int] = (), configs: Sequence[Any] = ()) -> PruneGroup:
    """Drop whole blocks; ``scores`` rank them (lowest first out); ``protected`` are never dropped."""
    import torch
    from torch import nn

    blocks = stack.blocks()
    if scores is not None and protected:
        scores = scores.clone()
        scores[list(protected)] = float("inf")

    def apply(keep: list[int]) -> None:
        kept = [blocks[i] for i in keep]
        for new_idx, block in enumerate(kept):
            for sub in block.modules():  # KV-cache slots are indexed by layer
                if isinstance(getattr(sub, "layer_idx", None), int):
                    sub.layer_idx = new_idx
        setattr(stack.parent, stack.attr, nn.ModuleList(kept))
        if isinstance(getattr(stack.parent, "num_layers", None), int):
            stack.parent.num_layers = len(kept)
        for config in configs:  # per-layer attention kinds (Qwen2, Gemma) follow the kept layers
            types = getattr(config, "layer_types", None)
            if isinstance(types, list) and len(types) == len(blocks):
                config.layer_types = [types[i] for i in keep]

    return PruneGroup(display(stack.name), "layers", "layers", len(blocks), [], apply,
                      scores=scores if scores is not None else torch.zeros(len(blocks)),
                      detail={"family": stack.layout.family})


def block_influence(model: nn.Module, stack: Stack, feeds: Iterable[Any],
                    call: Callable[[Any], Any]) -> torch.Tensor:
    """Per block, mean ``1 - cos(input, output)`` of the hidden states over every token of ``feeds``.

    A block whose output stays close to its input changes the residual stream least.
    """
    import torch

    blocks = stack.blocks()
    totals = torch.zeros(len(blocks), dtype=torch.float64)
    counts = torch.zeros(len(blocks), dtype=torch.float64)

    def first_tensor(x: Any) -> torch.Tensor | None:
        if isinstance(x, torch.Tensor):
            return x
        if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
            return x[0]
        return None

    def hook(i: int) -> Any:
        def fn(_m: Any, args: tuple, kwargs: dict, out: Any) -> None:
            h_in = first_tensor(args) if args else kwargs.get("hidden_states", kwargs.get("src"))
            h_out = first_tensor(out)
            if h_in is None or h_out is None or h_in.shape != h_out.shape:
                return
            cos = torch.nn.functional.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
            totals[i] += float((1 - cos).sum())
            counts[i] += cos.numel()
        return fn

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            for feed in feeds:
                call(feed)
    finally:
        for h in handles:
            h.remove()
    return totals / counts.clamp_min(1)


def update_configs(model: nn.Module, stacks: Sequence[Stack]) -> list[str]:
    """Write uniform per-layer sizes back to the Hugging Face config; return notes for what cannot."""
    notes: list[str] = []
    configs = hf_configs(model)
    if not configs:
        return notes
    for stack in stacks:
        layout, blocks = stack.layout, stack.blocks()
        updates: dict[str, Any] = {}
        if layout.layers_config:
            updates[layout.layers_config] = len(blocks)
        if layout.ffn and layout.ffn.config:
            widths = {out_width(get(b, layout.ffn.up[0])) for b in blocks}
            if len(widths) == 1:
                updates[layout.ffn.config] = widths.pop()
            else:
                notes.append(f"{stack.name}: FFN sizes differ per layer ({sorted(widths)}); the config keeps "
                             f"{layout.ffn.config} unchanged, so export the module from memory "
                             "(scope='layer' keeps every layer the same size)")
        if layout.attention:
            shapes = {(s.heads, s.kv_heads, s.head_dim) for s in (head_shape(b, layout) for b in blocks)}
            if len(shapes) > 1:
                notes.append(f"{stack.name}: head counts differ per layer; the config keeps its head count, "
                             "so export the module from memory (GGUF needs scope='layer')")
            elif layout.attention.config:
                heads, kv, hd = shapes.pop()
                keys = layout.attention.config
                updates.update({keys[0]: heads, keys[1]: kv, keys[2]: hd})
            else:
                heads = next(iter(shapes))[0]
                if any(heads != getattr(c, "num_attention_heads", heads) for c in configs):
                    notes.append(f"{stack.name}: {layout.family} derives the head size from "
                                 "hidden_size / num_attention_heads, so its config cannot describe fewer "
                                 "heads: export the pruned module from memory (ONNX, OpenVINO, TFLite), not "
                                 "through save_pretrained or GGUF")
        for config in configs:
            for key, value in updates.items():
                setattr(config, key, value)
    return notes
