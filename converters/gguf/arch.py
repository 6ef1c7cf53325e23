"""How a Hugging Face checkpoint maps onto one of llama.cpp's architectures.

Names and keys are llama.cpp's own tables, read from the ``gguf`` package at conversion time:
``gguf.MODEL_ARCH`` (the architecture), ``gguf.get_tensor_name_map(arch, n_blocks)`` (Hugging Face
tensor name -> GGUF tensor name) and ``gguf.Keys`` (hyper-parameter keys). What is truly
per-family lives in a :class:`Family` entry of :data:`edgekit.converters.gguf.families.FAMILIES`:
which Hugging Face classes it covers, the rotary permutation of Q/K rows, fused-QKV reorders,
norm offsets (Gemma stores ``w - 1``), Conv1D transposes and which hyper-parameters it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from edgekit.errors import SourceError


class Transform(Enum):
    """What happens to a tensor between Hugging Face and GGUF (beyond renaming)."""

    NONE = "none"
    ROPE_Q = "rope_q"  # permute rows per attention head (n_head) for llama.cpp's interleaved rotary
    ROPE_K = "rope_k"  # the same with n_head_kv heads (grouped-query attention)
    TRANSPOSE = "transpose"  # Conv1D (GPT-2): [in, out] -> [out, in]
    QKV_HEADS = "qkv_heads"  # fused QKV stored head by head [h0q h0k h0v h1q ...] -> [Q; K; V]


@dataclass(frozen=True)
class HParam:
    """A GGUF hyper-parameter: ``key`` is a ``gguf.Keys`` template (``{arch}.context_length``);
    its value is the first config attribute present, else ``derive(config)``."""

    key: str
    attrs: tuple[str, ...] = ()
    kind: type = int
    derive: Callable[[Any], Any] | None = None
    optional: bool = False  # leave the key out when no value is found


@dataclass(frozen=True)
class Family:
    """One model family: the Hugging Face classes it covers and llama.cpp's architecture for them."""

    name: str  # edgekit's name for the family (docs, tests, manifest)
    arch: str  # gguf.MODEL_ARCH member name, e.g. "LLAMA"
    hf_classes: tuple[str, ...]
    hparams: tuple[HParam, ...]
    # (Hugging Face name suffix, transform) for tensors that are not stored as llama.cpp reads them
    transforms: tuple[tuple[str, Transform], ...] = ()
    norm_offset: float = 0.0  # added to every "*norm.weight" (Gemma's RMSNorm multiplies by 1 + w)
    ignore: tuple[str, ...] = ("rotary_emb.inv_freq",)  # state-dict suffixes with no GGUF tensor
    rope: bool = True  # rotary embedding: write freq_base (and llama3 rope factors)
    long_rope: bool = False  # Phi-3's longrope/su scaling: rope_factors_long/short and an attention factor
    extra: Callable[[Any], dict[str, Any]] | None = None  # family-only keys, e.g. soft-capping
    strip: str = ""  # a prefix the gguf table does not know (BLOOM's "transformer.")

    @property
    def gguf_arch(self) -> Any:
        import gguf

        return gguf.MODEL_ARCH[self.arch]

    @property
    def arch_name(self) -> str:
        """general.architecture, as llama.cpp spells it (``gemma2``, ``command-r``...)."""
        import gguf

        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    def transform(self, hf_name: str) -> Transform:
        for suffix, t in self.transforms:
            if hf_name.endswith(suffix):
                return t
        return Transform.NONE

    def ignored(self, hf_name: str) -> bool:
        return any(hf_name.endswith(s) for s in self.ignore)


# kept for the modules that still say Arch
Arch = Family

ROPE_QK = ((".q_proj.weight", Transform.ROPE_Q), (".q_proj.bias", Transform.ROPE_Q),
           (".k_proj.weight", Transform.ROPE_K), (".k_proj.bias", Transform.ROPE_K))


class NameMap:
    """Hugging Face tensor name -> GGUF name, through the ``gguf`` package's table for one arch."""

    def __init__(self, family: Family, n_blocks: int) -> None:
        import gguf

        self._map = gguf.get_tensor_name_map(family.gguf_arch, n_blocks)
        self._strip = family.strip

    def __call__(self, hf_name: str) -> str | None:
        if self._strip and hf_name.startswith(self._strip):
            hf_name = hf_name[len(self._strip):]
        return self._map.get_name(hf_name, try_suffixes=(".weight", ".bias"))


def head_dim(config: Any) -> int:
    """Per-head size: ``head_dim`` when the config sets it, else hidden / heads."""
    explicit = getattr(config, "head_dim", None)
    return int(explicit) if explicit else _hidden(config) // _heads(config)


def _hidden(config: Any) -> int:
    return int(next(getattr(config, a) for a in ("hidden_size", "n_embd", "d_model") if getattr(config, a, None)))


def _heads(config: Any) -> int:
    return int(next(getattr(config, a) for a in ("num_attention_heads", "n_head", "n_heads")
                    if getattr(config, a, None)))


def explicit_head_dim(config: Any) -> int | None:
    """``head_dim`` only when it differs from hidden / heads: llama.cpp then needs key_length and
    value_length, otherwise it derives them itself."""
    hd = head_dim(config)
    return hd if hd != _hidden(config) // _heads(config) else None


def rotary_dim(config: Any) -> int:
    """Rotated dimensions per head: all of them, or ``partial_rotary_factor`` of them."""
    factor = getattr(config, "partial_rotary_factor", None) or 1.0
    rope = dict(getattr(config, "rope_parameters", None) or {})
    factor = rope.get("partial_rotary_factor", factor) or factor
    return int(head_dim(config) * float(factor))


def supported_classes() -> list[str]:
    from edgekit.converters.gguf.families import FAMILIES

    return [c for fam in FAMILIES.values() for c in fam.hf_classes]


def arch_for(hf_class: str | None) -> Family:
    """The family of a Hugging Face class name, or a :class:`SourceError` listing the supported ones."""
    from edgekit.converters.gguf.families import FAMILIES

    for fam in FAMILIES.values():
        if hf_class in fam.hf_classes:
            return fam
    raise SourceError(f"GGUF conversion does not support the architecture {hf_class!r}",
                      fix=f"supported: {', '.join(supported_classes())}; convert this model to "
                      "ONNX or OpenVINO instead (--to onnx)")


def hparam_values(family: Family, config: Any) -> dict[str, Any]:
    """GGUF key -> value for every hyper-parameter of ``family`` found in ``config``."""
    arch = family.arch_name
    out: dict[str, Any] = {}
    for hp in family.hparams:
        value = next((getattr(config, a) for a in hp.attrs if getattr(config, a, None) is not None), None)
        if value is None and hp.derive is not None:
            value = hp.derive(config)
        key = hp.key.format(arch=arch)
        if value is None:
            if hp.optional:
                continue
            raise SourceError(f"config.json has none of {', '.join(hp.attrs) or key} for GGUF key {key}",
                              fix="check the model's config.json")
        out[key] = value if hp.kind is object else hp.kind(value)
    if family.extra is not None:
        out.update({k.format(arch=arch): v for k, v in family.extra(config).items() if v is not None})
    return out


def block_count(family: Family, config: Any) -> int:
    import gguf

    return int(hparam_values(family, config)[gguf.Keys.LLM.BLOCK_COUNT.format(arch=family.arch_name)])
