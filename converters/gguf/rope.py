"""Rotary-embedding settings for GGUF: ``rope.freq_base``, scaling keys, llama3's factors and
Phi-3's long-rope factors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgekit.errors import ExportError

# rope_type -> what llama.cpp is told; llama3 scaling also needs a rope_freqs tensor, long rope
# (Phi-3's "longrope", once "su") the rope_factors_long/short tensors and an attention factor
ROPE_SCALING: dict[str, str | None] = {"default": None, "linear": "linear", "llama3": None, "yarn": "yarn",
                                       "longrope": None, "su": None}
LONG_ROPE = ("longrope", "su")


def rope_settings(config: Any) -> dict[str, Any]:
    """Rotary settings from either config layout: ``rope_parameters`` (transformers 5) or
    ``rope_theta`` + ``rope_scaling`` (transformers 4)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "full_attention" in params and isinstance(params["full_attention"], dict):  # Gemma 3: per layer type
        params = dict(params["full_attention"])
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", getattr(config, "rope_theta", None))
    kind = merged.get("rope_type", merged.get("type", "default")) or "default"
    return {**merged, "rope_theta": float(theta) if theta is not None else None, "rope_type": kind}


def local_rope_theta(config: Any) -> float | None:
    """Gemma 3's sliding-window layers rotate with their own base."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    local = params.get("sliding_attention")
    if isinstance(local, dict) and local.get("rope_theta") is not None:
        return float(local["rope_theta"])
    value = getattr(config, "rope_local_base_freq", None)
    return float(value) if value is not None else None


def rope_keys(arch: str, config: Any) -> dict[str, Any]:
    """``{arch}.rope.*`` keys for a config's rotary settings."""
    rope = rope_settings(config)
    kind = rope["rope_type"]
    if kind not in ROPE_SCALING:
        raise ExportError(f"rope scaling {kind!r} is not supported by edgekit's GGUF writer",
                          fix=f"supported rope types: {', '.join(ROPE_SCALING)}")
    keys: dict[str, Any] = {}
    if rope["rope_theta"] is not None:
        keys[f"{arch}.rope.freq_base"] = float(rope["rope_theta"])
    if ROPE_SCALING[kind] in ("linear", "yarn"):
        keys[f"{arch}.rope.scaling.type"] = ROPE_SCALING[kind]
        keys[f"{arch}.rope.scaling.factor"] = float(rope.get("factor", 1.0))
        if ROPE_SCALING[kind] == "yarn" and rope.get("original_max_position_embeddings"):
            keys[f"{arch}.rope.scaling.original_context_length"] = int(rope["original_max_position_embeddings"])
    return keys


def llama3_rope_factors(rope: dict[str, Any], dim: int) -> list[float]:
    """Per-frequency divisors for llama3 rope scaling (Llama 3.1/3.2), Meta's formula; llama.cpp
    reads them from the ``rope_freqs.weight`` tensor. Computed in float32 from float32 inverse
    frequencies, as llama.cpp's converter does, so the tensor is bit-identical to its."""
    import torch

    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    inv_freq = 1.0 / (float(rope["rope_theta"]) ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factors = []
    for wavelen in 2 * math.pi / inv_freq:  # float32 element by element
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(float(1 / ((1 - smooth) / factor + smooth)))
    return factors


def long_rope_factors(rope: dict[str, Any], config: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Phi-3's per-frequency long and short factors (``rope_factors_long/short.weight``, float32),
    checked against the rotary size as llama.cpp's converter checks them; None without them."""
    long, short = rope.get("long_factor"), rope.get("short_factor")
    if not long:
        return None
    n_embd, n_head = int(config.hidden_size), int(config.num_attention_heads)
    dims = int(float(rope.get("partial_rotary_factor", 1.0)) * n_embd) // n_head
    if not short or len(long) != len(short) or 2 * len(long) != dims:
        raise ExportError(f"long rope needs {dims // 2} long and short factors (one per rotary frequency), "
                          f"got {len(long)} and {len(short or [])}",
                          fix="check rope_scaling.long_factor and short_factor in config.json")
    return np.asarray(long, dtype=np.float32), np.asarray(short, dtype=np.float32)


def long_rope_attn_factor(config: Any) -> float | None:
    """The attention scale llama.cpp applies with long rope: sqrt(1 + ln(s) / ln(original context))
    for a context stretched ``s`` times (as its converter computes it; None without long factors)."""
    rope = rope_settings(config)
    if rope["rope_type"] not in LONG_ROPE or not rope.get("long_factor"):
        return None
    orig = float(rope.get("original_max_position_embeddings")
                 or config.original_max_position_embeddings)
    scale = float(config.max_position_embeddings) / orig
    return math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0
