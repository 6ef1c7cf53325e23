"""The model families edgekit writes to GGUF: one small entry each, keyed by edgekit's name.

Tensor names come from the ``gguf`` package's tables (``gguf.get_tensor_name_map``) and keys from
``gguf.Keys``; an entry only says what llama.cpp cannot know from names alone. Each entry names
the model it comes from. Every family here is checked by tests/test_gguf_families.py: f16 logits
against PyTorch, run by llama.cpp, and (where llama.cpp's converter accepts the config) tensor by
tensor against llama.cpp's own ``convert_hf_to_gguf.py``.
"""

from __future__ import annotations

from typing import Any

import gguf

from edgekit.converters.gguf.arch import (
    ROPE_QK,
    Family,
    HParam,
    Transform,
    explicit_head_dim,
    head_dim,
    rotary_dim,
)

K, A, R = gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope


def _n_kv(c: Any) -> int:
    return int(getattr(c, "num_key_value_heads", None) or c.num_attention_heads)


_CORE = (
    HParam(K.CONTEXT_LENGTH, ("max_position_embeddings", "n_positions", "max_seq_len")),
    HParam(K.EMBEDDING_LENGTH, ("hidden_size", "n_embd", "d_model")),
    HParam(K.BLOCK_COUNT, ("num_hidden_layers", "n_layer", "n_layers")),
    HParam(A.HEAD_COUNT, ("num_attention_heads", "n_head", "n_heads")),
)
_FFN = HParam(K.FEED_FORWARD_LENGTH, ("intermediate_size", "n_inner", "ffn_hidden_size"),
              derive=lambda c: 4 * (getattr(c, "hidden_size", None) or c.n_embd))
_KV = HParam(A.HEAD_COUNT_KV, derive=_n_kv)
_RMS = HParam(A.LAYERNORM_RMS_EPS, ("rms_norm_eps",), float)
_LN = HParam(A.LAYERNORM_EPS, ("layer_norm_eps", "layer_norm_epsilon", "norm_epsilon", "norm_eps"), float)
_HEAD = (HParam(A.KEY_LENGTH, derive=head_dim), HParam(A.VALUE_LENGTH, derive=head_dim))
_HEAD_IF_SET = (HParam(A.KEY_LENGTH, derive=explicit_head_dim, optional=True),
                HParam(A.VALUE_LENGTH, derive=explicit_head_dim, optional=True))
_ROPE_DIM = HParam(R.DIMENSION_COUNT, derive=rotary_dim)
_SWA = HParam(A.SLIDING_WINDOW, ("sliding_window",), optional=True)

# a Llama-style decoder: RMSNorm, rotary embedding, SwiGLU MLP, grouped-query attention
DECODER = (*_CORE, _FFN, _KV, _RMS, *_HEAD, _ROPE_DIM)
# the same with LayerNorm (StableLM, StarCoder2, Phi-2, Command R)
LN_DECODER = (*_CORE, _FFN, _KV, _LN, *_HEAD_IF_SET, _ROPE_DIM)


def _gemma2(c: Any) -> dict[str, Any]:
    return {K.ATTN_LOGIT_SOFTCAPPING: _f(c.attn_logit_softcapping), K.FINAL_LOGIT_SOFTCAPPING:
            _f(c.final_logit_softcapping)}


def _gemma3(c: Any) -> dict[str, Any]:
    from edgekit.converters.gguf.rope import local_rope_theta

    return {R.FREQ_BASE_SWA: local_rope_theta(c), K.FINAL_LOGIT_SOFTCAPPING: _f(c.final_logit_softcapping)}


def _granite(c: Any) -> dict[str, Any]:
    return {A.SCALE: _f(c.attention_multiplier), K.EMBEDDING_SCALE: _f(c.embedding_multiplier),
            K.RESIDUAL_SCALE: _f(c.residual_multiplier), K.LOGIT_SCALE: _f(c.logits_scaling)}


def _stablelm(c: Any) -> dict[str, Any]:
    return {K.USE_PARALLEL_RESIDUAL: bool(getattr(c, "use_parallel_residual", False))}


def _phi3(c: Any) -> dict[str, Any]:
    from edgekit.converters.gguf.rope import long_rope_attn_factor

    return {A.SLIDING_WINDOW: int(getattr(c, "sliding_window", None) or 0),
            R.SCALING_ORIG_CTX_LEN: getattr(c, "original_max_position_embeddings", None),
            R.SCALING_ATTN_FACTOR: long_rope_attn_factor(c)}


def _cohere(c: Any) -> dict[str, Any]:
    return {K.LOGIT_SCALE: _f(c.logit_scale), R.SCALING_TYPE: "none"}


def _swa_pattern(c: Any) -> list[bool] | None:
    """Which layers attend through a sliding window (``config.layer_types``)."""
    types = getattr(c, "layer_types", None)
    return [t == "sliding_attention" for t in types] if types else None


def _exaone4(c: Any) -> dict[str, Any]:
    return {A.SLIDING_WINDOW_PATTERN: _swa_pattern(c)}


def _olmo3(c: Any) -> dict[str, Any]:
    from edgekit.converters.gguf.rope import rope_settings

    return {A.SLIDING_WINDOW_PATTERN: _swa_pattern(c), R.FREQ_BASE_SWA: rope_settings(c)["rope_theta"]}


def _nemotron(c: Any) -> dict[str, Any]:
    return {A.LAYERNORM_EPS: _f(c.norm_eps), R.SCALING_TYPE: "none"}


def _smollm3(c: Any) -> dict[str, Any]:
    interval = getattr(c, "no_rope_layer_interval", 4)
    if interval != 4:  # llama.cpp's smollm3 graph skips rotary on every 4th layer, whatever the file says
        from edgekit.errors import SourceError

        raise SourceError(f"this SmolLM3 leaves rotary out of every {interval}th layer; llama.cpp only runs "
                          "every 4th", fix="convert it to ONNX instead (--to onnx)")
    return {}


def _f(v: Any) -> float | None:
    return float(v) if v is not None else None


def _table(*families: Family) -> dict[str, Family]:
    """The families by name; a name listed twice is a mistake in this file (a dict would hide it)."""
    table: dict[str, Family] = {}
    for f in families:
        if f.name in table:
            raise ValueError(f"GGUF family {f.name!r} is listed twice in converters/gguf/families.py")
        table[f.name] = f
    return table


_F = Family  # one line per family below
FAMILIES: dict[str, Family] = _table(
    # Llama 2/3.x, TinyLlama, SmolLM/SmolLM2 (meta-llama/Llama-3.2-1B, HuggingFaceTB/SmolLM2-135M)
    _F("llama", "LLAMA", ("LlamaForCausalLM",), (*DECODER, HParam(K.VOCAB_SIZE, ("vocab_size",))), ROPE_QK),
    # Mistral 7B v0.1-v0.3 (mistralai/Mistral-7B-v0.3): llama.cpp runs it as llama
    _F("mistral", "LLAMA", ("MistralForCausalLM",), (*DECODER, HParam(K.VOCAB_SIZE, ("vocab_size",)), _SWA),
       ROPE_QK),
    # Qwen2 / Qwen2.5 (Qwen/Qwen2.5-0.5B): NeoX rotary as stored, q/k/v biases
    _F("qwen2", "QWEN2", ("Qwen2ForCausalLM",), DECODER),
    # Qwen3 (Qwen/Qwen3-0.6B): per-head RMSNorm on q and k
    _F("qwen3", "QWEN3", ("Qwen3ForCausalLM",), DECODER),
    # Gemma (google/gemma-2b): RMSNorm weights stored as w - 1
    _F("gemma", "GEMMA", ("GemmaForCausalLM",), DECODER, norm_offset=1.0),
    # Gemma 2 (google/gemma-2-2b): soft-capped logits, sliding-window layers, post-norms
    _F("gemma2", "GEMMA2", ("Gemma2ForCausalLM",), (*DECODER, _SWA), norm_offset=1.0, extra=_gemma2),
    # Gemma 3 text (google/gemma-3-1b-it): q/k norms, local rope base for sliding layers
    _F("gemma3", "GEMMA3", ("Gemma3ForCausalLM",), (*DECODER, _SWA), norm_offset=1.0, extra=_gemma3),
    # Phi-3 / Phi-3.5 / Phi-4-mini (microsoft/Phi-3-mini-4k-instruct): fused qkv and gate_up kept fused;
    # the 128k models (microsoft/Phi-3-mini-128k-instruct) with long rope factors
    _F("phi3", "PHI3", ("Phi3ForCausalLM",), DECODER, extra=_phi3, long_rope=True),
    # GPT-2 (openai-community/gpt2): learned positions, Conv1D weights stored input-major
    _F("gpt2", "GPT2", ("GPT2LMHeadModel",), (*_CORE, _FFN, _LN),
       ((".c_attn.weight", Transform.TRANSPOSE), (".c_proj.weight", Transform.TRANSPOSE),
        (".c_fc.weight", Transform.TRANSPOSE)), ignore=(".attn.bias", ".attn.masked_bias"), rope=False),
    # OLMo (allenai/OLMo-1B-hf): LayerNorm without weights, Llama's rotary layout
    _F("olmo", "OLMO", ("OlmoForCausalLM",), (*_CORE, _FFN, _KV, HParam(A.LAYERNORM_EPS, derive=lambda c: 1e-5, kind=float),
                                               _ROPE_DIM), ROPE_QK),  # OLMo's LayerNorm eps is fixed
    # OLMo 2 (allenai/OLMo-2-0425-1B): post-norms, q/k RMSNorm over all heads
    _F("olmo2", "OLMO2", ("Olmo2ForCausalLM",), DECODER),
    # StableLM 2 (stabilityai/stablelm-2-1_6b): LayerNorm with bias, partial rotary
    _F("stablelm", "STABLELM", ("StableLmForCausalLM",), LN_DECODER, extra=_stablelm),
    # Granite 3.x (ibm-granite/granite-3.1-2b-instruct): Llama with four scaling multipliers
    _F("granite", "GRANITE", ("GraniteForCausalLM",), (*DECODER, HParam(K.VOCAB_SIZE, ("vocab_size",))), ROPE_QK,
       extra=_granite),
    # StarCoder2 (bigcode/starcoder2-3b): LayerNorm, GELU MLP with biases
    _F("starcoder2", "STARCODER2", ("Starcoder2ForCausalLM",), (*LN_DECODER[:-1], _ROPE_DIM, _SWA)),
    # SmolLM3 (HuggingFaceTB/SmolLM3-3B): Llama with rotary left out of every 4th layer
    _F("smollm3", "SMOLLM3", ("SmolLM3ForCausalLM",), (*DECODER, HParam(K.VOCAB_SIZE, ("vocab_size",))), ROPE_QK,
       extra=_smollm3),
    # Phi-2 / Phi-1.5 (microsoft/phi-2): parallel attention + MLP, partial rotary, dense
    _F("phi2", "PHI2", ("PhiForCausalLM",), LN_DECODER),
    # Cohere Command R / Aya (CohereForAI/c4ai-command-r-v01): LayerNorm without bias, logit scale
    _F("command-r", "COMMAND_R", ("CohereForCausalLM",), LN_DECODER, extra=_cohere),
    # Arcee AFM (arcee-ai/AFM-4.5B): Llama with a ReLU^2 MLP (no gate)
    _F("arcee", "ARCEE", ("ArceeForCausalLM",), (*DECODER, HParam(K.VOCAB_SIZE, ("vocab_size",))), ROPE_QK),
    # Seed-OSS (ByteDance-Seed/Seed-OSS-36B-Instruct)
    _F("seed_oss", "SEED_OSS", ("SeedOssForCausalLM",), DECODER),
    # EXAONE 4 (LGAI-EXAONE/EXAONE-4.0-1.2B): post-norms, q/k norms
    _F("exaone4", "EXAONE4", ("Exaone4ForCausalLM",), (*DECODER, _SWA, HParam(K.VOCAB_SIZE, ("vocab_size",))),
       extra=_exaone4),
    # ERNIE 4.5 dense (baidu/ERNIE-4.5-0.3B-PT)
    _F("ernie4_5", "ERNIE4_5", ("Ernie4_5ForCausalLM",), DECODER),
    # OLMo 3 (allenai/Olmo-3-7B-Instruct): OLMo 2 with sliding-window layers
    _F("olmo3", "OLMO2", ("Olmo3ForCausalLM",), (*DECODER, _SWA), extra=_olmo3),
    # GLM-4 0414 (THUDM/GLM-4-9B-0414)
    _F("glm4", "GLM4", ("Glm4ForCausalLM",), DECODER),
    # BLOOM (bigscience/bloom-560m): ALiBi, embedding LayerNorm, fused QKV stored head by head
    _F("bloom", "BLOOM", ("BloomForCausalLM",),
       (HParam(K.CONTEXT_LENGTH, ("seq_length",), derive=lambda c: c.hidden_size), *_CORE[1:], _FFN,
        HParam(A.HEAD_COUNT_KV, ("n_head",)), _LN),
       ((".query_key_value.weight", Transform.QKV_HEADS), (".query_key_value.bias", Transform.QKV_HEADS)),
       rope=False, strip="transformer."),
    # StarCoder / SantaCoder (bigcode/starcoderbase-1b, GPTBigCodeForCausalLM): multi-query attention
    _F("starcoder", "STARCODER", ("GPTBigCodeForCausalLM",),
       (*_CORE, _FFN, HParam(A.HEAD_COUNT_KV, derive=lambda c: 1 if c.multi_query else c.n_head), _LN),
       ignore=(".attn.bias", ".attn.masked_bias"), rope=False),
    # Nemotron (nvidia/Minitron-4B-Base): LayerNorm1P stored as w - 1, squared-ReLU MLP, partial rotary
    _F("nemotron", "NEMOTRON", ("NemotronForCausalLM",),
       (*DECODER[:6], HParam(A.LAYERNORM_RMS_EPS, ("norm_eps",), float), *_HEAD, _ROPE_DIM,
        HParam(K.VOCAB_SIZE, ("vocab_size",))), norm_offset=1.0, extra=_nemotron),
)
