"""Architecture tables for the GGUF writer: Hugging Face tensor names -> llama.cpp's, and config
attributes -> GGUF hyper-parameter keys. Each architecture is data; the writer has no branches
per model family.

Names in ``TensorRule.hf`` use ``{bid}`` for the block index. A Q or K projection of an
architecture whose llama.cpp graph uses "normal" (GPT-J, interleaved) rotary embedding is
marked ``ROPE_Q``/``ROPE_K``: Hugging Face stores it for the rotate-half (NeoX) layout, so its
rows are permuted per head on the way out. GPT-2's ``Conv1D`` stores weights input-major and is
transposed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from edgekit.errors import SourceError


class Transform(Enum):
    """What happens to a tensor between Hugging Face and GGUF."""

    NONE = "none"
    ROPE_Q = "rope_q"  # permute rows per attention head (n_head) for llama.cpp's rotary layout
    ROPE_K = "rope_k"  # the same with n_head_kv heads (grouped-query attention)
    TRANSPOSE = "transpose"  # Conv1D (GPT-2): [in, out] -> [out, in]


@dataclass(frozen=True)
class TensorRule:
    hf: str
    gguf: str
    transform: Transform = Transform.NONE
    optional: bool = False  # present only in some checkpoints (biases, an untied lm_head)


@dataclass(frozen=True)
class HParam:
    """A ``{arch}.KEY`` value: the first config attribute present, else ``derive(config)``."""

    key: str
    attrs: tuple[str, ...] = ()
    kind: type = int
    derive: Callable[[Any], Any] | None = None
    optional: bool = False  # leave the key out when no value is found


@dataclass(frozen=True)
class Arch:
    """One llama.cpp architecture and how a Hugging Face checkpoint maps onto it."""

    name: str  # general.architecture, as llama.cpp spells it
    hf_classes: tuple[str, ...]
    tensors: tuple[TensorRule, ...]
    hparams: tuple[HParam, ...]
    ignore: tuple[str, ...] = ()  # HF state-dict suffixes with no GGUF counterpart (buffers)
    embedding: str = "model.embed_tokens.weight"  # the table an untied lm_head falls back to
    lm_head: str = "lm_head.weight"
    rope: bool = True  # rotary embedding: write rope settings (and llama3 rope factors)


def head_dim(config: Any) -> int:
    """Per-head size: ``head_dim`` when the config sets it, else hidden / heads."""
    explicit = getattr(config, "head_dim", None)
    return int(explicit) if explicit else config.hidden_size // config.num_attention_heads


def _explicit_head_dim(config: Any) -> int | None:
    """``head_dim`` only when it differs from hidden / heads (Mistral-Nemo style): llama.cpp
    then needs key_length/value_length, otherwise it derives them itself."""
    hd = head_dim(config)
    return hd if hd != config.hidden_size // config.num_attention_heads else None


# Llama family: Llama 2/3, TinyLlama, SmolLM/SmolLM2, Mistral (GQA); names from LlamaForCausalLM
_LLAMA_BLOCK = (
    TensorRule("model.layers.{bid}.input_layernorm.weight", "blk.{bid}.attn_norm.weight"),
    TensorRule("model.layers.{bid}.self_attn.q_proj.weight", "blk.{bid}.attn_q.weight", Transform.ROPE_Q),
    TensorRule("model.layers.{bid}.self_attn.k_proj.weight", "blk.{bid}.attn_k.weight", Transform.ROPE_K),
    TensorRule("model.layers.{bid}.self_attn.v_proj.weight", "blk.{bid}.attn_v.weight"),
    TensorRule("model.layers.{bid}.self_attn.o_proj.weight", "blk.{bid}.attn_output.weight"),
    # attention_bias=True checkpoints; the Q/K biases follow their weights' permutation
    TensorRule("model.layers.{bid}.self_attn.q_proj.bias", "blk.{bid}.attn_q.bias", Transform.ROPE_Q, True),
    TensorRule("model.layers.{bid}.self_attn.k_proj.bias", "blk.{bid}.attn_k.bias", Transform.ROPE_K, True),
    TensorRule("model.layers.{bid}.self_attn.v_proj.bias", "blk.{bid}.attn_v.bias", optional=True),
    TensorRule("model.layers.{bid}.self_attn.o_proj.bias", "blk.{bid}.attn_output.bias", optional=True),
    TensorRule("model.layers.{bid}.post_attention_layernorm.weight", "blk.{bid}.ffn_norm.weight"),
    TensorRule("model.layers.{bid}.mlp.gate_proj.weight", "blk.{bid}.ffn_gate.weight"),
    TensorRule("model.layers.{bid}.mlp.up_proj.weight", "blk.{bid}.ffn_up.weight"),
    TensorRule("model.layers.{bid}.mlp.down_proj.weight", "blk.{bid}.ffn_down.weight"),
    # mlp_bias=True checkpoints
    TensorRule("model.layers.{bid}.mlp.gate_proj.bias", "blk.{bid}.ffn_gate.bias", optional=True),
    TensorRule("model.layers.{bid}.mlp.up_proj.bias", "blk.{bid}.ffn_up.bias", optional=True),
    TensorRule("model.layers.{bid}.mlp.down_proj.bias", "blk.{bid}.ffn_down.bias", optional=True),
)
_LLAMA_GLOBAL = (
    TensorRule("model.embed_tokens.weight", "token_embd.weight"),
    TensorRule("model.norm.weight", "output_norm.weight"),
    TensorRule("lm_head.weight", "output.weight", optional=True),  # absent when tied to the embedding
)
_DECODER_HPARAMS = (
    HParam("context_length", ("max_position_embeddings",)),
    HParam("embedding_length", ("hidden_size",)),
    HParam("block_count", ("num_hidden_layers",)),
    HParam("feed_forward_length", ("intermediate_size",)),
    HParam("attention.head_count", ("num_attention_heads",)),
    HParam("attention.head_count_kv", ("num_key_value_heads", "num_attention_heads")),
    HParam("attention.layer_norm_rms_epsilon", ("rms_norm_eps",), float),
    HParam("attention.key_length", derive=_explicit_head_dim, optional=True),
    HParam("attention.value_length", derive=_explicit_head_dim, optional=True),
    HParam("rope.dimension_count", derive=head_dim),
    HParam("vocab_size", ("vocab_size",)),
)

# Qwen2 / Qwen2.5: Llama's names plus q/k/v biases; llama.cpp runs it with NeoX rotary
# embedding, the layout Hugging Face stores, so nothing is permuted (names from Qwen2ForCausalLM)
_QWEN2_BLOCK = tuple(
    TensorRule(r.hf, r.gguf, Transform.NONE, r.optional) for r in _LLAMA_BLOCK
)

# GPT-2: learned positions, LayerNorm with bias, fused QKV Conv1D (names from GPT2LMHeadModel)
_GPT2_TENSORS = (
    TensorRule("transformer.wte.weight", "token_embd.weight"),
    TensorRule("transformer.wpe.weight", "position_embd.weight"),
    TensorRule("transformer.ln_f.weight", "output_norm.weight"),
    TensorRule("transformer.ln_f.bias", "output_norm.bias"),
    TensorRule("lm_head.weight", "output.weight", optional=True),
    TensorRule("transformer.h.{bid}.ln_1.weight", "blk.{bid}.attn_norm.weight"),
    TensorRule("transformer.h.{bid}.ln_1.bias", "blk.{bid}.attn_norm.bias"),
    TensorRule("transformer.h.{bid}.attn.c_attn.weight", "blk.{bid}.attn_qkv.weight", Transform.TRANSPOSE),
    TensorRule("transformer.h.{bid}.attn.c_attn.bias", "blk.{bid}.attn_qkv.bias"),
    TensorRule("transformer.h.{bid}.attn.c_proj.weight", "blk.{bid}.attn_output.weight", Transform.TRANSPOSE),
    TensorRule("transformer.h.{bid}.attn.c_proj.bias", "blk.{bid}.attn_output.bias"),
    TensorRule("transformer.h.{bid}.ln_2.weight", "blk.{bid}.ffn_norm.weight"),
    TensorRule("transformer.h.{bid}.ln_2.bias", "blk.{bid}.ffn_norm.bias"),
    TensorRule("transformer.h.{bid}.mlp.c_fc.weight", "blk.{bid}.ffn_up.weight", Transform.TRANSPOSE),
    TensorRule("transformer.h.{bid}.mlp.c_fc.bias", "blk.{bid}.ffn_up.bias"),
    TensorRule("transformer.h.{bid}.mlp.c_proj.weight", "blk.{bid}.ffn_down.weight", Transform.TRANSPOSE),
    TensorRule("transformer.h.{bid}.mlp.c_proj.bias", "blk.{bid}.ffn_down.bias"),
)
_GPT2_HPARAMS = (
    HParam("context_length", ("n_positions", "max_position_embeddings")),
    HParam("embedding_length", ("n_embd", "hidden_size")),
    HParam("block_count", ("n_layer", "num_hidden_layers")),
    HParam("feed_forward_length", ("n_inner",), derive=lambda c: 4 * c.n_embd),
    HParam("attention.head_count", ("n_head", "num_attention_heads")),
    HParam("attention.layer_norm_epsilon", ("layer_norm_epsilon",), float),
    HParam("vocab_size", ("vocab_size",)),
)

ARCHITECTURES: dict[str, Arch] = {
    "llama": Arch("llama", ("LlamaForCausalLM", "MistralForCausalLM"), _LLAMA_GLOBAL + _LLAMA_BLOCK,
                  _DECODER_HPARAMS, ignore=("rotary_emb.inv_freq",)),
    "qwen2": Arch("qwen2", ("Qwen2ForCausalLM",), _LLAMA_GLOBAL + _QWEN2_BLOCK, _DECODER_HPARAMS,
                  ignore=("rotary_emb.inv_freq",)),
    "gpt2": Arch("gpt2", ("GPT2LMHeadModel",), _GPT2_TENSORS, _GPT2_HPARAMS,
                 ignore=(".attn.bias", ".attn.masked_bias"), embedding="transformer.wte.weight",
                 rope=False),
}


def supported_classes() -> list[str]:
    return [c for arch in ARCHITECTURES.values() for c in arch.hf_classes]


def arch_for(hf_class: str | None) -> Arch:
    """The table for a Hugging Face class name, or a :class:`SourceError` listing the supported ones."""
    for arch in ARCHITECTURES.values():
        if hf_class in arch.hf_classes:
            return arch
    raise SourceError(f"GGUF conversion does not support the architecture {hf_class!r}",
                      fix=f"supported: {', '.join(supported_classes())}; convert this model to "
                      "ONNX or OpenVINO instead (--to onnx)")


def hparam_values(arch: Arch, config: Any) -> dict[str, Any]:
    """``{arch}.KEY`` -> value for every hyper-parameter of ``arch`` found in ``config``."""
    out: dict[str, Any] = {}
    for hp in arch.hparams:
        value = next((getattr(config, a) for a in hp.attrs if getattr(config, a, None) is not None), None)
        if value is None and hp.derive is not None:
            value = hp.derive(config)
        if value is None:
            if hp.optional:
                continue
            raise SourceError(f"config.json has none of {', '.join(hp.attrs) or hp.key} for GGUF key "
                              f"{arch.name}.{hp.key}", fix="check the model's config.json")
        out[f"{arch.name}.{hp.key}"] = hp.kind(value)
    return out


def rope_settings(config: Any) -> dict[str, Any]:
    """Rotary settings from either config layout: ``rope_parameters`` (transformers 5) or
    ``rope_theta`` + ``rope_scaling`` (transformers 4)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", getattr(config, "rope_theta", None))
    kind = merged.get("rope_type", merged.get("type", "default")) or "default"
    return {**merged, "rope_theta": float(theta) if theta is not None else None, "rope_type": kind}


# rope_type -> what llama.cpp is told; llama3 scaling also needs a rope_freqs tensor
ROPE_SCALING: dict[str, str | None] = {"default": None, "linear": "linear", "llama3": None, "yarn": "yarn"}


def llama3_rope_factors(rope: dict[str, Any], dim: int) -> list[float]:
    """Per-frequency divisors for llama3 rope scaling (Llama 3.1/3.2), as Meta's reference
    implementation computes them; llama.cpp reads them from the ``rope_freqs.weight`` tensor."""
    base = rope["rope_theta"]
    factor = float(rope.get("factor", 8.0))
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * base ** (i / dim)
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return factors
