"""Data-free and data-light fixes that make a CNN quantize better, on the PyTorch module before export.

- :func:`fold_batchnorm`: a batch norm right after a convolution (or Linear) in an ``nn.Sequential``
  is folded into its weights and bias (exact in eval mode); the quantizer then sees the weights the
  runtime multiplies.
- :func:`equalize`: cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight
  Equalization and Bias Correction", 2019). For consecutive convolutions ``conv1 -> act -> conv2``
  in an ``nn.Sequential`` (act: none, ReLU or ReLU6), output channel ``i`` of conv1 is divided by
  ``s_i = sqrt(r1_i / r2_i)`` and input channel ``i`` of conv2 multiplied by it (``r``: the largest
  absolute weight of the channel), which evens out the channel ranges of both weights and of the
  activation between them. ReLU is positively homogeneous, so this is exact; ReLU6 is not (it clips
  at 6): a channel whose pre-activation reached 6 on the calibration data keeps ``s_i = 1``, and
  the others get ``s_i >= max_i / 6`` so that they still never reach the clip on that data.
- :func:`correct_bias`: empirical bias correction. Weight rounding shifts each output channel's mean
  by ``E[conv(x, Q(W) - W)]``; it is measured on the calibration inputs (float model) and subtracted
  from the bias, for the quantizer's weight grid (per output channel, symmetric, ``qmax`` levels).

Each returns what it did, for the manifest. They modify the module in place (callers copy it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

RELU6_CLIP = 6.0
SCALE_LIMITS = (1e-4, 1e4)


@dataclass
class Pair:
    """conv1 -> act -> conv2 inside one ``nn.Sequential``."""

    first: str
    second: str
    act: str  # "none", "relu" or "relu6"


@dataclass
class EqualizeReport:
    pairs: list[Pair] = field(default_factory=list)
    iterations: int = 0
    relu6_pinned: int = 0  # channels kept at scale 1 because their ReLU6 clipped on the data
    relu6_limited: int = 0  # channels whose scale was raised so they still never reach the clip
    scale_range: tuple[float, float] = (1.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": [f"{p.first} -{p.act}-> {p.second}" for p in self.pairs], "iterations": self.iterations,
                "relu6_channels_pinned": self.relu6_pinned, "relu6_channels_limited": self.relu6_limited,
                "scale_range": [round(v, 4) for v in self.scale_range]}


def _children(module: Any) -> Iterator[tuple[str, list[tuple[str, Any]]]]:
    """(prefix, [(qualified name, child)...]) for every nn.Sequential in ``module``."""
    from torch import nn

    for name, m in module.named_modules():
        if isinstance(m, nn.Sequential):
            prefix = f"{name}." if name else ""
            yield prefix, [(prefix + k, c) for k, c in m.named_children()]


def _per_out_channel(v: Any, weight: Any) -> Any:
    """``v`` (one value per output channel) shaped to broadcast over ``weight``'s other axes."""
    return v.reshape(-1, *[1] * (weight.dim() - 1))


def _set_child(module: Any, qualified: str, child: Any) -> None:
    parent_name, _, leaf = qualified.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, leaf, child)


def fold_batchnorm(module: Any) -> list[str]:
    """Fold every BatchNorm that directly follows a Conv2d or Linear in an ``nn.Sequential``; the
    norm becomes ``nn.Identity``. Returns the folded layers' names."""
    import torch
    from torch import nn

    folded = []
    for _, children in list(_children(module)):
        for (name, layer), (bn_name, bn) in zip(children, children[1:]):
            if not isinstance(layer, (nn.Conv2d, nn.Linear)) or not isinstance(bn, (nn.BatchNorm2d, nn.BatchNorm1d)):
                continue
            out = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
            if bn.num_features != out or bn.running_mean is None:
                continue
            with torch.no_grad():
                gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
                beta = bn.bias if bn.affine else torch.zeros_like(bn.running_var)
                scale = gamma / torch.sqrt(bn.running_var + bn.eps)
                bias = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
                layer.weight.mul_(_per_out_channel(scale, layer.weight))
                layer.bias = nn.Parameter((bias - bn.running_mean) * scale + beta)
            _set_child(module, bn_name, nn.Identity())
            folded.append(name)
    return folded


def find_pairs(module: Any) -> list[Pair]:
    """Consecutive Conv2d pairs in each ``nn.Sequential`` with at most a ReLU/ReLU6 between them
    (identities and dropout skipped: they are no-ops in eval mode)."""
    from torch import nn

    pairs = []
    for _, children in _children(module):
        items = [(n, c) for n, c in children if not isinstance(c, (nn.Identity, nn.Dropout))]
        for i, (name, layer) in enumerate(items):
            if not isinstance(layer, nn.Conv2d):
                continue
            act, j = "none", i + 1
            if j < len(items) and isinstance(items[j][1], (nn.ReLU, nn.ReLU6)):
                act, j = ("relu6" if isinstance(items[j][1], nn.ReLU6) else "relu"), j + 1
            if j < len(items) and isinstance(items[j][1], nn.Conv2d) and items[j][1].in_channels == layer.out_channels:
                pairs.append(Pair(name, items[j][0], act))
    return pairs


def _input_channel_index(conv: Any) -> Any:
    """For each input channel of ``conv``: (output channels it feeds, its index in the weight's dim 1)."""
    per_group_in = conv.in_channels // conv.groups
    per_group_out = conv.out_channels // conv.groups
    return [(slice((i // per_group_in) * per_group_out, (i // per_group_in + 1) * per_group_out), i % per_group_in)
            for i in range(conv.in_channels)]


def channel_max(module: Any, names: Iterable[str], feeds: list[tuple]) -> dict[str, np.ndarray]:
    """The largest value of each output channel of the named layers on ``feeds`` (input tuples)."""
    import torch

    found: dict[str, Any] = {}
    hooks = []
    for name in names:
        def hook(_m: Any, _i: Any, out: Any, name: str = name) -> None:
            m = out.detach().transpose(0, 1).reshape(out.shape[1], -1).amax(1)
            found[name] = m if name not in found else torch.maximum(found[name], m)
        hooks.append(module.get_submodule(name).register_forward_hook(hook))
    _run_hooked(module, hooks, feeds)
    return {k: v.float().numpy() for k, v in found.items()}


def _run_hooked(module: Any, hooks: list[Any], feeds: list[tuple]) -> None:
    """Run ``module`` on every feed (no gradients), then remove ``hooks`` whatever happens."""
    import torch

    try:
        with torch.inference_mode():
            for args in feeds:
                module(*args)
    finally:
        for h in hooks:
            h.remove()


def equalize(module: Any, feeds: list[tuple] | None = None, *, iterations: int = 20,
             tolerance: float = 1e-3) -> EqualizeReport:
    """Cross-layer equalization of every pair :func:`find_pairs` finds (after :func:`fold_batchnorm`,
    so the scales act on the folded weights); ``feeds`` (calibration inputs) are needed where a
    ReLU6 sits between a pair: without them those pairs are left alone."""
    import torch

    report = EqualizeReport()
    pairs = [p for p in find_pairs(module) if p.act != "relu6" or feeds]
    peaks = channel_max(module, {p.first for p in pairs if p.act == "relu6"}, feeds or [])
    lo, hi = np.inf, -np.inf
    pinned: set[tuple[str, int]] = set()
    limited: set[tuple[str, int]] = set()
    for it in range(iterations):
        change = 0.0
        for p in pairs:
            c1, c2 = module.get_submodule(p.first), module.get_submodule(p.second)
            w1, w2 = c1.weight.detach(), c2.weight.detach()
            r1 = w1.abs().reshape(w1.shape[0], -1).amax(1).double().numpy()
            index = _input_channel_index(c2)
            r2 = np.array([float(w2[rows, k].abs().max()) for rows, k in index])
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            s = np.clip(s, *SCALE_LIMITS)
            if p.act == "relu6":  # keep every channel on the same side of the clip as before
                peak = peaks[p.first]
                clipped = peak >= RELU6_CLIP
                floor = np.where(clipped, 1.0, peak / RELU6_CLIP)
                raise_ = ~clipped & (s < floor)
                pinned |= {(p.first, int(i)) for i in np.flatnonzero(clipped)}
                limited |= {(p.first, int(i)) for i in np.flatnonzero(raise_)}
                s = np.where(clipped, 1.0, np.maximum(s, floor))
                peaks[p.first] = peak / s
            st = torch.from_numpy(s).to(w1.dtype)
            with torch.no_grad():
                c1.weight.div_(_per_out_channel(st, w1))
                if c1.bias is not None:
                    c1.bias.div_(st)
                for i, (rows, k) in enumerate(index):
                    c2.weight[rows, k].mul_(st[i])
            change = max(change, float(np.abs(np.log(s)).max(initial=0.0)))
            lo, hi = min(lo, float(s.min(initial=1.0))), max(hi, float(s.max(initial=1.0)))
        report.iterations = it + 1
        if change < tolerance:
            break
    report.pairs = pairs
    report.relu6_pinned, report.relu6_limited = len(pinned), len(limited)
    report.scale_range = (lo, hi) if pairs else (1.0, 1.0)
    return report


def quantize_weight(w: Any, qmax: int, per_channel: bool = True) -> Any:
    """Symmetric rounding to ``[-qmax, qmax]`` steps of ``max|w| / qmax``, per output channel or
    for the whole tensor."""
    import torch

    absmax = w.abs().reshape(w.shape[0], -1).amax(1) if per_channel else w.abs().max().expand(w.shape[0])
    scale = _per_out_channel(absmax.clamp_min(1e-12) / qmax, w)
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def correct_bias(module: Any, feeds: list[tuple], qmax: int, *, per_channel: bool = True,
                 skip: Iterable[str] = ()) -> dict[str, float]:
    """Subtract from each Conv2d/Linear bias the mean output shift its weight rounding causes on
    ``feeds`` (calibration inputs through the float model); a layer without a bias gets one.
    Returns the largest absolute shift per layer."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    skip = set(skip)
    layers = {n: m for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in skip}
    sums: dict[str, Any] = {}
    counts: dict[str, int] = dict.fromkeys(layers, 0)
    deltas = {n: quantize_weight(m.weight.detach(), qmax, per_channel) - m.weight.detach() for n, m in layers.items()}

    def hook_for(name: str, m: Any) -> Any:
        def hook(_m: Any, args: tuple, _out: Any) -> None:
            x = args[0]
            if isinstance(m, nn.Conv2d):
                err = F.conv2d(x, deltas[name], None, m.stride, m.padding, m.dilation, m.groups)
                shift, n = err.sum((0, 2, 3)), err.shape[0] * err.shape[2] * err.shape[3]
            else:
                err = F.linear(x, deltas[name]).reshape(-1, m.out_features)
                shift, n = err.sum(0), err.shape[0]
            sums[name] = shift.double() + sums.get(name, 0)
            counts[name] += n
        return hook

    _run_hooked(module, [m.register_forward_hook(hook_for(n, m)) for n, m in layers.items()], feeds)
    shifts = {}
    for name, m in layers.items():
        if not counts[name]:
            continue  # not reached by the data
        mean = (sums[name] / counts[name]).to(m.weight.dtype)
        with torch.no_grad():
            if m.bias is None:
                m.bias = nn.Parameter(torch.zeros(mean.shape[0], dtype=m.weight.dtype))
            m.bias.sub_(mean)
        shifts[name] = float(mean.abs().max())
    return shifts
