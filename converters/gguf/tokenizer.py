"""The tokenizer part of a GGUF file, read from a Hugging Face ``tokenizer.json``.

Two kinds of tokenizer map onto llama.cpp's: byte-level BPE (GPT-2, SmolLM, Llama 3, Qwen2;
``tokenizer.ggml.model = "gpt2"`` with merges and a pre-tokenizer name) and SentencePiece-style
BPE with byte fallback (Llama 2, TinyLlama, Mistral v0.1; ``"llama"`` with scores). Anything else
is an :class:`ExportError` naming what was found.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import ExportError

# llama.cpp's token types (gguf TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# byte-level BPE pre-tokenizers, as a signature of tokenizer.json's pre_tokenizer -> the name
# llama.cpp knows them by (llama-vocab.cpp spells them; "gpt-2", not "gpt2")
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    ("ByteLevel(regex)",): "gpt-2",  # GPT-2; SmolLM2 re-exported by transformers from GGUF
    ("Digits(individual)", "ByteLevel(regex)"): "smollm",  # SmolLM / SmolLM2, StarCoder
    (f"Split({_LLAMA3_REGEX})", "ByteLevel"): "llama-bpe",  # Llama 3.x
    (f"Split({_QWEN2_REGEX})", "ByteLevel"): "qwen2",  # Qwen2 / Qwen2.5
}


@dataclass
class GgufVocab:
    """Everything ``tokenizer.ggml.*`` (and the chat template) holds."""

    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece-style)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad -> id
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_templates: dict[str, str] = field(default_factory=dict)  # "" is the default one
    pre_source: str | None = None  # how ``pre`` was decided: probe hash, tokenizer.json or option
    pre_hash: str | None = None  # sha256 of the tokenizer's ids on llama.cpp's probe text
    pre_disagreement: str | None = None  # tokenizer.json and the tokenizer's behaviour name different ones

    def describe(self) -> dict[str, Any]:
        out = {"model": self.model, "pre": self.pre, "tokens": len(self.tokens),
               "merges": len(self.merges) if self.merges else 0, "special": dict(self.special),
               "add_bos": self.add_bos, "chat_template": bool(self.chat_templates)}
        if self.pre is not None:
            out.update(pre_source=self.pre_source, pre_hash=self.pre_hash)
        if self.pre_disagreement:
            out["pre_disagreement"] = self.pre_disagreement
        return out


def _pre_signature(pre: dict[str, Any] | None) -> tuple[str, ...]:
    if not pre:
        return ()
    items = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    sig = []
    for p in items:
        kind = p.get("type")
        if kind == "ByteLevel":
            sig.append("ByteLevel(regex)" if p.get("use_regex", True) else "ByteLevel")
        elif kind == "Digits":
            sig.append("Digits(individual)" if p.get("individual_digits") else "Digits")
        elif kind == "Split":
            pattern = p.get("pattern", {})
            sig.append(f"Split({pattern.get('Regex', pattern.get('String', ''))})")
        else:
            sig.append(str(kind))
    return tuple(sig)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _chat_templates(folder: Path, config: dict[str, Any]) -> dict[str, str]:
    template = config.get("chat_template")
    out: dict[str, str] = {}
    if isinstance(template, str):
        out[""] = template
    elif isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        for item in template:
            name = item.get("name", "")
            out["" if name == "default" else name] = item.get("template", "")
    jinja = folder / "chat_template.jinja"  # transformers >= 4.50 saves the template beside the config
    if "" not in out and jinja.is_file():
        out[""] = jinja.read_text(encoding="utf-8")
    return out


def _added_by_template(post: dict[str, Any] | None) -> tuple[bool, bool]:
    """Whether the post-processor puts a special token before / after a single sequence."""
    if not post:
        return False, False
    procs = post.get("processors", []) if post.get("type") == "Sequence" else [post]
    for p in procs:
        if p.get("type") == "TemplateProcessing":
            single = p.get("single", [])
            first = bool(single) and "SpecialToken" in single[0]
            last = bool(single) and "SpecialToken" in single[-1]
            return first, last
    return False, False


def _is_sentencepiece_style(data: dict[str, Any]) -> bool:
    model = data.get("model", {})
    norm = json.dumps(data.get("normalizer") or {})
    pre = json.dumps(data.get("pre_tokenizer") or {})
    return bool(model.get("byte_fallback")) or "\u2581" in norm or "Metaspace" in pre


def hf_tokenizer(folder: Path) -> Any:
    """The tokenizer as transformers loads it (``AutoTokenizer``), or None if it cannot."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception:  # transformers raises many types; read_vocab reports what is wrong with the files
        return None


def backend_json(tokenizer: Any) -> dict[str, Any] | None:
    """The tokenizers JSON behind a loaded fast tokenizer: what llama.cpp must reproduce.
    transformers 5 rebuilds some families' pre-tokenizer (Qwen2 splits digits one by one whatever
    tokenizer.json says), so the file alone can mislead. None for a slow tokenizer."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return json.loads(backend.to_str()) if backend is not None else None


def read_vocab(folder: Path, vocab_size: int, config: Any, pre_override: str | None = None,
               tokenizer: dict[str, Any] | None = None, hf: Any = None) -> GgufVocab:
    """Build the GGUF vocabulary from ``tokenizer`` (a tokenizers JSON; default
    ``folder/tokenizer.json``) and ``tokenizer_config.json``, padded with unused ``[PAD{i}]``
    tokens up to the embedding's ``vocab_size`` rows. ``hf`` (the loaded Hugging Face tokenizer)
    names the pre-tokenizer by its behaviour on llama.cpp's probe text (:mod:`.pretok`)."""
    path = folder / "tokenizer.json"
    if tokenizer is None and not path.is_file():
        raise ExportError(f"{folder} has no tokenizer.json, which GGUF conversion reads the vocabulary from",
                          fix="save the tokenizer with tokenizer.save_pretrained(dir) (a fast tokenizer)")
    data = tokenizer if tokenizer is not None else json.loads(path.read_text(encoding="utf-8"))
    tok_config_path = folder / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text(encoding="utf-8")) if tok_config_path.is_file() else {}
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise ExportError(f"the tokenizer is {model.get('type', 'unknown')}, which edgekit cannot write to GGUF",
                          fix="GGUF conversion supports byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM) and "
                          "SentencePiece-style BPE (Llama 2, Mistral) tokenizers")
    ids: dict[int, str] = {int(i): t for t, i in model.get("vocab", {}).items()}
    added = {int(t["id"]): t for t in data.get("added_tokens", [])}
    for i, t in added.items():
        ids[i] = t["content"]
    top = max(ids) + 1 if ids else 0
    if top > vocab_size:
        raise ExportError(f"the tokenizer has token ids up to {top - 1}, but the model's embedding has only "
                          f"{vocab_size} rows", fix="resize the embedding (model.resize_token_embeddings) "
                          "and save the model again")
    spm = _is_sentencepiece_style(data)
    tokens, types = [], []
    for i in range(vocab_size):
        text = ids.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        tokens.append(text)
        if spm and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            types.append(BYTE)  # byte fallback pieces, even when listed as added tokens
        elif i in added:
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        else:
            types.append(NORMAL)
    lookup = {t: i for i, t in enumerate(tokens)}
    special: dict[str, int] = {}
    for role in ("bos", "eos", "unk", "pad"):
        text = _token_text(tok_config.get(f"{role}_token"))
        tid = lookup.get(text) if text is not None else None
        if tid is None:
            cfg = getattr(config, f"{role}_token_id", None)
            tid = cfg[0] if isinstance(cfg, list) and cfg else cfg
        if isinstance(tid, int) and 0 <= tid < vocab_size:
            special[role] = tid
    if "unk" in special and types[special["unk"]] != CONTROL and spm:
        types[special["unk"]] = UNKNOWN
    first, last = _added_by_template(data.get("post_processor"))
    add_bos = bool(tok_config.get("add_bos_token", first))
    add_eos = bool(tok_config.get("add_eos_token", last))
    templates = _chat_templates(folder, tok_config)
    merges = [" ".join(m) if isinstance(m, list) else str(m) for m in model.get("merges", [])]
    if spm:
        return GgufVocab("llama", tokens, types, scores=_spm_scores(tokens, merges), pre=None,
                         special=special, add_bos=add_bos, add_eos=add_eos,
                         add_space_prefix=_adds_space_prefix(data), chat_templates=templates)
    from edgekit.converters.gguf.pretok import detect

    sig = _pre_signature(data.get("pre_tokenizer"))
    by_json = PRE_TOKENIZERS.get(sig)
    by_hash, digest = detect(hf)
    pre = pre_override or by_hash or by_json
    source = "option" if pre_override else "probe hash" if by_hash else "tokenizer.json"
    disagreement = None
    if by_hash and by_json and by_hash != by_json:
        disagreement = (f"tokenizer.json's pre-tokenizer reads as {by_json!r}, but the tokenizer encodes "
                        f"llama.cpp's probe text as {by_hash!r} does; {by_hash!r} is written")
    if pre is None:
        raise ExportError(f"llama.cpp has no pre-tokenizer known to match this tokenizer ({' + '.join(sig) or 'none'})",
                          fix="if you know llama.cpp's name for it, pass -O gguf.pre_tokenizer=NAME (e.g. gpt-2, "
                          "llama-bpe, qwen2, smollm); verification then checks llama.cpp tokenizes like "
                          "Hugging Face")
    return GgufVocab("gpt2", tokens, types, merges=merges, pre=pre, special=special, add_bos=add_bos,
                     add_eos=add_eos, chat_templates=templates, pre_source=source, pre_hash=digest,
                     pre_disagreement=disagreement)


def _spm_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """llama.cpp's SentencePiece tokenizer merges the adjacent pair whose result scores highest:
    a token made by the r-th BPE merge scores -r, so merges apply in the trained order."""
    rank = {m.replace(" ", "", 1): r for r, m in enumerate(merges)}
    return [-float(rank[t]) if t in rank else 0.0 for t in tokens]


def _adds_space_prefix(data: dict[str, Any]) -> bool:
    norm = json.dumps(data.get("normalizer") or {})
    pre = data.get("pre_tokenizer") or {}
    if "Prepend" in norm:
        return True
    if pre.get("type") == "Metaspace":
        return pre.get("prepend_scheme", "always") != "never"
    return False
