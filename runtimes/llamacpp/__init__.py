"""llama.cpp backend (through llama-cpp-python) for GGUF language models.

Besides the shared surface (``run`` -> per-position logits, ``benchmark``), a GGUF model
generates text (``generate``, ``chat`` with the file's template, both streamable), scores tokens
(``logits``, used by :mod:`edgekit.perplexity`) and measures itself in llama-bench's terms
(``bench_tokens``: prompt processing and generation tokens/s). Generation runs in
:mod:`.engine` (continuous batching): calls from several threads, or a server's requests, are
decoded together in one context, ``parallel`` sequences at a time (load option, default 1).

A file is checked before llama.cpp sees it: its header is parsed here (truncated files and
missing keys become :class:`ArtifactError`), then a child process loads it once, because
llama.cpp aborts the process on some bad files. llama.cpp's own log goes to a buffer, never to
the terminal; its errors end up in the messages of the errors raised.

>>> with edgekit.load("out/m-q4_k_m.gguf", threads=2) as m:  # doctest: +SKIP
...     for piece in m.generate("Once upon a time", max_tokens=32, stream=True):
...         ...
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

import numpy as np

from edgekit.errors import ArtifactError, ConfigError, DeviceUnavailableError, InputError, RuntimeFailure
from edgekit.runtime import Model
from edgekit.runtimes import RUNTIMES
from edgekit.runtimes.llamacpp import exact
from edgekit.runtimes.llamacpp.engine import Engine, Request, Sampling, fill_batch
from edgekit.runtimes.llamacpp.log import LlamaLog, llama_cpp_module
from edgekit.runtimes.llamacpp.pieces import Pieces, PieceStream
from edgekit.types import Device, Format, Signature, TensorSpec

DEFAULT_CTX = 4096  # context when the caller gives none (capped at the model's training context)
# kv_cache option -> ggml type of the K/V cache (llama.cpp's default is f16)
KV_TYPES: dict[str, int] = {"f32": 0, "f16": 1, "bf16": 30}
# kv_layout option -> (context cells for n_ctx and p slots, unified K/V?): "divided" splits n_ctx among
# the slots (each request gets n_ctx / p); "per-slot" gives each slot its own n_ctx (memory x p);
# "unified" shares one n_ctx cache, but a sequence's cells then lie among the others' and its
# attention sums in another order: greedy text changed beside other sequences (bench/gguf_kv.py)
KV_LAYOUTS: dict[str, tuple[Callable[[int, int], int], bool]] = {
    "divided": (lambda n, p: n, False), "per-slot": (lambda n, p: n * p, False), "unified": (lambda n, p: n, True)}


@dataclass(frozen=True)
class LlamaCppOptions:
    """Load options of the llama.cpp backend (``edgekit.load(path, n_ctx=2048, ...)``)."""

    n_ctx: int | None = None  # context (the slots divide it: kv_layout); None: the model's, at most DEFAULT_CTX
    n_batch: int = 512  # tokens per decode call (prompt processing chunk)
    n_gpu_layers: int | None = None  # None: all layers on device="gpu", none on "cpu"
    seed: int = 0  # sampling seed of generate()/chat()
    probe: bool = True  # load the file in a child process first (llama.cpp can abort on bad files)
    flash_attn: bool = False
    kv_cache: str = "f16"  # K/V cache type: f16 (llama.cpp's default), bf16, or f32 for exact parity
    parallel: int = 1  # sequences generated at once (continuous batching)
    kv_layout: str = "divided"  # the slots' K/V cache (KV_LAYOUTS): divided, per-slot or unified
    prompt_cache: bool = True  # a slot keeps its last prompt's K/V for a next prompt that starts the same

    def __post_init__(self) -> None:
        if self.kv_cache not in KV_TYPES:
            raise ConfigError(f"unknown kv_cache type {self.kv_cache!r}", fix=f"use one of: {', '.join(KV_TYPES)}")
        if self.kv_layout not in KV_LAYOUTS:
            raise ConfigError(f"unknown kv_layout {self.kv_layout!r}", fix=f"use one of: {', '.join(KV_LAYOUTS)}")
        if self.n_ctx is not None and self.n_ctx < 8:
            raise ConfigError(f"n_ctx must be at least 8, got {self.n_ctx}", fix="pass e.g. n_ctx=2048")
        if self.n_batch < 1:
            raise ConfigError(f"n_batch must be at least 1, got {self.n_batch}", fix="pass e.g. n_batch=512")
        if not 1 <= self.parallel <= min(self.n_batch, 64):
            raise ConfigError(f"parallel must be from 1 to {min(self.n_batch, 64)}, got {self.parallel}",
                              fix="pass e.g. parallel=4 (the slots divide n_ctx among them)")


@dataclass(frozen=True)
class TokenBench:
    """Throughput in llama-bench's terms: ``pp`` (prompt of ``n_prompt`` tokens in one go) and
    ``tg`` (``n_gen`` tokens decoded one at a time), each mean ± std over ``repeats``."""

    artifact: str
    precision: str | None
    device: str
    threads: int | None
    n_prompt: int
    n_gen: int
    repeats: int
    pp_tokens_per_s: float
    pp_std: float
    tg_tokens_per_s: float
    tg_std: float
    load_ms: float
    peak_rss_mb: float
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


CTX_PAD = 256  # llama.cpp rounds a context up to a multiple of this
WRAPPER_BATCH = 8  # llama-cpp-python's own context is only used to hold the model: kept small

# llama.cpp's own device names (what ``devices()`` lists) -> the kind of device they are
NATIVE_DEVICES: dict[str, Device] = {"cpu": Device.CPU, "gpu-offload": Device.GPU}


@RUNTIMES.register("llamacpp")
class LlamaCppModel(Model):
    """A GGUF model in llama.cpp: per-position logits, generation, chat and token benchmarks."""

    name = "llamacpp"
    formats = (Format.GGUF,)
    module = "llama_cpp"
    extra = "llamacpp"
    serve_options: dict[str, Any] = {"parallel": 4}  # what `edgekit serve` loads with unless -O says otherwise

    @classmethod
    def devices(cls) -> dict[Device, list[str]]:
        llama_cpp = llama_cpp_module()
        out: dict[Device, list[str]] = {Device.CPU: ["cpu"]}
        if llama_cpp.llama_supports_gpu_offload():
            out[Device.GPU] = ["gpu-offload"]
        out[Device.AUTO] = out.get(Device.GPU, []) + ["cpu"]
        return out

    @classmethod
    def version(cls) -> str | None:
        from edgekit.deps import version

        return version("llama_cpp_python")

    # -- loading -----------------------------------------------------------------------------
    def _open(self) -> Signature:
        from edgekit.options import parse_options
        from edgekit.runtimes.llamacpp.gguf_file import read_header

        opts = parse_options(LlamaCppOptions, self.options)
        self._opts = opts
        self.header = read_header(self.path)
        missing = self.header.missing_keys()
        if missing:
            raise ArtifactError(f"{self.path.name} lacks GGUF key(s) llama.cpp needs: {', '.join(missing)}",
                                fix="re-convert the model with `edgekit convert ... --to gguf`")
        llama_cpp = llama_cpp_module()
        gpu_layers = self._gpu_layers(llama_cpp, opts)
        if opts.probe:
            from edgekit.runtimes.llamacpp.probe import probe

            probe(self.path)
        train_ctx = int(self.header.get("{arch}.context_length") or DEFAULT_CTX)
        n_ctx = opts.n_ctx or min(train_ctx, DEFAULT_CTX)
        n_ctx = -(-n_ctx // CTX_PAD) * CTX_PAD  # llama.cpp pads a context to a multiple of CTX_PAD
        mark = LlamaLog.mark()
        t0 = time.perf_counter()
        try:  # the wrapper's own context stays tiny: generation and logits use the one made below
            self._llm = llama_cpp.Llama(
                str(self.path), n_ctx=CTX_PAD, n_batch=WRAPPER_BATCH, n_ubatch=WRAPPER_BATCH,
                n_threads=self.threads, n_threads_batch=self.threads, n_gpu_layers=gpu_layers,
                seed=opts.seed, flash_attn=opts.flash_attn, type_k=KV_TYPES[opts.kv_cache],
                type_v=KV_TYPES[opts.kv_cache], verbose=False)
        except (ValueError, RuntimeError) as e:
            reason = LlamaLog.last_error(mark) or str(e)
            raise ArtifactError(f"llama.cpp cannot load {self.path.name}: {reason}",
                                fix="re-convert the model with `edgekit convert ... --to gguf`") from e
        self._llama_cpp = llama_cpp
        self._ctx = self._context(llama_cpp, n_ctx, opts, mark)
        self.load_ms = (time.perf_counter() - t0) * 1000
        self.n_ctx = int(llama_cpp.llama_n_ctx_seq(self._ctx))  # what one sequence can fill
        self.n_vocab = self._llm.n_vocab()
        self.n_batch = int(llama_cpp.llama_n_batch(self._ctx))  # what llama.cpp took (it may round n_ctx up)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._engine = Engine(llama_cpp, self._ctx, self._vocab, self._batch, slots=opts.parallel,
                              n_batch=self.n_batch, n_ctx=self.n_ctx, decode_error=self._decode_error)
        probe = (self.tokenize("The river flows past the old mill") or [0]) * 3
        if opts.parallel > 1:  # decode sequences in one call only where that changes no logit
            self._engine.together = self._engine.call(lambda: exact.decode_together(self._engine, probe[:8]))
        if opts.prompt_cache and opts.kv_layout != "unified":  # likewise a slot's kept prompt
            self._engine.prompt_cache = self._engine.call(lambda: exact.prompt_in_two(self._engine, probe[:16]))
        self._gpu_layers_used = gpu_layers
        ids = TensorSpec("input_ids", "int64", ("batch", "sequence"))
        mask = TensorSpec("attention_mask", "int64", ("batch", "sequence"))
        logits = TensorSpec("logits", "float32", ("batch", "sequence", self.n_vocab))
        return Signature((ids, mask), (logits,))

    def _context(self, llama_cpp: ModuleType, n_ctx: int, opts: LlamaCppOptions, mark: int) -> Any:
        """The context everything runs in: ``opts.parallel`` sequences laid out in the K/V cache as
        ``opts.kv_layout`` says (``divided``, the default: each its own stream of ``n_ctx / parallel``
        cells, so a sequence computes as it would alone, in the memory of one ``n_ctx``)."""
        params = type(self._llm.context_params).from_buffer_copy(self._llm.context_params)
        cells, unified = KV_LAYOUTS[opts.kv_layout]
        params.n_ctx, params.n_seq_max, params.kv_unified = cells(n_ctx, opts.parallel), opts.parallel, unified
        params.n_batch = params.n_ubatch = min(opts.n_batch, n_ctx)
        ctx = llama_cpp.llama_init_from_model(self._llm.model, params)
        if not ctx:
            self._llm.close()
            raise ArtifactError(f"llama.cpp cannot make a context for {self.path.name}: "
                                f"{LlamaLog.last_error(mark) or 'no reason logged'}",
                                fix="load with a smaller n_ctx (or parallel, with kv_layout='per-slot')")
        return ctx

    def _gpu_layers(self, llama_cpp: ModuleType, opts: LlamaCppOptions) -> int:
        device = self.request.kind
        if self.request.native is not None:  # "llamacpp:cpu", "llamacpp:gpu-offload": the names devices() lists
            if self.request.native not in NATIVE_DEVICES:
                raise self._unavailable(self.device)
            device = NATIVE_DEVICES[self.request.native]
        has_gpu = bool(llama_cpp.llama_supports_gpu_offload())
        if device is Device.GPU and not has_gpu:
            raise DeviceUnavailableError(
                "this llama-cpp-python was built without a GPU backend, so it cannot offload layers",
                fix="use device='cpu', or reinstall llama-cpp-python with CMAKE_ARGS='-DGGML_CUDA=on' "
                "(or -DGGML_VULKAN=on / -DGGML_METAL=on)")
        if device is Device.NPU:
            raise self._unavailable(device.value)
        if opts.n_gpu_layers is not None:
            return opts.n_gpu_layers
        return -1 if device is Device.GPU or (device is Device.AUTO and has_gpu) else 0

    def _close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            self._engine.close()
            self._llama_cpp.llama_free(self._ctx)
            self._llama_cpp.llama_batch_free(self._batch)
            llm.close()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "n_ctx": self.n_ctx, "n_batch": self.n_batch, "kv_cache": self._opts.kv_cache,
                "parallel": self._opts.parallel, "kv_layout": self._opts.kv_layout, "decode_together": self._engine.together,
                "prompt_cache": self._engine.prompt_cache,
                "n_gpu_layers": self._gpu_layers_used, "architecture": self.header.architecture,
                "tensor_types": self.header.tensor_types(), "llama_cpp_python": self.version()}

    # -- the shared surface: per-position logits ----------------------------------------------
    def run(self, inputs: Mapping[str, Any] | None = None, /, **named: Any) -> dict[str, np.ndarray]:
        """Logits for every position of each row of ``input_ids`` ([batch, n] -> [batch, n, vocab]).

        ``attention_mask`` may be left out (all ones). Rows run one at a time, each from an empty
        context; where the mask is 0 (padding, on either side) the logits are 0.
        """
        feed = dict(inputs) if inputs is not None else {}
        feed.update(named)
        if "input_ids" in feed and "attention_mask" not in feed:
            feed["attention_mask"] = np.ones(np.shape(feed["input_ids"]), dtype=np.int64)
        return super().run(feed)

    __call__ = run

    def _run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids, mask = feed["input_ids"], feed["attention_mask"]
        if ids.shape != mask.shape:
            raise InputError(f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} differ in shape",
                             fix="give both the same [batch, sequence] shape")
        out = np.zeros((*ids.shape, self.n_vocab), dtype=np.float32)
        for row in range(ids.shape[0]):
            real = np.flatnonzero(mask[row])
            if real.size == 0:
                continue
            if real[-1] - real[0] + 1 != real.size:
                raise InputError(f"attention_mask row {row} has gaps: padding must be at the start or the end",
                                 fix="pad each row on one side only (left or right)")
            out[row, real] = self.logits(ids[row, real])
        return {"logits": out}

    def logits(self, tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Logits [n, vocab] of every position of one token sequence, from an empty context."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        self._check_tokens(ids)
        out = np.empty((ids.size, self.n_vocab), dtype=np.float32)

        def compute() -> None:
            self._clear()
            try:
                for start in range(0, ids.size, self.n_batch):
                    chunk = ids[start:start + self.n_batch]
                    self._decode(chunk, start, all_logits=True)
                    ptr = self._llama_cpp.llama_get_logits(self._ctx)
                    out[start:start + chunk.size] = np.ctypeslib.as_array(ptr, shape=(chunk.size, self.n_vocab))
            finally:
                self._clear()

        with self._turns, self._engine.exclusive():  # one llama.cpp context: calls take turns
            self._engine.call(compute)  # on the engine's thread, as all llama.cpp compute (Engine.call)
        return out

    def _larger_ctx(self, tokens: int) -> str:
        """How to load so that one request holds ``tokens``: ``divided`` gives each slot n_ctx / parallel."""
        p = self._opts.parallel
        if p == 1 or self._opts.kv_layout != "divided":
            return f"edgekit.load(path, n_ctx={tokens})"
        return (f"edgekit.load(path, n_ctx={tokens * p}, parallel={p}) (kv_layout 'divided' gives each of the {p} "
                f"slots n_ctx / {p}; with `edgekit serve`: -O llamacpp.n_ctx={tokens * p})")

    def _check_tokens(self, ids: np.ndarray) -> None:
        if self._closed:
            raise ConfigError(f"{self.path.name} was closed", fix="load it again with edgekit.load()")
        if ids.size > self.n_ctx:
            raise InputError(f"{ids.size} tokens do not fit the context of {self.n_ctx}",
                             fix=f"load with a larger context, {self._larger_ctx(ids.size)}, "
                             "or pass fewer tokens")
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_vocab):
            raise InputError(f"token ids must lie in [0, {self.n_vocab}), got {ids.min()}..{ids.max()}",
                             fix="tokenize with this model's tokenizer (m.tokenize(text))")

    def _clear(self) -> None:
        """An empty KV cache (every sequence's)."""
        mem = self._llama_cpp.llama_get_memory(self._ctx)
        self._llama_cpp.llama_memory_clear(mem, True)

    def _decode(self, tokens: np.ndarray, pos0: int, *, all_logits: bool) -> None:
        b, n = self._batch, int(tokens.size)
        if not 0 < n <= self.n_batch:  # llama.cpp asserts (aborts the process) on a larger batch
            raise RuntimeFailure(f"cannot decode {n} tokens at once (n_batch is {self.n_batch})",
                                 fix="pass at most n_batch tokens per decode call")
        fill_batch(b, [(int(tokens[i]), pos0 + i, 0, all_logits or i == n - 1) for i in range(n)])
        mark = LlamaLog.mark()
        rc = self._llama_cpp.llama_decode(self._ctx, b)
        if rc != 0:
            raise self._decode_error(rc, n, mark)

    @staticmethod
    def _decode_error(rc: int, n: int, mark: int | None = None) -> RuntimeFailure:
        reason = LlamaLog.last_error(mark) if mark is not None else None
        return RuntimeFailure(f"llama.cpp failed to decode {n} tokens (code {rc}): {reason or 'no reason logged'}",
                              fix="check the context size (n_ctx) and the token ids")

    # -- text ----------------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """Token ids of ``text`` as llama.cpp splits it (BOS/EOS as the file says; special tokens parsed)."""
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=True))

    def detokenize(self, tokens: Sequence[int], *, special: bool = False) -> str:
        """Text of ``tokens`` (control tokens such as BOS rendered only with ``special=True``);
        a SentencePiece-style vocabulary drops the space it prefixed to the text."""
        llama_cpp, ids = self._llama_cpp, [int(t) for t in tokens]
        arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
        vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        size = 16 * len(ids) + 16
        for _ in range(2):  # a negative answer is the size needed
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, special)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", "replace")
            size = -n
        raise RuntimeFailure("llama.cpp could not detokenize the tokens", fix="check the token ids")

    @property
    def chat_template(self) -> str | None:
        value = self.header.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    def generate(self, prompt: str, max_tokens: int = 128, *, temperature: float = 0.8, top_p: float = 0.95,
                 top_k: int = 40, stop: str | Sequence[str] | None = None, seed: int | None = None,
                 stream: bool = False) -> str | Iterator[str]:
        """Continue ``prompt``: the text, or with ``stream=True`` an iterator of text pieces.
        ``temperature=0`` decodes greedily; generation ends at ``max_tokens``, a stop string, the
        model's end-of-generation token or the end of the context. Calls from several threads are
        decoded together (load with ``parallel=N`` to run N at once)."""
        return self._collect(stream, prompt=prompt, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                             top_k=top_k, stop=stop, seed=seed)

    def chat(self, messages: Sequence[Mapping[str, str]], max_tokens: int = 256, *, temperature: float = 0.8,
             top_p: float = 0.95, top_k: int = 40, stop: str | Sequence[str] | None = None,
             seed: int | None = None, stream: bool = False) -> str | Iterator[str]:
        """Answer ``messages`` ([{"role": "user", "content": ...}]) formatted with the file's chat
        template: the reply, or with ``stream=True`` an iterator of its pieces."""
        return self._collect(stream, messages=messages, max_tokens=max_tokens, temperature=temperature,
                             top_p=top_p, top_k=top_k, stop=stop, seed=seed)

    def _collect(self, stream: bool, **request: Any) -> str | Iterator[str]:
        """One generation started with :meth:`start_generation`: its pieces as they come, or the text."""
        pieces = Pieces()
        started = PieceStream(pieces, self.start_generation(on_piece=pieces.put, on_done=pieces.end, **request))
        if stream:
            return started
        with started:
            return "".join(started)

    def start_generation(self, *, prompt: str | None = None, messages: Sequence[Mapping[str, str]] | None = None,
                         max_tokens: int = 128, temperature: float = 0.8, top_p: float = 0.95, top_k: int = 40,
                         stop: str | Sequence[str] | None = None, seed: int | None = None,
                         on_piece: Callable[[str], None],
                         on_done: Callable[[Request], None] = lambda request: None) -> Request:
        """Queue one generation (``prompt`` continued, or ``messages`` answered) and return at once.
        ``on_piece(text)`` and ``on_done(request)`` are called from the generating thread;
        ``request.cancel()`` stops it; ``request`` holds the exact token counts and finish reason."""
        texts = [prompt] if messages is None else [str(m.get("content", "")) for m in messages]
        self._check_request([t for t in texts if t is not None], max_tokens)
        tokens, stops = (self.tokenize(prompt or ""), []) if messages is None else self._chat_prompt(messages)
        if len(tokens) >= self.n_ctx:
            raise InputError(f"the prompt is {len(tokens)} tokens, more than the context of {self.n_ctx} holds "
                             "with room to generate",
                             fix=f"shorten the prompt, or load with a larger context: {self._larger_ctx(2 * len(tokens))}")
        return self._engine.submit(Request(tokens, max_tokens, Sampling(temperature, top_p, top_k, self._seed(seed)),
                                           [*_stops(stop), *stops], on_piece, on_done))

    def _chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[str]]:
        """Token ids of ``messages`` rendered with the file's template by llama-cpp-python's own
        formatter, and the stop strings it gives (the end-of-sequence token's text)."""
        if self.chat_template is None:
            raise ConfigError(f"{self.path.name} has no chat template",
                              fix="use generate() with your own prompt format, or convert a model whose "
                              "tokenizer_config.json has a chat_template")
        rendered = self._chat_formatter()(messages=[dict(m) for m in messages])
        tokens = list(self._llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special,
                                         special=True))
        stops = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return tokens, [s for s in stops if isinstance(s, str)]

    def _chat_formatter(self) -> Any:
        """llama-cpp-python's formatter for the file's template, made (the Jinja template compiled)
        on the first chat request, not on every one."""
        fmt = getattr(self, "_formatter", None)
        if fmt is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            meta = self.header.metadata
            ids = {k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos")}
            text = {k: self.detokenize([int(t)], special=True) if t is not None else "" for k, t in ids.items()}
            fmt = self._formatter = Jinja2ChatFormatter(template=self.chat_template, eos_token=text["eos"],
                                                        bos_token=text["bos"])
        return fmt

    def _seed(self, seed: int | None) -> int:
        return self._opts.seed if seed is None else seed

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError(f"{self.path.name} was closed", fix="load it again with edgekit.load()")

    def _check_request(self, texts: list[str], max_tokens: int) -> None:
        """Refuse what llama.cpp would fail on with a raw error, or silently run to the context's end."""
        from edgekit.inputs import check_unicode

        self._check_open()
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {max_tokens!r}",
                              fix="pass the number of tokens to generate, e.g. max_tokens=128 (llama.cpp would "
                              "read 0 or less as 'until the context is full')")
        check_unicode(texts)

    # -- llama-bench style throughput -------------------------------------------------------------
    def bench_tokens(self, n_prompt: int = 512, n_gen: int = 128, *, repeats: int = 5, warmup: int = 1,
                     seed: int = 0) -> TokenBench:
        """Prompt processing (``n_prompt`` random tokens decoded in batches, logits for the last
        only) and generation (``n_gen`` tokens one at a time) throughput, as llama-bench measures
        them: each from an empty context, mean ± std tokens/s over ``repeats`` after ``warmup``."""
        from edgekit.harness import peak_rss_mb

        self._check_open()
        if max(n_prompt, n_gen) > self.n_ctx:
            raise ConfigError(f"n_prompt={n_prompt}/n_gen={n_gen} exceed the context of {self.n_ctx}",
                              fix=f"{self._larger_ctx(max(n_prompt, n_gen))} or more")
        rng = np.random.default_rng(seed)
        pp, tg = [], []

        def measure() -> None:
            for i in range(warmup + repeats):
                prompt = rng.integers(0, self.n_vocab, size=n_prompt)
                self._clear()
                t = time.perf_counter()
                for start in range(0, n_prompt, self.n_batch):
                    self._decode(prompt[start:start + self.n_batch], start, all_logits=False)
                pp_s = time.perf_counter() - t
                gen = rng.integers(0, self.n_vocab, size=n_gen)
                self._clear()
                t = time.perf_counter()
                for j in range(n_gen):
                    self._decode(gen[j:j + 1], j, all_logits=True)
                tg_s = time.perf_counter() - t
                if i >= warmup:
                    pp.append(n_prompt / pp_s)
                    tg.append(n_gen / tg_s)
            self._clear()

        with self._engine.exclusive():  # on the engine's thread, as all llama.cpp compute
            self._engine.call(measure)
        m = self.manifest
        return TokenBench(
            artifact=str(self.path), precision=m.precision.value if m else None, device=self.device,
            threads=self.threads, n_prompt=n_prompt, n_gen=n_gen, repeats=repeats,
            pp_tokens_per_s=float(np.mean(pp)), pp_std=float(np.std(pp, ddof=1)) if len(pp) > 1 else 0.0,
            tg_tokens_per_s=float(np.mean(tg)), tg_std=float(np.std(tg, ddof=1)) if len(tg) > 1 else 0.0,
            load_ms=self.load_ms, peak_rss_mb=peak_rss_mb(), size_bytes=self.size_bytes)


def _stops(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)
