"""Write a Hugging Face causal LM as GGUF, one tensor at a time.

The tensor plan (names, shapes, output types) is made from the checkpoint's metadata first (names
through the ``gguf`` package's tables for the family's architecture); the header is written from
the plan, then each tensor is read (memory-mapped from safetensors when the checkpoint has them),
converted, quantized and written before the next one is touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.converters.gguf.arch import Arch, NameMap, Transform, block_count, head_dim, hparam_values
from edgekit.converters.gguf.rope import (
    LONG_ROPE,
    llama3_rope_factors,
    long_rope_factors,
    rope_keys,
    rope_settings,
)
from edgekit.converters.gguf.tensors import StateDictSource, TensorSource, open_source
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
    offset: float = 0.0  # added before writing (Gemma's norms)


# tensors llama.cpp keeps in f32 whatever the file type (position tables, token-type tables)
ALWAYS_F32 = ("position_embd.weight", "token_types.weight")


def _is_tied(config: Any, source: TensorSource, head: str | None, emb: str | None) -> bool:
    if head is None or head not in source:
        return True
    if emb is not None and source.same_storage(head, emb):
        return True
    return bool(getattr(config, "tie_word_embeddings", False))


def _type_for(gguf_name: str, shape: tuple[int, ...], wanted: str, block: int) -> tuple[str, bool]:
    """The ggml type llama.cpp's converter gives this tensor in a ``wanted`` file, and whether it
    fell back to f16 because its rows do not fit the quantization blocks."""
    if len(shape) < 2 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight") \
            or gguf_name.endswith(ALWAYS_F32):
        return "F32", False
    if wanted not in ("F32", "F16", "BF16") and shape[-1] % block:
        return "F16", True
    return wanted, False


def plan_tensors(model: Any, arch: Arch, precision: Precision, source: TensorSource | None = None
                 ) -> list[PlannedTensor]:
    """Every tensor of the GGUF file, in the checkpoint's order, with the type it is stored as."""
    import gguf

    source = source if source is not None else StateDictSource(model)
    config = getattr(model, "config", model)
    to_gguf = NameMap(arch, block_count(arch, config))
    wanted = DIRECT[precision][0]
    block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[wanted]][0]
    mapped = [(hf, to_gguf(hf)) for hf in source.names() if not arch.ignored(hf)]
    head = next((hf for hf, g in mapped if g == "output.weight"), None)
    emb = next((hf for hf, g in mapped if g == "token_embd.weight"), None)
    tied = _is_tied(config, source, head, emb)
    # a tied output head the family's table has no name for (Gemma) is the embedding itself
    tied_copy = {hf for hf, g in mapped if g is None and hf.endswith("lm_head.weight") and tied}
    leftover = sorted(hf for hf, g in mapped if g is None and hf not in tied_copy)
    if leftover:
        raise ExportError(f"{len(leftover)} tensor(s) of the checkpoint have no place in llama.cpp's "
                          f"{arch.arch_name} layout, e.g. {leftover[0]!r}",
                          fix="this is a variant of the architecture edgekit does not map yet; "
                          "convert it to ONNX instead, or report the model")
    plan: list[PlannedTensor] = []
    for hf_name, gguf_name in mapped:
        if gguf_name is None or (gguf_name == "output.weight" and tied):
            continue
        transform = arch.transform(hf_name)
        shape = source.shape(hf_name)
        if transform is Transform.TRANSPOSE:
            shape = shape[::-1]
        type_name, fallback = _type_for(gguf_name, shape, wanted, block)
        offset = arch.norm_offset if hf_name.endswith("norm.weight") else 0.0
        plan.append(PlannedTensor(gguf_name, hf_name, shape, transform, type_name, fallback, offset))
    if not any(t.name == "token_embd.weight" for t in plan):
        raise ExportError(f"the checkpoint has no token embedding that {arch.arch_name} needs",
                          fix=f"check that the model is a standard {'/'.join(arch.hf_classes)} checkpoint")
    return plan


def rope_tensors(arch: Arch, config: Any, head_dim: int) -> list[tuple[str, np.ndarray]]:
    """Generated tensors: llama3 rope scaling's per-frequency factors, Phi-3's long and short ones."""
    if not arch.rope:
        return []
    rope = rope_settings(config)
    if rope["rope_type"] == "llama3":
        return [("rope_freqs.weight", np.asarray(llama3_rope_factors(rope, head_dim), dtype=np.float32))]
    if rope["rope_type"] in LONG_ROPE:
        if not arch.long_rope:
            raise ExportError(f"{arch.name} with {rope['rope_type']} rope scaling is not written by edgekit's "
                              "GGUF writer (llama.cpp runs long rope for Phi-3 only)",
                              fix="convert it to ONNX instead (--to onnx)")
        factors = long_rope_factors(rope, config)
        return [] if factors is None else [("rope_factors_long.weight", factors[0]),
                                           ("rope_factors_short.weight", factors[1])]
    return []


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a Q/K projection from Hugging Face's rotate-half order to llama.cpp's interleaved
    order: per head, row ``j`` of the first half and row ``j`` of the second half become a pair."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def split_qkv_heads(w: np.ndarray, n_head: int) -> np.ndarray:
    """A fused QKV stored head by head (GPT-NeoX, Bloom: [q0 k0 v0 q1 k1 v1 ...]) as [Q; K; V]."""
    per = w.reshape(n_head, 3, w.shape[0] // n_head // 3, *w.shape[1:])
    return np.concatenate([per[:, i].reshape(-1, *w.shape[1:]) for i in range(3)], axis=0)


def tensor_data(t: PlannedTensor, value: Any, n_head: int, n_head_kv: int) -> np.ndarray:
    """The tensor as written: offset, transformed, then cast or quantized to ``t.type_name``."""
    import gguf
    import torch

    with torch.no_grad():
        if value.dtype not in (torch.float16, torch.float32):
            value = value.to(torch.float32)  # bf16 and the rest, as llama.cpp's converter does
        if t.offset:
            value = value + t.offset  # in the checkpoint's precision, as llama.cpp adds it
        arr = value.cpu().numpy()
    if t.transform is Transform.ROPE_Q:
        arr = permute_rope(arr, n_head)
    elif t.transform is Transform.ROPE_K:
        arr = permute_rope(arr, n_head_kv)
    elif t.transform is Transform.TRANSPOSE:
        arr = arr.T
    elif t.transform is Transform.QKV_HEADS:
        arr = split_qkv_heads(arr, n_head)
    if t.type_name == "F32":
        return np.ascontiguousarray(arr, dtype=np.float32)
    if t.type_name == "F16":
        return np.ascontiguousarray(arr, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(arr), gguf.GGMLQuantizationType[t.type_name])


def _nbytes_and_shape(t: PlannedTensor) -> tuple[int, tuple[int, ...], Any, Any]:
    import gguf

    qtype = gguf.GGMLQuantizationType[t.type_name]
    if t.type_name in ("F32", "F16"):
        dtype = np.float32 if t.type_name == "F32" else np.float16
        return int(np.prod(t.shape)) * np.dtype(dtype).itemsize, t.shape, dtype, None
    byte_shape = gguf.quants.quant_shape_to_byte_shape(t.shape, qtype)
    return int(np.prod(byte_shape)), byte_shape, np.uint8, qtype


def add_metadata(writer: Any, arch: Arch, config: Any, vocab: GgufVocab, name: str, file_type: int,
                 n_params: int = 0) -> None:
    """general.*, the architecture's hyper-parameters, rope settings and tokenizer.* keys."""
    import gguf

    writer.add_type("model")
    writer.add_name(name)
    if n_params:
        writer.add_size_label(gguf.size_label(n_params, 0, 0, 0))
    writer.add_file_type(file_type)
    writer.add_quantization_version(QUANT_VERSION)  # as llama.cpp writes it, whatever the file type
    values = hparam_values(arch, config)
    if arch.rope:
        values.update(rope_keys(arch.arch_name, config))
    if f"{arch.arch_name}.vocab_size" in values:
        values[f"{arch.arch_name}.vocab_size"] = len(vocab.tokens)
    for key, value in values.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_string(key, str(value))
    add_vocab(writer, vocab)


def add_vocab(writer: Any, vocab: GgufVocab) -> None:
    """tokenizer.ggml.* and the chat template(s)."""
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
               progress: Callable[[int, int], None] | None = None, folder: Path | None = None) -> dict[str, Any]:
    """Write ``model`` as a GGUF file at ``precision`` (one of :data:`DIRECT`); return details.
    With ``folder`` (the Hugging Face directory), weights are read from its safetensors files,
    memory-mapped, one tensor at a time (``model`` may then be only its config); otherwise from the
    model's state dict."""
    import gguf

    config = getattr(model, "config", model)  # a model, or only its config when ``folder`` has the weights
    n_head = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0))
    n_head_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    source = open_source(model, folder)
    try:
        plan = plan_tensors(model, arch, precision, source)
        extra = rope_tensors(arch, config, head_dim(config))
        type_name, file_type = DIRECT[precision]
        writer = gguf.GGUFWriter(None, arch.arch_name)
        n_params = sum(int(np.prod(t.shape)) for t in plan)
        add_metadata(writer, arch, config, vocab, name, file_type, n_params)
        for tname, arr in extra:
            writer.add_tensor_info(tname, arr.shape, arr.dtype, arr.nbytes)
        for t in plan:
            nbytes, shape, dtype, raw = _nbytes_and_shape(t)
            writer.add_tensor_info(t.name, shape, np.dtype(dtype), nbytes, raw_dtype=raw)
        try:
            writer.open_output_file(path)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for _, arr in extra:
                writer.write_tensor_data(arr)
            for i, t in enumerate(plan):
                writer.write_tensor_data(tensor_data(t, source.get(t.source), n_head, n_head_kv))
                source.release(t.source)
                if progress is not None:
                    progress(i + 1, len(plan))
        finally:
            writer.close()
    finally:
        source.close()
    types: dict[str, int] = {}
    for t in plan:
        types[t.type_name] = types.get(t.type_name, 0) + 1
    for _ in extra:
        types["F32"] = types.get("F32", 0) + 1
    fallbacks = [t.name for t in plan if t.fallback]
    return {"tensor_types": types, "tensors": len(plan) + len(extra), "weights_from": source.kind,
            "fallback_to_f16": fallbacks[:8] + ([f"... {len(fallbacks) - 8} more"] if len(fallbacks) > 8 else []),
            "tied_embeddings": not any(t.name == "output.weight" for t in plan)}


def iter_names(plan: list[PlannedTensor]) -> Iterator[tuple[str, str]]:
    """(Hugging Face name, GGUF name) of every planned tensor."""
    for t in plan:
        yield t.source, t.name
