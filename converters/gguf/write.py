"""Write a Hugging Face causal LM as GGUF, one tensor at a time.

The tensor plan (names, shapes, output types) is made from the state dict's metadata first; the
header is written from the plan, then each tensor is converted, quantized and written before the
next one is touched, so memory holds the model plus about one tensor, never a second copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.converters.gguf.arch import (
    ROPE_SCALING,
    Arch,
    Transform,
    hparam_values,
    llama3_rope_factors,
    rope_settings,
)
from edgekit.converters.gguf.tokenizer import GgufVocab
from edgekit.errors import ExportError
from edgekit.types import Precision

# the precisions written directly (the others are llama.cpp's quantizer run on one of these):
# precision -> (ggml type name for 2-D weights, general.file_type as llama.cpp numbers it)
DIRECT: dict[Precision, tuple[str, int]] = {
    Precision.FP32: ("F32", 0),
    Precision.FP16: ("F16", 1),
    Precision.BF16: ("BF16", 32),
    Precision.Q8_0: ("Q8_0", 7),
}
QUANT_VERSION = 2  # general.quantization_version of the ggml block formats


@dataclass(frozen=True)
class PlannedTensor:
    name: str  # GGUF name
    source: str  # Hugging Face state-dict key ("" for a generated tensor)
    shape: tuple[int, ...]  # numpy order (rows, cols)
    transform: Transform
    type_name: str  # ggml type it is written as
    fallback: bool = False  # quantizable in principle, but its row size does not fit the blocks


def _is_tied(model: Any, arch: Arch, state: dict[str, Any]) -> bool:
    if arch.lm_head not in state:
        return True
    head, emb = state[arch.lm_head], state.get(arch.embedding)
    if emb is None:
        return False
    if head.data_ptr() == emb.data_ptr():
        return True
    return bool(getattr(model.config, "tie_word_embeddings", False))


def plan_tensors(model: Any, arch: Arch, precision: Precision) -> list[PlannedTensor]:
    """Every tensor of the GGUF file, in writing order, with the type it is stored as."""
    import gguf

    n_layers = hparam_values(arch, model.config)[f"{arch.name}.block_count"]
    state = model.state_dict()
    tied = _is_tied(model, arch, state)
    wanted = DIRECT[precision][0]
    qtype = gguf.GGMLQuantizationType[wanted]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    used: set[str] = set()
    plan: list[PlannedTensor] = []
    for rule in arch.tensors:
        names = [(rule.hf.format(bid=b), rule.gguf.format(bid=b)) for b in range(n_layers)] \
            if "{bid}" in rule.hf else [(rule.hf, rule.gguf)]
        for hf_name, gguf_name in names:
            if hf_name == arch.lm_head and tied:
                used.add(hf_name)
                continue
            if hf_name not in state:
                if rule.optional:
                    continue
                raise ExportError(f"the checkpoint has no tensor {hf_name!r}, which {arch.name} needs",
                                  fix="check that the model is a standard "
                                  f"{'/'.join(arch.hf_classes)} checkpoint")
            used.add(hf_name)
            shape = tuple(int(s) for s in state[hf_name].shape)
            if rule.transform is Transform.TRANSPOSE:
                shape = shape[::-1]
            if len(shape) < 2:  # norms and biases stay f32, as llama.cpp's own files do
                plan.append(PlannedTensor(gguf_name, hf_name, shape, rule.transform, "F32"))
            elif shape[-1] % block:
                plan.append(PlannedTensor(gguf_name, hf_name, shape, rule.transform, "F16", fallback=True))
            else:
                plan.append(PlannedTensor(gguf_name, hf_name, shape, rule.transform, wanted))
    leftover = sorted(k for k in state if k not in used and not any(k.endswith(s) for s in arch.ignore))
    if leftover:
        raise ExportError(f"{len(leftover)} tensor(s) of the checkpoint have no place in llama.cpp's "
                          f"{arch.name} layout, e.g. {leftover[0]!r}",
                          fix="this is a variant of the architecture edgekit does not map yet; "
                          "convert it to ONNX instead, or report the model")
    return plan


def rope_tensors(arch: Arch, config: Any, head_dim: int) -> list[tuple[str, np.ndarray]]:
    """Generated tensors: llama3 rope scaling's per-frequency factors."""
    if not arch.rope:
        return []
    rope = rope_settings(config)
    if rope["rope_type"] == "llama3":
        return [("rope_freqs.weight", np.asarray(llama3_rope_factors(rope, head_dim), dtype=np.float32))]
    return []


def rope_keys(arch: Arch, config: Any) -> dict[str, Any]:
    if not arch.rope:
        return {}
    rope = rope_settings(config)
    kind = rope["rope_type"]
    if kind not in ROPE_SCALING:
        raise ExportError(f"rope scaling {kind!r} is not supported by edgekit's GGUF writer",
                          fix=f"supported rope types: {', '.join(ROPE_SCALING)}")
    keys: dict[str, Any] = {}
    if rope["rope_theta"] is not None:
        keys[f"{arch.name}.rope.freq_base"] = float(rope["rope_theta"])
    if ROPE_SCALING[kind] == "linear":
        keys[f"{arch.name}.rope.scaling.type"] = "linear"
        keys[f"{arch.name}.rope.scaling.factor"] = float(rope.get("factor", 1.0))
    elif ROPE_SCALING[kind] == "yarn":
        keys[f"{arch.name}.rope.scaling.type"] = "yarn"
        keys[f"{arch.name}.rope.scaling.factor"] = float(rope.get("factor", 1.0))
        if rope.get("original_max_position_embeddings"):
            keys[f"{arch.name}.rope.scaling.original_context_length"] = int(rope["original_max_position_embeddings"])
    return keys


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a Q/K projection from Hugging Face's rotate-half order to llama.cpp's interleaved
    order: per head, row ``j`` of the first half and row ``j`` of the second half become a pair."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_data(t: PlannedTensor, value: Any, n_head: int, n_head_kv: int) -> np.ndarray:
    """The tensor as written: transformed, then cast or quantized to ``t.type_name``."""
    import gguf
    import torch

    with torch.no_grad():
        arr = value.detach().to(torch.float32).cpu().numpy()
    if t.transform is Transform.ROPE_Q:
        arr = permute_rope(arr, n_head)
    elif t.transform is Transform.ROPE_K:
        arr = permute_rope(arr, n_head_kv)
    elif t.transform is Transform.TRANSPOSE:
        arr = arr.T
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if t.type_name == "F32":
        return arr
    if t.type_name == "F16":
        return arr.astype(np.float16)
    return gguf.quants.quantize(arr, gguf.GGMLQuantizationType[t.type_name])


def _nbytes_and_shape(t: PlannedTensor) -> tuple[int, tuple[int, ...], Any, Any]:
    import gguf

    qtype = gguf.GGMLQuantizationType[t.type_name]
    if t.type_name in ("F32", "F16"):
        dtype = np.float32 if t.type_name == "F32" else np.float16
        return int(np.prod(t.shape)) * np.dtype(dtype).itemsize, t.shape, dtype, None
    byte_shape = gguf.quants.quant_shape_to_byte_shape(t.shape, qtype)
    return int(np.prod(byte_shape)), byte_shape, np.uint8, qtype


def add_metadata(writer: Any, arch: Arch, config: Any, vocab: GgufVocab, name: str, file_type: int,
                 quantized: bool) -> None:
    """general.*, the architecture's hyper-parameters, rope settings and tokenizer.* keys."""
    writer.add_name(name)
    writer.add_type("model")
    writer.add_file_type(file_type)
    if quantized:
        writer.add_quantization_version(QUANT_VERSION)
    values = {**hparam_values(arch, config), **rope_keys(arch, config)}
    values[f"{arch.name}.vocab_size"] = len(vocab.tokens)
    for key, value in values.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, str(value))
    writer.add_string("tokenizer.ggml.model", vocab.model)
    if vocab.pre is not None:
        writer.add_string("tokenizer.ggml.pre", vocab.pre)
    writer.add_array("tokenizer.ggml.tokens", vocab.tokens)
    if vocab.scores is not None:
        writer.add_array("tokenizer.ggml.scores", [float(s) for s in vocab.scores])
    writer.add_array("tokenizer.ggml.token_type", [int(t) for t in vocab.types])
    if vocab.merges:
        writer.add_array("tokenizer.ggml.merges", vocab.merges)
    ids = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "pad": "padding_token_id"}
    for role, key in ids.items():
        if role in vocab.special:
            writer.add_uint32(f"tokenizer.ggml.{key}", vocab.special[role])
    writer.add_bool("tokenizer.ggml.add_bos_token", vocab.add_bos)
    writer.add_bool("tokenizer.ggml.add_eos_token", vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_bool("tokenizer.ggml.add_space_prefix", vocab.add_space_prefix)
    for tname, template in vocab.chat_templates.items():
        writer.add_string("tokenizer.chat_template" + (f".{tname}" if tname else ""), template)
    if len(vocab.chat_templates) > 1:
        writer.add_array("tokenizer.chat_templates", [n for n in vocab.chat_templates if n])


def write_gguf(path: Path, model: Any, arch: Arch, vocab: GgufVocab, precision: Precision, name: str,
               progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write ``model`` as a GGUF file at ``precision`` (one of :data:`DIRECT`); return details."""
    import gguf

    config = model.config
    values = hparam_values(arch, config)
    n_head = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0))
    n_head_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    head_dim = values.get(f"{arch.name}.rope.dimension_count", 0)
    plan = plan_tensors(model, arch, precision)
    extra = rope_tensors(arch, config, head_dim)
    type_name, file_type = DIRECT[precision]
    writer = gguf.GGUFWriter(None, arch.name)
    add_metadata(writer, arch, config, vocab, name, file_type, quantized=precision is Precision.Q8_0)
    for t in plan:
        nbytes, shape, dtype, raw = _nbytes_and_shape(t)
        writer.add_tensor_info(t.name, shape, np.dtype(dtype), nbytes, raw_dtype=raw)
    for tname, arr in extra:
        writer.add_tensor_info(tname, arr.shape, arr.dtype, arr.nbytes)
    state = model.state_dict()
    try:
        writer.open_output_file(path)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, t in enumerate(plan):
            writer.write_tensor_data(tensor_data(t, state[t.source], n_head, n_head_kv))
            if progress is not None:
                progress(i + 1, len(plan))
        for _, arr in extra:
            writer.write_tensor_data(arr)
    finally:
        writer.close()
    types: dict[str, int] = {}
    for t in plan:
        types[t.type_name] = types.get(t.type_name, 0) + 1
    for _ in extra:
        types["F32"] = types.get("F32", 0) + 1
    fallbacks = [t.name for t in plan if t.fallback]
    return {"tensor_types": types, "tensors": len(plan) + len(extra),
            "fallback_to_f16": fallbacks[:8] + ([f"... {len(fallbacks) - 8} more"] if len(fallbacks) > 8 else []),
            "tied_embeddings": not any(t.name == "output.weight" for t in plan)}


def iter_names(plan: list[PlannedTensor]) -> Iterator[tuple[str, str]]:
    """(Hugging Face name, GGUF name) of every planned tensor."""
    for t in plan:
        yield t.source, t.name
