"""GGUF: a tiny random Llama (grouped-query attention) with a BPE tokenizer trained here, written
by edgekit, run by llama.cpp and compared with PyTorch.

The assertions are ones a wrong writer fails: f32 logits within 1e-2 of PyTorch at every position
(a missing or wrong rotary permutation loads fine and is far off, which a test shows), llama.cpp
tokenizing exactly as Hugging Face does, metadata read back by gguf's own reader, k-quant files
holding k-quant tensors, and every bad file turned into an edgekit error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf", reason="the gguf package is not installed: pip install 'edgekit[convert]'")
pytest.importorskip("tokenizers")

import edgekit  # noqa: E402
from edgekit.errors import ArtifactError, ConfigError, DeviceUnavailableError, InputError, SourceError  # noqa: E402
from tests.conftest import CHAT_TEMPLATE, english_corpus, save_random_lm  # noqa: E402

HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, CTX = 256, 2, 4, 2, 512, 512  # 256: rows fit k-quant blocks
ALL = ["fp32", "fp16", "bf16", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"]
TEXTS = ["The quick brown fox jumps over the lazy dog near the river bank.",
         "In 2024, 1234567 people didn't expect prices of $3.14 to rise again!",
         "  spaces,\ttabs and\n\nnew lines   ", "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe"]


def _llama_cpp() -> Any:
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: "
                               "pip install 'edgekit[llamacpp]'")


@pytest.fixture(scope="module")
def llama_dir(tok_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=CTX,
                      rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                      tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    return save_random_lm(LlamaForCausalLM(cfg), tmp_path_factory.mktemp("tiny_llama"), tok_dir)


@pytest.fixture(scope="module")
def hf_model(llama_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(llama_dir).eval()


@pytest.fixture(scope="module")
def hf_tok(llama_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(llama_dir)


@pytest.fixture(scope="module")
def calib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text("\n".join(english_corpus()[:24]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def arts(llama_dir: Path, calib: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every precision in one conversion, with calibration text (so k-quants get an importance matrix)."""
    _llama_cpp()
    out = tmp_path_factory.mktemp("gguf_out")
    converted = edgekit.convert(str(llama_dir), targets=["gguf"], precisions=ALL, calib=calib, out=out,
                                name="tiny", seq_len=64, options={"gguf": {"eval_tokens": 256, "window": 128}})
    return {a.precision.value: a for a in converted}


def _torch_logits(model: Any, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].numpy()


def _ids(hf_tok: Any) -> list[int]:
    return list(hf_tok(" ".join(english_corpus()[100:103]))["input_ids"][:96])


# -- pure writer / reader tests (no llama.cpp needed) ---------------------------------------------
def test_rotary_permutation_interleaves_the_two_halves_of_each_head() -> None:
    from edgekit.converters.gguf.write import permute_rope

    rows = np.arange(8, dtype=np.float32)[:, None]  # 2 heads of 4 rows: [a0 a1 b0 b1] per head
    out = permute_rope(rows, n_head=2)[:, 0].astype(int).tolist()
    assert out == [0, 2, 1, 3, 4, 6, 5, 7]  # HF's rotate-half pairs (0,2),(1,3) become adjacent


def test_ggml_type_table_matches_the_gguf_package() -> None:
    from edgekit.runtimes.llamacpp.gguf_file import GGML_TYPES

    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        if int(qtype) in GGML_TYPES:
            assert GGML_TYPES[int(qtype)][1:] == (block, size), qtype.name
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K"} <= {v[0] for v in GGML_TYPES.values()}


def test_metadata_round_trips_through_gguf_reader(llama_dir: Path, hf_tok: Any, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from edgekit.converters.gguf.arch import arch_for
    from edgekit.converters.gguf.tokenizer import read_vocab
    from edgekit.converters.gguf.write import write_gguf
    from edgekit.types import Precision

    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    vocab = read_vocab(llama_dir, VOCAB, model.config)
    path = tmp_path / "m.gguf"
    write_gguf(path, model, arch_for("LlamaForCausalLM"), vocab, Precision.FP16, "tiny")
    r = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items()}
    assert f["general.architecture"] == "llama" and f["general.file_type"] == 1
    assert (f["llama.context_length"], f["llama.embedding_length"], f["llama.block_count"]) == (CTX, HIDDEN, LAYERS)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (HEADS, KV_HEADS)
    assert f["llama.feed_forward_length"] == 2 * HIDDEN and f["llama.rope.dimension_count"] == HIDDEN // HEADS
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert f["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert (f["tokenizer.ggml.model"], f["tokenizer.ggml.pre"]) == ("gpt2", "gpt-2")
    inv = {i: t for t, i in hf_tok.get_vocab().items()}
    assert f["tokenizer.ggml.tokens"] == [inv[i] for i in range(VOCAB)]
    merges = json.loads((llama_dir / "tokenizer.json").read_text())["model"]["merges"]
    assert f["tokenizer.ggml.merges"] == [" ".join(m) if isinstance(m, list) else m for m in merges]
    assert f["tokenizer.ggml.token_type"][:3] == [3, 3, 3] and set(f["tokenizer.ggml.token_type"][3:]) == {1}
    assert (f["tokenizer.ggml.bos_token_id"], f["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.chat_template"] == CHAT_TEMPLATE
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == 3 + 9 * LAYERS  # embedding, output norm, untied output; 9 per block
    k = tensors["blk.0.attn_k.weight"]
    assert list(k.shape) == [HIDDEN, KV_HEADS * HIDDEN // HEADS] and k.tensor_type.name == "F16"
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    # the stored K rows are HF's rows permuted for llama.cpp's rotary layout
    hf_k = model.model.layers[0].self_attn.k_proj.weight.detach().numpy()
    from edgekit.converters.gguf.write import permute_rope

    np.testing.assert_array_equal(np.asarray(k.data), permute_rope(hf_k, KV_HEADS).astype(np.float16))


def test_unsupported_architecture_names_the_supported_ones() -> None:
    from edgekit.converters.gguf.arch import arch_for

    with pytest.raises(SourceError) as e:
        arch_for("GPTNeoXForCausalLM")
    assert "GPTNeoXForCausalLM" in str(e.value) and "LlamaForCausalLM" in str(e.value) and "Qwen2ForCausalLM" in str(e.value)


def test_perplexity_kl_and_top1_on_known_distributions() -> None:
    from edgekit.perplexity import score, windows

    vocab, tokens = 50, np.arange(40) % 7
    uniform = lambda ids: np.zeros((len(ids), vocab))  # noqa: E731
    s = score(uniform, tokens, window=16, reference=uniform)
    assert s.perplexity == pytest.approx(vocab) and s.delta == pytest.approx(0.0)
    assert s.kl_mean == pytest.approx(0.0, abs=1e-12) and s.top1 == 1.0
    assert s.tokens == sum(len(w) - 1 for w in windows(tokens, 16)) == 37  # windows of 16, 16, 8

    def peaked(ids: np.ndarray) -> np.ndarray:  # puts probability 0.9 on the true next token
        logits = np.full((len(ids), vocab), 0.0)
        nxt = np.append(ids[1:], 0)
        logits[np.arange(len(ids)), nxt] = np.log(0.9 * (vocab - 1) / 0.1)
        return logits

    s = score(peaked, tokens, window=16, reference=uniform)
    assert s.perplexity == pytest.approx(1 / 0.9) and s.reference_perplexity == pytest.approx(vocab)
    # KL(uniform || peaked) = -log V - (log 0.9 + (V - 1) log(0.1 / (V - 1))) / V
    kl = -np.log(vocab) - (np.log(0.9) + (vocab - 1) * np.log(0.1 / (vocab - 1))) / vocab
    assert s.kl_mean == pytest.approx(kl) and s.kl_max == pytest.approx(kl)
    assert s.top1 == 1.0  # a uniform reference has no preference: every pick ties with its max

    def biased(ids: np.ndarray) -> np.ndarray:  # prefers token 0 by a clear margin (1.0 >> the tie margin)
        logits = np.zeros((len(ids), vocab))
        logits[:, 0] = 1.0
        return logits

    s = score(peaked, tokens, window=16, reference=biased)
    assert s.top1 == pytest.approx(np.mean([t == 0 for w in windows(tokens, 16) for t in w[1:]]))


def test_top1_counts_only_real_disagreements() -> None:
    from edgekit.perplexity import TIE_MARGIN, top1_agrees

    ref = np.array([[2.0, 2.0 - TIE_MARGIN / 2, 0.0], [2.0, 1.0, 0.0]])
    got = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])  # picks token 1 on both rows
    assert top1_agrees(ref, got).tolist() == [True, False]  # a near-tie flip, then a real miss


def test_quantizer_failures_are_quantization_errors(tmp_path: Path) -> None:
    _llama_cpp()
    from edgekit.converters.gguf.quantize import quantize
    from edgekit.errors import QuantizationError
    from edgekit.types import Precision

    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 100)
    with pytest.raises(QuantizationError, match="failed to load model"):
        quantize(bad, tmp_path / "out.gguf", Precision.Q4_K_M)


def test_runtime_and_converter_modules_import_nothing_heavy(tmp_path: Path) -> None:
    code = ("import sys, edgekit.runtimes.llamacpp, edgekit.converters.gguf, edgekit.perplexity; "
            "print(','.join(m for m in ('llama_cpp', 'gguf', 'torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


# -- conversion and llama.cpp ------------------------------------------------------------------------
def test_fp32_logits_match_pytorch(arts: dict[str, Any], hf_model: Any, hf_tok: Any) -> None:
    ids = _ids(hf_tok)
    expected = _torch_logits(hf_model, ids)
    with edgekit.load(arts["fp32"].path, kv_cache="f32") as m:
        got = m.run({"input_ids": np.array([ids])})["logits"][0]
    assert np.abs(got - expected).max() < 1e-2
    assert (got.argmax(-1) == expected.argmax(-1)).all()
    assert np.abs(expected).max() > 1.0  # the logits are not trivially small
    v = arts["fp32"].verification
    assert v.passed and v.gated and v.metric["top1"] == 1.0 and v.metric["name"] == "perplexity"
    assert abs(v.metric["delta"]) < 1e-3 * v.metric["reference"] and v.metric["data"] == "calib.txt"


def test_without_the_rotary_permutation_the_file_loads_but_is_wrong(
        llama_dir: Path, hf_model: Any, hf_tok: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _llama_cpp()
    from edgekit.converters.gguf import write as gguf_write
    from edgekit.converters.gguf.arch import arch_for
    from edgekit.converters.gguf.tokenizer import read_vocab
    from edgekit.types import Precision

    monkeypatch.setattr(gguf_write, "permute_rope", lambda w, n_head: w)
    path = tmp_path / "unpermuted.gguf"
    gguf_write.write_gguf(path, hf_model, arch_for("LlamaForCausalLM"), read_vocab(llama_dir, VOCAB, hf_model.config),
                           Precision.FP32, "bad")
    ids = _ids(hf_tok)
    expected = _torch_logits(hf_model, ids)
    with edgekit.load(path, kv_cache="f32") as m:
        got = m.logits(ids)
    assert np.abs(got - expected).max() > 0.5  # what test_fp32_logits_match_pytorch would catch
    assert np.abs(got[0] - expected[0]).max() < 1e-3  # position 0 has no rotation: the rest is right


def test_fp16_and_q8_0_stay_close(arts: dict[str, Any], hf_model: Any, hf_tok: Any) -> None:
    ids = _ids(hf_tok)
    expected = _torch_logits(hf_model, ids)
    for precision, min_cos in (("fp16", 0.9999), ("q8_0", 0.999)):
        with edgekit.load(arts[precision].path) as m:
            got = m.logits(ids)
        cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cos.mean() > min_cos, precision
    v = arts["fp16"].verification
    assert v.gated and v.passed and v.metric["top1"] >= 0.99 and v.outputs[0].top1_agreement >= 0.99
    assert not arts["q8_0"].verification.gated  # quantized: figures reported, not gated


def test_every_precision_loads_generates_and_holds_its_tensor_types(arts: dict[str, Any]) -> None:
    from edgekit.runtimes.llamacpp.gguf_file import read_header

    expected = {"fp32": "F32", "fp16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k_m": "Q4_K",
                "q5_k_m": "Q5_K", "q6_k": "Q6_K"}
    sizes = {}
    for precision, art in arts.items():
        assert art.status == "ok", (precision, art.reason)
        types = read_header(art.path).tensor_types()
        assert expected[precision] in types, (precision, types)
        sizes[precision] = art.size_bytes
        with edgekit.load(art.path, threads=2) as m:
            text = m.generate("The council", max_tokens=6, temperature=0)
            pieces = list(m.generate("The council", max_tokens=6, temperature=0, stream=True))
        assert isinstance(text, str) and text and "".join(pieces) == text
        assert art.verification.metric["value"] > 1.0
    assert sizes["fp32"] > sizes["fp16"] > sizes["q8_0"] > sizes["q6_k"] > sizes["q5_k_m"] > sizes["q4_k_m"]
    assert sizes["fp16"] == sizes["bf16"]
    k = json.loads(Path(str(arts["q4_k_m"].path) + ".edgekit.json").read_text())["conversion"]
    assert k["imatrix"]["tensors"] == 7 * LAYERS + 1 and "importance matrix" in k["route"]
    assert k["peak_rss_mb"] >= k["rss_mb_at_start"] > 0


def test_llama_cpp_tokenizes_like_hugging_face(arts: dict[str, Any], hf_tok: Any) -> None:
    with edgekit.load(arts["q8_0"].path) as m:
        for text in TEXTS:
            assert m.tokenize(text) == hf_tok(text)["input_ids"], text
        ids = hf_tok(TEXTS[0])["input_ids"]
        assert m.detokenize(ids[1:]) == TEXTS[0]


def test_chat_uses_the_files_template(arts: dict[str, Any], hf_tok: Any) -> None:
    messages = [{"role": "user", "content": "How deep is the river?"}]
    with edgekit.load(arts["fp16"].path) as m:
        assert m.chat_template == CHAT_TEMPLATE
        reply = m.chat(messages, max_tokens=5, temperature=0)
        streamed = "".join(m.chat(messages, max_tokens=5, temperature=0, stream=True))
    assert isinstance(reply, str) and reply == streamed


def test_batches_and_padding(arts: dict[str, Any], hf_tok: Any) -> None:
    ids = _ids(hf_tok)[:20]
    with edgekit.load(arts["fp16"].path) as m:
        single = m.logits(ids)
        batch = np.full((2, 24), 2, dtype=np.int64)
        mask = np.zeros((2, 24), dtype=np.int64)
        batch[0, :20], mask[0, :20] = ids, 1  # right padding
        batch[1, 4:], mask[1, 4:] = ids, 1  # left padding
        out = m.run({"input_ids": batch, "attention_mask": mask})["logits"]
        np.testing.assert_allclose(out[0, :20], single, atol=1e-4)
        np.testing.assert_allclose(out[1, 4:], single, atol=1e-4)
        assert not out[0, 20:].any() and not out[1, :4].any()
        assert m.run({"input_ids": np.array([ids])})["logits"].shape == (1, 20, VOCAB)  # mask optional
        with pytest.raises(InputError, match="gaps"):
            m.run({"input_ids": batch[:1], "attention_mask": np.array([[1, 0] * 12])})
        with pytest.raises(InputError, match="token ids"):
            m.run({"input_ids": np.array([[VOCAB + 5]])})


def test_benchmarks_in_tokens_and_latency(arts: dict[str, Any]) -> None:
    with edgekit.load(arts["q4_k_m"].path, threads=2) as m:
        r = m.bench_tokens(n_prompt=64, n_gen=8, repeats=2, warmup=1)
        lat = m.benchmark(warmup=1, runs=3)
    assert r.pp_tokens_per_s > 0 and r.tg_tokens_per_s > 0 and r.n_prompt == 64 and r.repeats == 2
    assert r.precision == "q4_k_m" and r.load_ms > 0 and r.peak_rss_mb > 0
    assert lat.status == "ok" and lat.latency.runs == 3 and lat.inputs["input_ids"][0] == 1


def test_cli_converts_and_runs(llama_dir: Path, tmp_path: Path) -> None:
    _llama_cpp()
    from click.testing import CliRunner

    from edgekit.cli import main as cli

    res = CliRunner().invoke(cli, ["convert", str(llama_dir), "--to", "gguf", "--precision", "f16",
                                   "--out", str(tmp_path), "--name", "m", "--json"])
    assert res.exit_code == 0, res.output
    art = json.loads(res.stdout)["artifacts"][0]
    assert art["status"] == "ok" and art["path"].endswith("m-fp16.gguf")
    assert art["verification"]["metric"]["top1"] >= 0.99
    res = CliRunner().invoke(cli, ["run", art["path"], "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["outputs"]["logits"]["shape"][-1] == VOCAB


@pytest.mark.parametrize("family", ["qwen2", "gpt2", "llama3-rope-tied"])
def test_other_architectures_match_pytorch(family: str, tok_dir: Path, tmp_path: Path) -> None:
    _llama_cpp()
    import transformers as tf

    small = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if family == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2,
                                                   max_position_embeddings=CTX, tie_word_embeddings=True, **small))
    elif family == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=CTX, **small))
    else:
        rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        model = tf.LlamaForCausalLM(tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                   num_attention_heads=4, num_key_value_heads=2, attention_bias=True,
                                                   max_position_embeddings=CTX, tie_word_embeddings=True,
                                                   rope_parameters=rope, **small))
    folder = save_random_lm(model, tmp_path / family, tok_dir)
    (art,) = edgekit.convert(str(folder), targets=["gguf"], precisions=["fp32"], out=tmp_path / "out")
    hf = tf.AutoModelForCausalLM.from_pretrained(folder).eval()
    from transformers import AutoTokenizer

    ids = list(AutoTokenizer.from_pretrained(folder)(" ".join(english_corpus()[:3]))["input_ids"][:200])
    expected = _torch_logits(hf, ids)
    with edgekit.load(art.path, kv_cache="f32") as m:
        got = m.logits(ids)
    assert np.abs(got - expected).max() < 1e-2, family
    assert art.verification.passed


def test_sentencepiece_style_tokenizer_with_byte_fallback(tmp_path: Path) -> None:
    """Llama 2 / TinyLlama / Mistral style: "▁" for spaces, <0xXX> pieces for unseen bytes."""
    _llama_cpp()
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(english_corpus(), trainers.BpeTrainer(vocab_size=VOCAB + 256, special_tokens=specials,
                                                           show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")
    fast.save_pretrained(tmp_path / "tok")
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CTX,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2)
    folder = save_random_lm(LlamaForCausalLM(cfg), tmp_path / "spm", tmp_path / "tok")
    (art,) = edgekit.convert(str(folder), targets=["gguf"], precisions=["fp32"], out=tmp_path / "out")
    assert art.verification.passed and art.verification.outputs[0].max_abs_err < 1e-2
    r = gguf.GGUFReader(art.path)
    assert r.fields["tokenizer.ggml.model"].contents() == "llama" and "tokenizer.ggml.scores" in r.fields
    assert r.fields["tokenizer.ggml.token_type"].contents()[3 + 0xC3] == 6  # <0xC3> is a BYTE token
    with edgekit.load(art.path) as m:
        for text in TEXTS:
            ids = fast(text)["input_ids"]
            assert m.tokenize(text) == ids, text
        assert m.detokenize(fast("w\u00f6rld caf\u00e9")["input_ids"][1:]) == "w\u00f6rld caf\u00e9"


# -- bad input ----------------------------------------------------------------------------------------
def _rewrite(src: Path, dst: Path, drop: tuple[str, ...] = (), replace: dict[str, Any] | None = None) -> Path:
    """A copy of a GGUF file without some keys, or with some string values replaced."""
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for key, field in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop:
            continue
        value = (replace or {}).get(key, field.contents())
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, vtype, sub_type=sub)
    for t in r.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)  # bytes for quantized types
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def test_a_truncated_file_is_an_artifact_error(arts: dict[str, Any], tmp_path: Path) -> None:
    data = arts["q8_0"].path.read_bytes()
    for cut in (len(data) // 2, 3000, 10):
        bad = tmp_path / f"cut{cut}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ArtifactError, match="truncated|not a GGUF"):
            edgekit.load(bad)


def test_missing_keys_and_an_unusable_tokenizer_are_artifact_errors(arts: dict[str, Any], tmp_path: Path) -> None:
    _llama_cpp()
    src = arts["q8_0"].path
    no_eps = _rewrite(src, tmp_path / "no_eps.gguf", drop=("llama.attention.layer_norm_rms_epsilon",))
    with pytest.raises(ArtifactError, match="layer_norm_rms_epsilon") as e:
        edgekit.load(no_eps)
    assert "re-convert" in str(e.value)
    bad_pre = _rewrite(src, tmp_path / "bad_pre.gguf", replace={"tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(ArtifactError, match="no-such-pre"):
        edgekit.load(bad_pre)
    bad_model = _rewrite(src, tmp_path / "bad_tok.gguf", replace={"tokenizer.ggml.model": "wordpiece-x"})
    with pytest.raises(ArtifactError, match="wordpiece-x"):
        edgekit.load(bad_model)
    wrong_ff = _rewrite(src, tmp_path / "wrong_ff.gguf", replace={"llama.feed_forward_length": 7})
    with pytest.raises(ArtifactError, match="ffn_gate.weight.*wrong shape"):
        edgekit.load(wrong_ff)


def test_a_file_that_aborts_llama_cpp_fails_in_the_probe_not_here(arts: dict[str, Any], tmp_path: Path) -> None:
    _llama_cpp()
    # llama.cpp loads this file, then GGML_ASSERT(eps >= 0.0f) aborts the process on the first decode
    bad = _rewrite(arts["q8_0"].path, tmp_path / "neg_eps.gguf", replace={"llama.attention.layer_norm_rms_epsilon": -1.0})
    with pytest.raises(ArtifactError, match=r"crashes \(SIGABRT\).*GGML_ASSERT"):
        edgekit.load(bad)


def test_not_a_causal_lm_is_a_source_error(tmp_path: Path) -> None:
    _llama_cpp()
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(SourceError, match="causal language models"):
        edgekit.convert(net, (torch.randn(2, 4),), targets=["gguf"], precisions=["f16"], out=tmp_path)


def test_a_tokenizer_gguf_cannot_hold_is_an_export_error(llama_dir: Path, tmp_path: Path) -> None:
    _llama_cpp()
    import shutil

    from edgekit.errors import ExportError

    folder = tmp_path / "wordpiece"
    shutil.copytree(llama_dir, folder)
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    wp = Tokenizer(models.WordPiece(words, unk_token="<unk>"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    wp.save(str(folder / "tokenizer.json"))
    with pytest.raises(ExportError, match="WordPiece"):
        edgekit.convert(str(folder), targets=["gguf"], precisions=["f16"], out=tmp_path / "out")


def test_options_and_devices(arts: dict[str, Any]) -> None:
    llama_cpp = _llama_cpp()
    with pytest.raises(ConfigError, match="n_ctxx"):
        edgekit.load(arts["q8_0"].path, n_ctxx=5)
    if not llama_cpp.llama_supports_gpu_offload():
        with pytest.raises(DeviceUnavailableError, match="GPU backend"):
            edgekit.load(arts["q8_0"].path, device="gpu")
    with pytest.raises(DeviceUnavailableError):
        edgekit.load(arts["q8_0"].path, device="npu")
    with edgekit.load(arts["q8_0"].path, n_ctx=32, n_batch=16) as m:
        assert m.n_ctx >= 32 and m.n_batch == 16
        np.testing.assert_allclose(m.logits(list(range(40))[: m.n_ctx]) [:1], m.logits([0]), atol=1e-4)
        with pytest.raises(InputError, match="context"):
            m.logits([1] * (m.n_ctx + 1))


def test_importance_matrix_is_the_mean_square_of_each_weights_input(llama_dir: Path, hf_model: Any) -> None:
    from edgekit.converters.gguf.imatrix import compute_imatrix

    ids = np.random.default_rng(0).integers(3, VOCAB, size=(2, 24))
    mask = np.ones_like(ids)
    mask[1, 20:] = 0  # padded positions do not count
    seen: dict[str, list[np.ndarray]] = {"ln1": [], "ln2": []}
    layer = hf_model.model.layers[1]
    hooks = [layer.input_layernorm.register_forward_hook(lambda m, i, o: seen["ln1"].append(o.detach().numpy())),
             layer.post_attention_layernorm.register_forward_hook(lambda m, i, o: seen["ln2"].append(o.detach().numpy()))]
    names = {"model.layers.1.self_attn.q_proj.weight": "q", "model.layers.1.self_attn.v_proj.weight": "v",
             "model.layers.1.mlp.gate_proj.weight": "gate", "model.layers.1.mlp.up_proj.weight": "up"}
    try:
        info = compute_imatrix(hf_model, names, [{"input_ids": ids, "attention_mask": mask}], llama_dir.parent / "im.npz")
    finally:
        for h in hooks:
            h.remove()
    got = dict(np.load(llama_dir.parent / "im.npz"))
    keep = mask.astype(bool)
    for key, name in (("ln1", "q"), ("ln1", "v"), ("ln2", "gate"), ("ln2", "up")):
        x = seen[key][0][keep]
        np.testing.assert_allclose(got[name], (x * x).mean(0), rtol=1e-4, err_msg=name)
    assert info["tokens"] == 44 and not np.allclose(got["q"], got["gate"])
