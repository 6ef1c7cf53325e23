"""Continuous batching for llama.cpp generation: every sequence in flight advances by one token per
step (in one ``llama_decode`` call where :func:`.exact.decode_together` showed that changes no
logit, else one call per sequence), and a new request joins at the next step (its prompt decoded
in calls of its own) instead of waiting for the generations ahead of it to end.

Each sequence has its own slot: a ``seq_id`` of a context made with ``n_seq_max`` = slots and a
split (non-unified) KV cache, so a sequence's cells always start at 0 of its own stream and its
attention sums the same numbers in the same order as when it runs alone. Greedy text is therefore
the same whether a request runs alone or beside others (tests check it). (With the load option
``kv_layout="unified"`` the slots share one stream instead, and that no longer holds.)

A free slot keeps the K/V of its last prompt (not of the tokens it generated); a new prompt goes
to the free slot that holds its longest prefix and only the rest is decoded, where
:func:`.exact.prompt_in_two` showed at load that this changes no logit.

Sampling is llama.cpp's own sampler chain, built as llama-cpp-python builds it (greedy at
temperature 0; otherwise top-k, typical 1.0, top-p, min-p 0.05, temperature, then a seeded draw),
one chain per sequence. Text comes from ``llama_token_to_piece`` one token at a time, decoded as
UTF-8 incrementally (bytes that are not UTF-8 dropped, as llama-cpp-python drops them), with stop
strings found across pieces and the text that may start one held back until it is known not to.
"""

from __future__ import annotations

import codecs
import ctypes
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from edgekit.errors import RuntimeFailure

MIN_P = 0.05  # llama-cpp-python's default, kept so sampled text matches its sampler chain
NO_KV_SLOT = 1  # llama_decode's answer when the K/V cache has no room for the batch


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: greedy at ``temperature`` 0, else a seeded draw."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    seed: int = 0

    def sampler(self, llama_cpp: ModuleType) -> Any:
        if self.temperature == 0:
            return llama_cpp.llama_sampler_init_greedy()
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        for s in (llama_cpp.llama_sampler_init_top_k(self.top_k), llama_cpp.llama_sampler_init_typical(1.0, 1),
                  llama_cpp.llama_sampler_init_top_p(self.top_p, 1), llama_cpp.llama_sampler_init_min_p(MIN_P, 1),
                  llama_cpp.llama_sampler_init_temp(self.temperature),
                  llama_cpp.llama_sampler_init_dist(self.seed & 0xFFFFFFFF)):
            llama_cpp.llama_sampler_chain_add(chain, s)  # the chain owns them
        return chain


class StopText:
    """Bytes of pieces in, text out: UTF-8 decoded across pieces, cut at the first stop string,
    and any tail that could be the start of a stop string held back until the next piece."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self._utf8 = codecs.getincrementaldecoder("utf-8")("ignore")

    def push(self, data: bytes, final: bool = False) -> tuple[str, bool]:
        """(text that may be emitted now, whether a stop string ended the text)."""
        text = self._held + self._utf8.decode(data, final)
        if not self.stops:
            self._held = ""
            return text, False
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return text[:cut], True
        hold = 0 if final else max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])),
                                   default=0)
        self._held = text[len(text) - hold:] if hold else ""
        return text[:len(text) - hold], False


class Request:
    """One sequence to generate. ``on_piece(text)`` and ``on_done(request)`` are called in the
    engine's thread; ``cancel()`` may be called from any thread (the slot is freed at the next step)."""

    def __init__(self, tokens: list[int], max_tokens: int, sampling: Sampling, stops: Sequence[str],
                 on_piece: Callable[[str], None], on_done: Callable[[Request], None]) -> None:
        self.tokens = tokens
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.on_piece, self.on_done = on_piece, on_done
        self.prompt_tokens = len(tokens)
        self.completion_tokens = 0
        self.finish_reason: str | None = None  # "stop" or "length" once done
        self.error: BaseException | None = None
        self.cancelled = False
        self.admitted = threading.Event()  # it has a slot (its prompt is being decoded)
        self.done = threading.Event()
        self._text = StopText(stops)
        self._slot = -1
        self._fed = 0  # prompt tokens decoded so far
        self._next = -1  # the last sampled token, decoded at the next step
        self._sampler: Any = None
        self._engine: Engine | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self._engine is not None:
            self._engine.wake()


def fill_batch(batch: Any, entries: Sequence[tuple[int, int, int, bool]]) -> None:
    """Put (token, position, sequence, logits wanted?) entries into a ``llama_batch``, one sequence each."""
    for i, (token, pos, seq, logits) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
        batch.seq_id[i][0] = seq
    batch.n_tokens = len(entries)


def _shared(kept: list[int], tokens: list[int]) -> int:
    """How many tokens ``tokens`` starts with that ``kept`` starts with too."""
    return next((i for i, (a, b) in enumerate(zip(kept, tokens)) if a != b), min(len(kept), len(tokens)))


class Engine:
    """Runs :class:`Request` s in one llama.cpp context (``slots`` sequences at once) from its own
    thread, started on the first request and stopped by :meth:`close`."""

    def __init__(self, llama_cpp: ModuleType, ctx: Any, vocab: Any, batch: Any, *, slots: int, n_batch: int,
                 n_ctx: int, decode_error: Callable[[int, int], BaseException]) -> None:
        self._lib, self._ctx, self._vocab, self._batch = llama_cpp, ctx, vocab, batch
        self.slots, self.n_batch, self.n_ctx = slots, n_batch, n_ctx
        self._decode_error = decode_error
        self._cond = threading.Condition()
        self._pending: deque[Request] = deque()
        self._active: list[Request] = []
        self._free = list(range(slots))
        self._exclusive = 0
        self._closing = False
        self.peak = 0  # the most sequences in flight at once so far
        self.generated = 0  # tokens sampled so far, every sequence's (cancelled ones included)
        # keep each slot's prompt in its K/V cache for the next request (set from exact.prompt_in_two() at load)
        self.prompt_cache = False
        self.reused = 0  # prompt tokens taken from a slot's cache instead of decoded
        self._kept: list[list[int]] = [[] for _ in range(slots)]  # the prompt tokens each free slot holds
        # several sequences' next tokens in one llama_decode (set from exact.decode_together() at load)
        self.together = slots > 1
        self._thread: threading.Thread | None = None
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()  # run on this thread (call())
        self._piece = ctypes.create_string_buffer(256)

    # -- from any thread ---------------------------------------------------------------------------
    def submit(self, request: Request) -> Request:
        with self._cond:
            self._open("a generation was submitted")
            request._engine = self
            self._pending.append(request)
            self._cond.notify_all()
        return request

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` run on the engine's thread once no sequence is in flight (none is admitted
        meanwhile), and its result. All llama.cpp compute goes through this thread: ggml's OpenMP
        workers belong to the thread that computes, and compute from a second thread (a logits
        call, the load-time probe) left two teams spinning on 2 cores, which halved generation
        speed afterwards (SmolLM2 Q4_1, 2 threads: ~95 -> ~45 tokens/s)."""
        if threading.current_thread() is self._thread:
            return fn()
        done: Future = Future()
        with self._cond:
            self._open("llama.cpp was called")
            self._calls.append((fn, done))
            self._cond.notify_all()
        return done.result()

    def _open(self, what: str) -> None:
        """Refuse work once closing; start the engine's thread on the first piece of work."""
        if self._closing:
            raise RuntimeFailure(f"the model was closed while {what}", fix="load it again with edgekit.load()")
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="edgekit-llamacpp-engine", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @property
    def busy(self) -> int:
        """Sequences in flight or waiting for a slot."""
        return len(self._active) + len(self._pending)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """The context to oneself (``logits``, ``bench_tokens``): waits for the sequences in flight to
        end and admits no new one meanwhile; every slot's cache is empty inside."""
        with self._cond:
            self._exclusive += 1
            while self._active:
                self._cond.wait()
            self._kept = [[] for _ in range(self.slots)]  # the caller empties the cache
        try:
            yield
        finally:
            with self._cond:
                self._exclusive -= 1
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        for r in list(self._pending) + self._active:
            self._finish(r, None, RuntimeFailure("the model was closed during the generation",
                                                 fix="keep the model open until its generations end"))
        self._pending.clear()
        while self._calls:
            self._calls.popleft()[1].set_exception(RuntimeFailure("the model was closed during the call",
                                                                  fix="keep the model open until its calls end"))

    # -- the engine's thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self._active and not self._calls and not any(
                        r.cancelled for r in self._pending) and (self._exclusive or not self._pending):
                    self._cond.wait()
                if self._closing:
                    return
                gone = [r for r in self._pending if r.cancelled]  # left while waiting for a slot
                for r in gone:
                    self._pending.remove(r)
                call = self._calls.popleft() if self._calls and not self._active else None
                while call is None and self._free and self._pending and not self._exclusive and not self._calls:
                    self._admit(self._pending.popleft())
            for r in gone:
                self._finish(r, None)
            if call is not None:
                fn, done = call
                try:
                    done.set_result(fn())
                except BaseException as e:  # noqa: BLE001 (raised in the caller's thread)
                    done.set_exception(e)
                continue
            try:
                self._step()
            except Exception as e:  # a failed decode ends every sequence in it, with its error
                for r in list(self._active):
                    self._finish(r, None, e)

    def _admit(self, r: Request) -> None:
        if r.cancelled:
            self._finish(r, None)
            return
        r._slot = self._slot_for(r.tokens)
        self._free.remove(r._slot)
        kept, self._kept[r._slot] = self._kept[r._slot], []
        if self.prompt_cache:  # the prompt's prefix already in the slot is kept, the rest decoded
            r._fed = min(_shared(kept, r.tokens), len(r.tokens) - 1)  # at least one token decoded: its logits
            self._lib.llama_memory_seq_rm(self._lib.llama_get_memory(self._ctx), r._slot, r._fed, -1)
            self.reused += r._fed
        r._sampler = r.sampling.sampler(self._lib)
        self._active.append(r)
        self.peak = max(self.peak, len(self._active))
        r.admitted.set()

    def _slot_for(self, tokens: list[int]) -> int:
        """The free slot whose kept prompt shares the longest prefix with ``tokens`` if that is at
        least half of what it keeps (a chat's next turn: all of it), else the one that keeps the
        least (an empty one first), so a short match (a BOS token) does not evict a long prompt."""
        if not self.prompt_cache:
            return self._free[0]
        best = max(self._free, key=lambda slot: (_shared(self._kept[slot], tokens), -slot))
        shared = _shared(self._kept[best], tokens)
        if shared and 2 * shared >= len(self._kept[best]):
            return best
        return min(self._free, key=lambda slot: (len(self._kept[slot]), slot))

    def _step(self) -> None:
        """The next chunk of a new sequence's prompt if one waits (cut as it would be alone), else
        the next token of every sequence: in one ``llama_decode`` when :attr:`together`, else one
        call per sequence (still a token each per step). Prompts never share a batch with other
        sequences' tokens: llama.cpp splits such a batch unevenly, and the prompt's numbers would
        differ from a run alone (seen on SmolLM2 Q4_1: greedy text diverged after 25 tokens)."""
        for r in list(self._active):
            if r.cancelled:
                self._finish(r, None)
        filling = next((r for r in self._active if r._fed < len(r.tokens)), None)
        if filling is not None:
            r, chunk = filling, filling.tokens[filling._fed:filling._fed + self.n_batch]
            done = r._fed + len(chunk) == len(r.tokens)
            group = [(r, tok, r._fed + i, done and i == len(chunk) - 1) for i, tok in enumerate(chunk)]
            r._fed += len(chunk)
            self._decode([group])
            return
        steps = [(r, r._next, r._fed + r.completion_tokens - 1, True) for r in self._active]
        self._decode([steps] if self.together else [[one] for one in steps])

    def _decode(self, groups: list[list[tuple[Request, int, int, bool]]]) -> None:
        """Each group as one ``llama_decode`` (token, position, sequence's slot, logits wanted?),
        then a token sampled for every entry that asked for logits."""
        for group in groups:
            while group:
                fill_batch(self._batch, [(tok, pos, r._slot, logits) for r, tok, pos, logits in group])
                rc = self._lib.llama_decode(self._ctx, self._batch)
                if rc != NO_KV_SLOT:
                    break
                # a K/V cache the slots share (kv_layout "unified") is full: the longest sequence
                # ends there, as at the end of its context, and the others go on without it
                longest = max(group, key=lambda entry: entry[2])[0]
                # a prompt's chunk that failed: its cells are not there to keep
                longest._fed = min([longest._fed] + [pos for r, _, pos, _ in group if r is longest])
                self._finish(longest, "length")
                group = [entry for entry in group if entry[0] is not longest]
            if group and rc != 0:
                raise self._decode_error(rc, len(group))
            for i, (r, _, _, logits) in enumerate(group):
                if logits:
                    self._accept(r, self._lib.llama_sampler_sample(r._sampler, self._ctx, i))

    def _accept(self, r: Request, token: int) -> None:
        if self._lib.llama_vocab_is_eog(self._vocab, token):
            return self._finish(r, "stop")
        r.completion_tokens += 1
        self.generated += 1
        n = self._lib.llama_token_to_piece(self._vocab, token, self._piece, len(self._piece), 0, False)
        text, stopped = r._text.push(self._piece.raw[:max(n, 0)])
        if text:
            r.on_piece(text)
        if stopped:
            return self._finish(r, "stop")
        # the token just sampled is decoded at position prompt + completion - 1, which must fit
        if r.completion_tokens >= r.max_tokens or r.prompt_tokens + r.completion_tokens > self.n_ctx:
            return self._finish(r, "length")
        r._next = token

    def _finish(self, r: Request, reason: str | None, error: BaseException | None = None) -> None:
        if r.done.is_set():
            return
        if reason is not None and error is None:
            tail, _ = r._text.push(b"", final=True)
            if tail:
                r.on_piece(tail)
        r.finish_reason, r.error = reason, error
        with self._cond:
            if r in self._active:
                self._active.remove(r)
                mem = self._lib.llama_get_memory(self._ctx)
                # the prompt's cells stay for the next request when caching (not the generated
                # tokens': decoded one per call, they may differ from the same tokens in a prompt)
                keep = r._fed if self.prompt_cache and error is None else 0
                self._lib.llama_memory_seq_rm(mem, r._slot, keep, -1)
                self._kept[r._slot] = r.tokens[:keep]
                self._free.append(r._slot)
                self._free.sort()
            self._cond.notify_all()
        if r._sampler is not None:
            self._lib.llama_sampler_free(r._sampler)
            r._sampler = None
        r.admitted.set()
        r.done.set()
        r.on_done(r)
