"""Where heads, FFN units and layers live in each transformer family: data, one row per family.

A block (one element of an ``nn.ModuleList``) matches a layout when every path of the layout
exists in it. Paths are relative to the block. ``owner_attrs`` are attributes of the attention
module that the forward pass reads and that must follow a head cut; ``config`` names the
Hugging Face config keys that can describe the pruned model (None: the family derives the head
size from ``hidden_size / num_attention_heads``, so its config cannot express fewer heads).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class AttentionLayout:
    o: str  # output projection: its input columns follow the heads
    owner: str  # the attention module holding head_dim_attr and owner_attrs
    head_dim_attr: str
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # fused [q; k; v] projection (GPT-2's Conv1D c_attn)
    owner_attrs: dict[str, str] = field(default_factory=dict)  # attr -> heads|kv_heads|width
    config: tuple[str, str, str] | None = None  # (heads, kv heads, head_dim) config keys

    def paths(self) -> tuple[str, ...]:
        return tuple(p for p in (self.q, self.k, self.v, self.qkv, self.o, self.owner) if p)


@dataclass(frozen=True)
class FfnLayout:
    up: tuple[str, ...]  # projections into the hidden units (gate and up for gated MLPs)
    down: str  # projection out of them
    config: str | None = None

    def paths(self) -> tuple[str, ...]:
        return (*self.up, self.down)


@dataclass(frozen=True)
class BlockLayout:
    family: str
    attention: AttentionLayout | None
    ffn: FfnLayout | None
    layers_config: str | None = None

    def paths(self) -> tuple[str, ...]:
        return (*(self.attention.paths() if self.attention else ()), *(self.ffn.paths() if self.ffn else ()))


LAYOUTS: tuple[BlockLayout, ...] = (
    # LlamaDecoderLayer; also Mistral, Qwen2/Qwen3, Gemma, SmolLM2 (grouped-query attention).
    # The attention reshapes with (-1, head_dim) and keeps num_key_value_groups: whole KV groups
    # are cut, so the query-heads-per-KV-head ratio never changes.
    BlockLayout(
        "llama",
        AttentionLayout(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj",
                        owner="self_attn", head_dim_attr="head_dim",
                        owner_attrs={"num_heads": "heads", "num_key_value_heads": "kv_heads"},
                        config=("num_attention_heads", "num_key_value_heads", "head_dim")),
        FfnLayout(up=("mlp.gate_proj", "mlp.up_proj"), down="mlp.down_proj", config="intermediate_size"),
        layers_config="num_hidden_layers"),
    # BertLayer; also RoBERTa, XLM-R, ELECTRA, all-MiniLM-L6-v2 (MHA, head size from the config)
    BlockLayout(
        "bert",
        AttentionLayout(q="attention.self.query", k="attention.self.key", v="attention.self.value",
                        o="attention.output.dense", owner="attention.self", head_dim_attr="attention_head_size",
                        owner_attrs={"num_attention_heads": "heads", "all_head_size": "width"}),
        FfnLayout(up=("intermediate.dense",), down="output.dense", config="intermediate_size"),
        layers_config="num_hidden_layers"),
    # GPT2Block: fused c_attn, Conv1D weights stored (in, out)
    BlockLayout(
        "gpt2",
        AttentionLayout(qkv="attn.c_attn", o="attn.c_proj", owner="attn", head_dim_attr="head_dim",
                        owner_attrs={"num_heads": "heads", "split_size": "width"}),
        FfnLayout(up=("mlp.c_fc",), down="mlp.c_proj", config="n_inner"),
        layers_config="n_layer"),
    # torch.nn.TransformerEncoderLayer / DecoderLayer: nn.MultiheadAttention ties the heads to
    # embed_dim, so only the FFN and whole layers are cut
    BlockLayout("torch-transformer", None, FfnLayout(up=("linear1",), down="linear2")),
)
