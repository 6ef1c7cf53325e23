"""One-layer perturbations for the sensitivity report, applied in place and undone.

``quantize``: the layer's weight fake-quantized symmetrically per output channel (int8 by default,
what every backend's int8 does) and its float input fake-quantized per tensor, asymmetric uint8
over the batch's own range (what dynamic int8 does at run time). ``prune``: the ``amount`` share of
its output units with the smallest L2 norm zeroed (weights and bias), a local magnitude mask.
Each registers under its mode; a perturbation returns the function that undoes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgekit.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    bits: int = 8  # weight bits (quantize)
    activation_bits: int = 8  # input bits (quantize); 0 leaves inputs float
    amount: float = 0.5  # share of output units zeroed (prune)


Undo = Callable[[], None]
Perturbation = Callable[[Any, Settings], Undo]
PERTURBATIONS: dict[str, Perturbation] = {}
# classes whose weight stores the output units on axis 1 (Embedding: the table's columns are its
# features; GPT-2's Conv1D keeps [in, out])
OUTPUT_AXIS_1 = frozenset({"Embedding", "EmbeddingBag", "Conv1D", "ConvTranspose1d", "ConvTranspose2d",
                           "ConvTranspose3d"})


def perturbation(mode: str) -> Callable[[Perturbation], Perturbation]:
    def deco(fn: Perturbation) -> Perturbation:
        PERTURBATIONS[mode] = fn
        return fn

    return deco


def get(mode: str) -> Perturbation:
    if mode not in PERTURBATIONS:
        raise ConfigError(f"unknown sensitivity mode {mode!r}", fix=f"use one of: {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[mode]


def _axis(layer: Any) -> int:
    return 1 if type(layer).__name__ in OUTPUT_AXIS_1 else 0


def fake_quantize_weight(w: Any, bits: int, axis: int) -> Any:
    """Symmetric per-channel round trip along ``axis`` (scale = max |w| / (2^(bits-1) - 1))."""
    import torch

    qmax = 2 ** (bits - 1) - 1
    dims = [d for d in range(w.dim()) if d != axis]
    scale = w.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / qmax
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def fake_quantize_activation(x: Any, bits: int) -> Any:
    """Asymmetric per-tensor round trip over ``x``'s own range, zero exactly representable."""
    import torch

    qmax = 2 ** bits - 1
    lo, hi = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    scale = torch.clamp((hi - lo) / qmax, min=1e-12)
    zero = torch.round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, qmax) - zero) * scale


@perturbation("quantize")
def quantize(layer: Any, s: Settings) -> Undo:
    import torch

    weight = layer._parameters["weight"]
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.copy_(fake_quantize_weight(saved.float(), s.bits, _axis(layer)).to(saved.dtype))

    def quantize_inputs(module: Any, args: tuple) -> tuple:
        return tuple(fake_quantize_activation(a, s.activation_bits)
                     if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    hook = layer.register_forward_pre_hook(quantize_inputs) if s.activation_bits else None

    def undo() -> None:
        with torch.no_grad():
            weight.copy_(saved)
        if hook is not None:
            hook.remove()

    return undo


@perturbation("prune")
def prune(layer: Any, s: Settings) -> Undo:
    import torch

    weight = layer._parameters["weight"]
    bias = layer._parameters.get("bias")
    axis = _axis(layer)
    saved_w = weight.detach().clone()
    saved_b = bias.detach().clone() if bias is not None else None
    units = weight.shape[axis]
    k = int(round(s.amount * units))
    if k:
        dims = [d for d in range(weight.dim()) if d != axis]
        norms = saved_w.float().pow(2).sum(dim=dims)
        drop = torch.argsort(norms)[:k]
        with torch.no_grad():
            weight.index_fill_(axis, drop, 0.0)
            if bias is not None and bias.dim() == 1 and bias.shape[0] == units:
                bias.index_fill_(0, drop, 0.0)

    def undo() -> None:
        with torch.no_grad():
            weight.copy_(saved_w)
            if bias is not None and saved_b is not None:
                bias.copy_(saved_b)

    return undo
