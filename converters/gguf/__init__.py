"""GGUF: a Hugging Face causal LM written for llama.cpp by edgekit itself, then quantized.

f32, f16, bf16 and q8_0 are written directly with the ``gguf`` package, the weights read from
the checkpoint's memory-mapped safetensors one tensor at a time (``tensors``); q4_0 and the
k-quants (q4_k_m, q5_k_m, q6_k) are llama.cpp's own quantizer run on an f16 (or f32) file, with an
importance matrix from ``--calib`` text when there is one. Model families are entries in
``families`` over the ``gguf`` package's name tables (``arch``); the pre-tokenizer is named by its
behaviour on llama.cpp's probe text (``pretok``).

Verification is the format's own (:meth:`GgufConverter.verify`): llama.cpp must tokenize text as
Hugging Face does; logits are compared with PyTorch at every real (unpadded) position of the
first reference rows (``parity_rows``, the examples first); and on real tokens (``--calib`` text, else the examples) perplexity, KL
divergence and top-1 agreement against PyTorch go into the manifest. f32/f16 must agree on
the top-1 token at >= 99% of positions. PyTorch's logits are computed once per conversion, one
window at a time, into a scratch file (``reference``), and the PyTorch model's mapped weights are
handed back whenever it is idle (before writing, quantizing and llama.cpp's verification).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.converters import CONVERTERS, BuildContext, Built, Converter
from edgekit.converters.gguf.pretok import PROBE_TEXT
from edgekit.errors import CalibrationError, ConfigError, ExportError, SourceError
from edgekit.types import Format, Precision

if TYPE_CHECKING:
    from edgekit.converters.gguf.arch import Arch
    from edgekit.converters.gguf.reference import SpilledLogits
    from edgekit.converters.gguf.tokenizer import GgufVocab
    from edgekit.manifest import OutputParity, Verification
    from edgekit.types import Signature
    from edgekit.verify import Reference

# precision -> gate on top-1 agreement with PyTorch; the other precisions report their figures
FLOAT_PRECISIONS = frozenset({Precision.FP32, Precision.FP16, Precision.BF16})
LM_TOLERANCES: dict[Precision, dict[str, float]] = {
    Precision.FP32: {"min_top1": 0.99},
    Precision.FP16: {"min_top1": 0.99},
}
# text llama.cpp must split exactly as the Hugging Face tokenizer does: digits, contractions,
# runs of spaces and newlines, punctuation, non-ASCII letters
TOKENIZER_PROBES: tuple[str, ...] = (
    "edgekit exports this sentence to every format.",
    "Hello world! It's 2024; we've got 1234567 tokens, don't we?",
    "  two  spaces,\ttab and\n\nnew lines  ",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 \u00fcber Stra\u00dfe, 3.14159 and x**2 + y_1 == {z}",
    PROBE_TEXT,  # llama.cpp's own: emoji, digit runs, CJK, Khmer, Cyrillic, quote runs
)


@dataclass(frozen=True)
class GgufOptions:
    """Options of the GGUF converter (``-O gguf.name=value``)."""

    pre_tokenizer: str | None = None  # llama.cpp's pre-tokenizer name when edgekit cannot tell it
    quantize_from: str = "f16"  # the file llama.cpp's quantizer reads: f16 (as llama.cpp does) or f32
    imatrix: str = "auto"  # importance matrix for q4_0/k-quants: auto (with --calib), on, off
    imatrix_samples: int = 128  # calibration samples the importance matrix is computed on
    eval_tokens: int = 1024  # tokens of the perplexity / KL check (from --calib text, else the examples)
    window: int = 256  # tokens per perplexity window
    parity_rows: int = 8  # reference rows (examples first) whose logits are compared position by position
    threads: int | None = None  # llama.cpp threads for quantizing and verifying (None: its default)
    # PyTorch layer names (model.layers.0.mlp.down_proj) or GGUF tensor names kept at exclude_type
    exclude_layers: tuple[str, ...] = ()
    exclude_type: str = "f16"  # f16, q8_0 or f32

    def __post_init__(self) -> None:
        if self.quantize_from not in ("f16", "f32"):
            raise ConfigError(f"quantize_from must be f16 or f32, got {self.quantize_from!r}",
                              fix="-O gguf.quantize_from=f16")
        if self.imatrix not in ("auto", "on", "off"):
            raise ConfigError(f"imatrix must be auto, on or off, got {self.imatrix!r}",
                              fix="-O gguf.imatrix=auto")
        if self.exclude_type not in ("f32", "f16", "q8_0"):
            raise ConfigError(f"exclude_type must be f32, f16 or q8_0, got {self.exclude_type!r}",
                              fix="-O gguf.exclude_type=f16")
        if self.window < 8 or self.eval_tokens < 2 or self.parity_rows < 1:
            raise ConfigError("window must be >= 8, eval_tokens >= 2 and parity_rows >= 1",
                              fix="e.g. -O gguf.window=256 -O gguf.eval_tokens=1024 -O gguf.parity_rows=8")


@dataclass
class GgufBase:
    """What every precision is built from: the model, its tables and the evaluation tokens."""

    model: Any
    arch: Arch
    vocab: GgufVocab
    folder: Path
    name: str
    eval_tokens: np.ndarray
    eval_origin: str
    reference: Any  # token ids -> PyTorch logits
    tokenizer: Any  # the Hugging Face tokenizer llama.cpp must match
    intermediates: dict[str, tuple[Path, dict[str, Any]]] = field(default_factory=dict)  # f16/f32 files
    imatrix: tuple[Path, dict[str, Any]] | None = None
    tokenizer_checked: bool = False
    keep: dict[str, list[str]] = field(default_factory=dict)  # exclude_layers -> GGUF tensor names
    spilled: SpilledLogits | None = None  # PyTorch's verification logits, on disk (``reference``)


@CONVERTERS.register(Format.GGUF)
class GgufConverter(Converter):
    format = Format.GGUF
    precisions = (Precision.FP32, Precision.FP16, Precision.BF16, Precision.Q8_0, Precision.Q4_0,
                  Precision.Q4_K_M, Precision.Q5_K_M, Precision.Q6_K)
    suffix = ".gguf"
    extra = "convert"
    requires = ("torch", "transformers", "gguf")
    distributions = ("torch", "transformers", "gguf", "llama_cpp_python")
    Options = GgufOptions
    reference_outputs = False  # verify() spills the parity rows' logits it reads (reference.py)

    def default_precisions(self, has_calibration: bool, task: str | None) -> list[Precision]:
        """llama.cpp's usual trio: f16 (the reference), q8_0 and q4_k_m."""
        return [Precision.FP16, Precision.Q8_0, Precision.Q4_K_M]
    def check(self, precisions: list[Precision]) -> None:
        super().check(precisions)
        from edgekit.deps import require

        require("llama_cpp", "llamacpp", "quantizing and verifying GGUF")

    # -- export ------------------------------------------------------------------------------
    def native_exclusions(self, base: GgufBase) -> dict[str, Any]:
        return {"exclude_layers": [t for found in base.keep.values() for t in found]}

    def export(self, ctx: BuildContext) -> GgufBase:
        from edgekit.converters.gguf.arch import arch_for
        from edgekit.converters.gguf.tokenizer import backend_json, hf_tokenizer, read_vocab
        from edgekit.perplexity import real_tokens, torch_logits

        src, opts = ctx.source, ctx.options
        if src.task != "text-generation":
            raise SourceError(f"GGUF holds causal language models; {src.name} is a "
                              f"{src.task or 'plain PyTorch'} model",
                              fix="convert a Hugging Face *ForCausalLM directory to GGUF, or this model "
                              "to onnx/openvino/tflite")
        model = getattr(src.module, "inner", None)
        folder = Path(src.location) if src.location else None
        if model is None or folder is None or not (folder / "config.json").is_file():
            raise SourceError(f"GGUF conversion of {src.name} needs its Hugging Face directory "
                              "(config.json, weights, tokenizer.json)",
                              fix="pass the directory written by model.save_pretrained() and "
                              "tokenizer.save_pretrained()")
        arch = arch_for(type(model).__name__)
        rows = int(model.get_input_embeddings().weight.shape[0])
        keep = {}
        if opts.exclude_layers:
            from edgekit.converters.gguf.exclusions import tensor_names

            keep = tensor_names(src, model, arch, opts.exclude_layers)
        tokenizer = hf_tokenizer(folder)
        vocab = read_vocab(folder, rows, model.config, opts.pre_tokenizer, backend_json(tokenizer), hf=tokenizer)
        if ctx.calibration is not None:
            tokens, origin = real_tokens(ctx.calibration.batches(64)), ctx.calibration.origin
        else:
            tokens, origin = real_tokens([src.example_inputs]), "example inputs"
        tokens = tokens[: opts.eval_tokens]
        self._base = GgufBase(model, arch, vocab, folder, src.name, tokens, origin, torch_logits(model),
                              tokenizer, keep=keep)
        return self._base

    # -- precisions ----------------------------------------------------------------------------
    def build(self, base: GgufBase, precision: Precision, stem: str, ctx: BuildContext) -> Built:
        if precision not in self.precisions:
            raise ConfigError(f"gguf does not support precision {precision.value}",
                              fix=f"pass --precision with some of: {', '.join(p.value for p in self.precisions)}")
        out = ctx.workdir / f"{stem}{self.suffix}"
        _hand_back(base)  # the writer reads the files, not the model: its pages need not be resident
        with _RssPeak() as rss:
            route, details = self._build(base, precision, out, ctx)
        from edgekit.runtimes.llamacpp.gguf_file import read_header

        header = read_header(out)
        if base.keep:
            from edgekit.converters.gguf.exclusions import check

            result = check({t.name: t.type_name for t in header.tensors}, base.keep, ctx.options.exclude_type,
                           float_file=precision in FLOAT_PRECISIONS)
            details["exclusions"] = result.to_dict()
            result.raise_if_missing(self.format.value, precision.value)
        details.update(tensor_types=header.tensor_types(), architecture=base.arch.arch_name, family=base.arch.name,
                       tokenizer=base.vocab.describe(), write_seconds=round(rss.seconds, 3),
                       rss_mb_at_start=round(rss.start, 1), peak_rss_mb=round(rss.peak, 1))
        return Built(out, [], route, details, runtime_hints={"runtime": "llamacpp"})

    def _build(self, base: GgufBase, precision: Precision, out: Path, ctx: BuildContext
               ) -> tuple[str, dict[str, Any]]:
        from edgekit.converters.gguf.write import DIRECT

        opts: GgufOptions = ctx.options
        # a q8_0 file with tensors kept at another type is llama.cpp's quantizer's job (type overrides)
        if precision in DIRECT and not (base.keep and precision not in FLOAT_PRECISIONS):
            details = self._write(base, precision, out, ctx)
            route = f"edgekit GGUF writer (gguf {_version('gguf')}), {DIRECT[precision][0]} weights"
        else:
            from edgekit.converters.gguf.quantize import quantize

            kind = opts.quantize_from
            src = self._intermediate(base, Precision.FP16 if kind == "f16" else Precision.FP32, ctx)
            imatrix = self._imatrix(base, ctx)
            _hand_back(base)  # PyTorch ran for the importance matrix; llama.cpp's quantizer maps the file
            t0 = time.perf_counter()
            keep = None
            if base.keep:
                from edgekit.converters.gguf.exclusions import overrides

                keep = overrides(base.keep, opts.exclude_type)
            quantize(src, out, precision, threads=opts.threads, imatrix=imatrix[0] if imatrix else None,
                     overrides=keep)
            details = {"quantized_from": kind, "imatrix": imatrix[1] if imatrix else None,
                       "quantize_seconds": round(time.perf_counter() - t0, 3)}
            route = (f"edgekit GGUF writer ({kind}) + llama.cpp llama_model_quantize "
                     f"(llama-cpp-python {_version('llama_cpp_python')})"
                     + (", importance matrix from calibration text" if imatrix else ""))
        return route, details

    def _write(self, base: GgufBase, precision: Precision, out: Path, ctx: BuildContext) -> dict[str, Any]:
        """Write a directly-written precision, copying an intermediate already on disk."""
        from edgekit.converters.gguf.write import write_gguf

        kind = {Precision.FP16: "f16", Precision.FP32: "f32"}.get(precision)
        if kind is not None and kind in base.intermediates:
            path, details = base.intermediates[kind]
            shutil.copyfile(path, out)
            return dict(details)
        return write_gguf(out, base.model, base.arch, base.vocab, precision, base.name,
                          progress=lambda i, n: ctx.report(f"write {out.name}", i, n), folder=base.folder)

    def _intermediate(self, base: GgufBase, precision: Precision, ctx: BuildContext) -> Path:
        kind = "f16" if precision is Precision.FP16 else "f32"
        if kind not in base.intermediates:
            path = ctx.workdir / f"intermediate-{kind}.gguf"
            base.intermediates[kind] = (path, self._write(base, precision, path, ctx))
        return base.intermediates[kind][0]

    def _imatrix(self, base: GgufBase, ctx: BuildContext) -> tuple[Path, dict[str, Any]] | None:
        opts: GgufOptions = ctx.options
        if opts.imatrix == "off" or (opts.imatrix == "auto" and ctx.calibration is None):
            return None
        if ctx.calibration is None:
            raise CalibrationError("-O gguf.imatrix=on needs calibration text",
                                   fix="pass --calib text.txt (one sample per line), or -O gguf.imatrix=off")
        if base.imatrix is None:
            from edgekit.converters.gguf.imatrix import compute_imatrix
            from edgekit.converters.gguf.write import iter_names, plan_tensors

            plan = plan_tensors(base.model, base.arch, Precision.FP16)
            names = {hf: gg for hf, gg in iter_names(plan) if gg != "token_embd.weight"}
            path = ctx.workdir / "imatrix.npz"
            ctx.report("importance matrix", 0, 1)
            t0 = time.perf_counter()
            info = compute_imatrix(base.model, names, ctx.calibration.take(opts.imatrix_samples).batches(8), path)
            ctx.report("importance matrix", 1, 1)
            base.imatrix = (path, {**info, "data": ctx.calibration.origin,
                                   "seconds": round(time.perf_counter() - t0, 3)})
        return base.imatrix

    # -- verification ----------------------------------------------------------------------------
    def verify(self, built: Built, precision: Precision, ctx: BuildContext,
               reference: Reference) -> tuple[Verification, Signature]:
        from edgekit.converters.gguf.reference import window_reader
        from edgekit.manifest import Verification
        from edgekit.perplexity import score
        from edgekit.runtime import load

        base: GgufBase = self._base
        opts: GgufOptions = ctx.options
        store = self._reference_logits(base, ctx, reference)
        longest = max([opts.window] + [int(np.asarray(f["input_ids"]).shape[-1]) for f in reference.feeds])
        # f32 is judged with an f32 K/V cache, so the figures measure the file, not the cache
        kv_cache = "f32" if precision is Precision.FP32 else "f16"
        with load(built.model, device="cpu", threads=opts.threads, n_ctx=longest, kv_cache=kv_cache) as m:
            if not base.tokenizer_checked:
                _check_tokenizer(m, base.tokenizer)
                base.tokenizer_checked = True
            parity, rows = _masked_parity(m, reference, opts.parity_rows, store)
            lm = score(m.logits, base.eval_tokens, opts.window, reference=window_reader(store))
            signature = m.signature
        _hand_back(base)  # what llama.cpp freed
        tol = LM_TOLERANCES.get(precision)
        top1 = min(lm.top1 or 0.0, parity.top1_agreement or 0.0)
        # NaN/infinite logits where PyTorch's are finite fail every precision
        passed = not parity.non_finite and (tol is None or top1 >= tol["min_top1"])
        verification = Verification(
            samples=rows, outputs=(parity,),
            passed=passed, gated=tol is not None or not passed, tolerance=dict(tol or {}),
            failed_output=None if passed else "logits", device="cpu",
            metric={**lm.to_metric(base.eval_origin), "kv_cache": kv_cache})
        return verification, signature

    def _reference_logits(self, base: GgufBase, ctx: BuildContext, reference: Reference) -> SpilledLogits:
        """PyTorch's logits for this verification, on disk (computed by the first precision), with the
        PyTorch model's mapped weights then handed back: llama.cpp maps the GGUF file without them."""
        from edgekit.converters.gguf.reference import SpilledLogits, spill_reference
        from edgekit.perplexity import windows

        opts: GgufOptions = ctx.options
        if base.spilled is None:
            base.spilled = SpilledLogits(ctx.workdir / "reference-logits.f32")
        spill_reference(base.spilled, reference, opts.parity_rows, windows(base.eval_tokens, opts.window),
                        base.reference)
        _hand_back(base)
        return base.spilled


def _hand_back(base: GgufBase) -> None:
    """Drop what is resident and idle between phases: garbage, the C heap's free pages (what
    llama.cpp or the last forward pass freed), and the PyTorch model's memory-mapped weights'
    pages (they fault back in when it runs again)."""
    import gc

    from edgekit.converters.gguf.tensors import safetensors_files
    from edgekit.sources.pages import drop_mapped_pages, release_free_heap

    gc.collect()
    release_free_heap()
    drop_mapped_pages(safetensors_files(base.folder))


def _masked_parity(m: Any, reference: Reference, max_rows: int, store: SpilledLogits
                   ) -> tuple[OutputParity, int]:
    """Logits against PyTorch's (spilled in ``store``) at every position where the attention mask
    is 1, on the first ``max_rows`` rows of the reference feeds (the calibration text is also scored,
    as a whole, by the perplexity check)."""
    from edgekit.converters.gguf.reference import parity_rows
    from edgekit.perplexity import top1_agrees
    from edgekit.verify import ParityStats

    stats, rows = ParityStats("logits"), 0
    for i, row, real in parity_rows(reference, max_rows):
        rows += 1
        got = m.logits(np.asarray(reference.feeds[i]["input_ids"])[row, real]).astype(np.float64)
        exp = np.asarray(store.get(("row", i, row)), dtype=np.float64)
        stats.add(exp, got, top1_agrees(exp, got) & np.isfinite(got).all(-1))
    return stats.result(top1=True), rows


def _check_tokenizer(m: Any, tok: Any) -> None:
    """llama.cpp must split text exactly as the Hugging Face tokenizer does."""
    if tok is None:
        return
    for text in TOKENIZER_PROBES:
        want = list(tok(text)["input_ids"])
        got = m.tokenize(text)
        if got != want:
            at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise ExportError(
                f"llama.cpp tokenizes {text!r} differently from the Hugging Face tokenizer (first difference "
                f"at token {at}: llama.cpp {got[at:at + 3]}, Hugging Face {want[at:at + 3]})",
                fix="the pre-tokenizer name is wrong for this tokenizer: pass the right one with "
                "-O gguf.pre_tokenizer=NAME (gpt-2, llama-bpe, qwen2, smollm, ...)")


def _version(dist: str) -> str:
    from edgekit.deps import version

    return version(dist) or "?"


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class _RssPeak:
    """Resident memory of this process sampled every 20 ms while a block runs: the peak of one
    build (the process-wide high-water mark would also hold earlier work, e.g. verification)."""

    def __enter__(self) -> _RssPeak:
        import threading

        self.start = self.peak = _rss_mb()
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())
        self.seconds = time.perf_counter() - self._t0
