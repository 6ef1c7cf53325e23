"""Load-time checks that a shortcut of the generation engine changes no logit on this build and
machine. Each decodes a few tokens two ways in the engine's idle context and compares the logits
bit for bit; the engine takes the shortcut only where they are identical, so greedy text equals
a run alone from an empty context either way. Run on the engine's thread (``Engine.call``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING

from edgekit.runtimes.llamacpp.engine import fill_batch

if TYPE_CHECKING:
    from edgekit.runtimes.llamacpp.engine import Engine


def _logits(engine: Engine, entries: list[tuple[int, int, int]]) -> list[bytes]:
    """Decode (token, position, sequence) entries in one call: every entry's logits, as bytes."""
    lib, ctx = engine._lib, engine._ctx
    fill_batch(engine._batch, [(t, p, q, True) for t, p, q in entries])
    if lib.llama_decode(ctx, engine._batch) != 0:
        raise engine._decode_error(-1, len(entries))
    width = lib.llama_vocab_n_tokens(engine._vocab) * 4  # float32 logits as bytes
    return [ctypes.string_at(lib.llama_get_logits_ith(ctx, i), width) for i in range(len(entries))]


def _run(seq: int, pos: int, tokens: Sequence[int]) -> list[tuple[int, int, int]]:
    return [(t, pos + i, seq) for i, t in enumerate(tokens)]


def decode_together(engine: Engine, tokens: Sequence[int]) -> bool:
    """Whether a token decoded beside others (one per slot) gets bit-identical logits to the same
    token decoded alone: true for quantized weights (Q4_0, Q4_1, Q8_0 here), false for f16/f32
    (llama.cpp's float kernels sum a batch of one and a batch of several in different orders:
    logits differed by 1e-4 to 1e-3). When false, sequences are decoded one call each."""
    mem, n = engine._lib.llama_get_memory(engine._ctx), len(tokens)
    clear = engine._lib.llama_memory_clear
    try:
        clear(mem, True)
        _logits(engine, _run(0, 0, tokens[:-1]))
        alone = _logits(engine, _run(0, n - 1, tokens[-1:]))[0]
        clear(mem, True)
        for s in range(engine.slots):
            _logits(engine, _run(s, 0, tokens[:-1]))
        beside = _logits(engine, [(tokens[-1], n - 1, s) for s in range(engine.slots)])
        return all(x == alone for x in beside)
    finally:
        clear(mem, True)


def prompt_in_two(engine: Engine, tokens: Sequence[int]) -> bool:
    """Whether a prompt decoded in two calls (its first part already in the cache, as a slot's
    prompt cache leaves it) gets bit-identical last logits to the same prompt decoded in one.
    True for SmolLM2 Q4_1 and the tests' f16 model here. (Tokens that were *generated*, decoded
    one per call, are not kept: on SmolLM2 Q4_1 reusing them moved the next logits by up to 0.5.)"""
    mem, k = engine._lib.llama_get_memory(engine._ctx), max(1, len(tokens) * 2 // 3)
    clear = engine._lib.llama_memory_clear
    try:
        clear(mem, True)
        whole = _logits(engine, _run(0, 0, tokens))[-1]
        clear(mem, True)
        _logits(engine, _run(0, 0, tokens[:k]))
        return _logits(engine, _run(0, k, tokens[k:]))[-1] == whole
    finally:
        clear(mem, True)
