"""GGUF verification memory: the PyTorch model's mapped weights are handed back while it is idle,
and verification reads PyTorch's logits from a scratch file, computed once per conversion.

The assertions are ones a wrong implementation fails: dropped pages come back with the file's bytes;
a mapping holding a modified page is never dropped (the change would be lost); a Hugging Face
model whose weights were dropped computes bit-identical logits; and a conversion with calibration
text runs the original on the feeds holding the parity rows only, once for all its precisions.
(Peak-RSS figures are in bench/gguf_convert.py and docs/gguf.md, not asserted here.)
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gguf", reason="the gguf package is not installed: pip install 'edgekit[convert]'")
pytest.importorskip("tokenizers")

import edgekit  # noqa: E402
from edgekit.sources.pages import drop_mapped_pages, mappings  # noqa: E402
from tests.conftest import english_corpus, save_random_lm  # noqa: E402

PAGE = mmap.PAGESIZE


def _rss(path: Path) -> int:
    return sum(m.rss for m in mappings([path]))


@pytest.fixture(scope="module")
def llama_dir(tok_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
                      architectures=["LlamaForCausalLM"])
    return save_random_lm(LlamaForCausalLM(cfg), tmp_path_factory.mktemp("tiny_llama_mem"), tok_dir)


def test_dropped_pages_come_back_from_the_file_and_modified_mappings_are_kept(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 255, 64 * PAGE, dtype=np.uint8).tobytes()
    path = tmp_path / "weights.bin"
    path.write_bytes(data)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # MAP_PRIVATE, as torch maps safetensors
    try:
        assert bytes(mm[:]) == data
        assert _rss(path) >= len(data)
        assert drop_mapped_pages([path]) >= len(data)
        assert _rss(path) == 0
        assert bytes(mm[:]) == data  # faulted back in from the file
        mm[PAGE + 3] = (data[PAGE + 3] + 1) % 256  # copy-on-write: this page is the process's own now
        assert sum(m.anonymous for m in mappings([path])) == PAGE
        assert drop_mapped_pages([path]) == 0
        assert mm[PAGE + 3] == (data[PAGE + 3] + 1) % 256 and _rss(path) >= len(data)
    finally:
        mm.close()
    assert drop_mapped_pages([tmp_path / "not-mapped.bin"]) == 0


def test_a_hugging_face_model_computes_the_same_after_its_weights_are_handed_back(llama_dir: Path) -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(llama_dir, use_safetensors=True).eval()
    ids = torch.arange(3, 40)[None]
    with torch.inference_mode():
        before = model(input_ids=ids).logits.numpy().copy()
    weights = llama_dir / "model.safetensors"
    resident = _rss(weights)
    # transformers maps a checkpoint of the model's dtype: the parameters are the file's pages
    assert resident >= 0.9 * weights.stat().st_size
    assert drop_mapped_pages([weights]) == resident
    assert _rss(weights) == 0
    with torch.inference_mode():
        after = model(input_ids=ids).logits.numpy()
    np.testing.assert_array_equal(after, before)


@pytest.mark.slow  # two conversions with verification: about 20 s on 2 cores
def test_verification_runs_the_original_on_the_parity_rows_only_once_for_every_precision(
        llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'edgekit[llamacpp]'")
    from edgekit.sources import ModelSource

    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(english_corpus()[:24]) + "\n", encoding="utf-8")
    runs: list[tuple[int, ...]] = []
    real = ModelSource.reference

    def counted(self: ModelSource, feed: dict[str, Any]) -> dict[str, np.ndarray]:
        runs.append(tuple(np.asarray(feed["input_ids"]).shape))
        return real(self, feed)

    monkeypatch.setattr(ModelSource, "reference", counted)
    arts = edgekit.convert(str(llama_dir), targets=["gguf"], precisions=["fp16", "q8_0"], calib=calib,
                           out=tmp_path / "out", name="tiny", seq_len=32,
                           options={"gguf": {"parity_rows": 2, "eval_tokens": 200, "window": 64}})
    # the 2 example rows hold the 2 parity rows: the 3 calibration batches of 8 are never run as
    # batches (their text is scored through the perplexity windows), and nothing runs twice
    assert len(runs) == 1 and runs[0][0] == 2
    for art in arts:
        v = art.verification
        assert art.status == "ok" and v.samples == 2
        assert v.metric["samples"] == 200 - 4 and v.metric["window"] == 64  # 4 windows: 3 x 64 + 8
        assert v.outputs[0].cosine > 0.999 and v.metric["top1"] > 0.9
    f16 = arts[0].verification
    assert f16.outputs[0].top1_agreement == 1.0 and f16.outputs[0].min_cosine >= 0.9999


def test_the_importance_matrix_skips_the_logits_only_when_the_head_is_not_hooked(llama_dir: Path,
                                                                                  tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    from edgekit.converters.gguf.imatrix import compute_imatrix, last_logits_only

    model = LlamaForCausalLM.from_pretrained(llama_dir).eval()
    ids = np.random.default_rng(1).integers(3, 500, (3, 24))
    batches = [{"input_ids": ids, "attention_mask": np.ones_like(ids)}]
    body = {f"model.layers.{i}.{m}.weight": f"blk.{i}.{m}.weight" for i in range(2)
            for m in ("self_attn.q_proj", "mlp.down_proj")}
    head = {"lm_head.weight": "output.weight"}
    assert last_logits_only(model, []) == {"logits_to_keep": 1}
    assert last_logits_only(model, [model.lm_head]) == {}
    compute_imatrix(model, body, batches, tmp_path / "body.npz")  # the last position's logits only
    compute_imatrix(model, {**body, **head}, batches, tmp_path / "all.npz")  # every position's
    a, b = np.load(tmp_path / "body.npz"), np.load(tmp_path / "all.npz")
    assert sorted(b) == sorted([*body.values(), "output.weight"]) and b["output.weight"].shape == (128,)
    for name in body.values():
        np.testing.assert_array_equal(a[name], b[name])  # the same inputs, bit for bit
