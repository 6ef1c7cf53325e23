"""Hidden-state matching for distillation: which student layer imitates which teacher layer, and
forward hooks that capture their outputs.

Names are module paths as the user writes them (``bert.encoder.layer.0``), without the ``inner.``
of edgekit's source wrapper. Without a map, the largest ``ModuleList`` of each model (a
transformer's layers, a network's stages) is matched evenly, the last block onto the last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from edgekit.errors import ConfigError


def module_names(model: Any) -> list[str]:
    """Names of a model's submodules as a user writes them (without edgekit's ``inner.`` wrapper)."""
    root = model_of(model)
    names = [n for n, _ in root.named_modules() if n]
    inner = [n[len("inner."):] for n in names if n.startswith("inner.")]
    return inner if hasattr(root, "inner") and inner else names


def model_of(model: Any) -> Any:
    """The nn.Module of a ModelSource, or the model itself."""
    return model.module if hasattr(model, "module") and hasattr(model, "input_names") else model


def submodule(root: Any, name: str, role: str) -> Any:
    for candidate in (name, f"inner.{name}"):
        try:
            return root.get_submodule(candidate)
        except AttributeError:
            continue
    from edgekit.options import did_you_mean

    known = module_names(root)
    raise ConfigError(f"the {role} has no layer named {name!r}",
                      fix=f"{did_you_mean(name, known)}layer names look like: {', '.join(known[:8])}")


def blocks(root: Any) -> tuple[str, int] | None:
    """The longest ``ModuleList`` (a transformer's layers, a network's stages): name and length."""
    from torch import nn

    best = None
    for name, mod in root.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and (best is None or len(mod) > best[1]):
            best = (name, len(mod))
    return best


def derive_layer_map(teacher: Any, student: Any) -> dict[str, str]:
    """Student block -> teacher block, evenly spaced, the last onto the last."""
    t, s = blocks(model_of(teacher)), blocks(model_of(student))
    if t is None or s is None:
        raise ConfigError("no repeated blocks (a ModuleList) to match hidden states between teacher and student",
                          fix="give layer_map: {student_layer: teacher_layer, ...}, or hidden_weight: 0")
    return {f"{strip_wrapper(s[0])}.{i}": f"{strip_wrapper(t[0])}.{max(0, round((i + 1) * t[1] / s[1]) - 1)}"
            for i in range(s[1])}


def non_width(x: Any) -> list[int]:
    """The sizes other than the width (channels of NCHW maps, else the last axis)."""
    width = 1 if x.dim() == 4 else x.dim() - 1
    return [d for j, d in enumerate(x.shape) if j != width]


def strip_wrapper(name: str) -> str:
    return name[len("inner."):] if name.startswith("inner.") else name


def tensor_of(out: Any) -> Any:
    """The hidden state in a block's output: the tensor, or the first of a tuple/ModelOutput."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)) and out:
        return tensor_of(out[0])
    raise ConfigError(f"a matched layer returned {type(out).__name__}, not a tensor",
                      fix="map layers whose output is a tensor (or a tuple starting with one)")


class Hooks:
    """Forward hooks that keep the last output of each named layer."""

    def __init__(self, modules: list[Any]) -> None:
        self.values: list[Any] = [None] * len(modules)
        self.handles = [m.register_forward_hook(self._keep(i)) for i, m in enumerate(modules)]

    def _keep(self, i: int) -> Callable[..., None]:
        def hook(_mod: Any, _inp: Any, out: Any) -> None:
            self.values[i] = tensor_of(out)
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
