"""Model folders as users have them (issue 12, items 5-7): a causal LM whose tokenizer has no pad
token, a BERT pair classifier whose tokenizer does not list ``token_type_ids``, and image models
without ``preprocessor_config.json``. Every model and tokenizer is built here; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgekit
from edgekit.cli import main as cli
from edgekit.errors import CalibrationError
from tests.conftest import bert_tokenizer

SENTENCES = [f"{s} {v} {o} today." for s in ("the cat", "a dog", "my friend", "the team")
             for v in ("saw", "likes", "found", "built") for o in ("a boat", "the river", "some bread", "it")]


# --------------------------------------------------------------------------------------------
# Item 5: a causal LM whose tokenizer has no pad token (GPT-2, Llama, Mistral all ship this way)
# --------------------------------------------------------------------------------------------


def _bpe_without_pad(folder: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(SENTENCES, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert fast.pad_token is None  # what the test is about
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("lm") / "tiny-lm-nopad"
    folder.mkdir()
    tok = _bpe_without_pad(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                      architectures=["LlamaForCausalLM"])
    assert cfg.pad_token_id is None
    LlamaForCausalLM(cfg).eval().save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_causal_lm_without_pad_token_converts_to_onnx_and_openvino(lm_dir: Path, tmp_path: Path) -> None:
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(SENTENCES[:8]) + "\n")  # sentences of different lengths: padding needed
    arts = edgekit.convert(lm_dir, targets=["onnx", "openvino"], precisions=["fp32"], calib=calib,
                           out=tmp_path / "out", seq_len=16)
    assert [(a.format.value, a.status) for a in arts] == [("onnx", "ok"), ("openvino", "ok")]
    for art in arts:
        (logits,) = art.verification.outputs
        assert logits.top1_agreement == 1.0 and logits.max_abs_err < 1e-3
    # the artifact computes what transformers computes on an unpadded sentence
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(lm_dir)(SENTENCES[5], return_tensors="np")["input_ids"].astype(np.int64)
    with torch.inference_mode():
        want = AutoModelForCausalLM.from_pretrained(lm_dir)(torch.from_numpy(ids)).logits.numpy()
    with edgekit.load(arts[0].path) as m:
        got = m.run({"input_ids": ids, "attention_mask": np.ones_like(ids)})["logits"]
    np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.slow
def test_causal_lm_without_pad_token_converts_to_gguf(lm_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'edgekit[llamacpp]'")
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(SENTENCES[:8]) + "\n")
    result = CliRunner().invoke(cli, ["convert", str(lm_dir), "--to", "gguf", "--precision", "fp32",
                                      "--calib", str(calib), "--seq-len", "16", "--out", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "ValueError" not in result.output
    assert (tmp_path / "g" / "tiny-lm-nopad-fp32.gguf").is_file()


def test_tokenize_pads_with_eos_and_masks_it(lm_dir: Path) -> None:
    from edgekit.sources import resolve_source

    src = resolve_source(str(lm_dir))
    enc = src.tokenize(["the cat saw a boat today.", "a dog likes it today."])
    assert set(src.input_names) == {"input_ids", "attention_mask"}
    padded = enc["input_ids"][enc["attention_mask"] == 0]
    assert padded.size > 0 and set(padded.tolist()) == {2}  # EOS, as the tokenizer's users pad
    ex = src.example_inputs
    assert ex["input_ids"].shape == ex["attention_mask"].shape and ex["input_ids"].shape[0] == 2


# --------------------------------------------------------------------------------------------
# Item 6: a BERT sentence-pair classifier whose tokenizer does not list token_type_ids
# --------------------------------------------------------------------------------------------

WORDS = sorted(set(" ".join(SENTENCES).replace(".", " .").split()))
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("pair") / "tiny-pair"
    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    # token_type_ids left out of model_input_names, as many hub tokenizers do
    fast = bert_tokenizer(SPECIAL + WORDS, model_input_names=["input_ids", "attention_mask"])
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2, type_vocab_size=2)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # weights with a spread, so outputs (and their dependence on segments) are not ~0
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    model.save_pretrained(folder)
    return folder


def _pair_feed(folder: Path) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(["the cat saw a boat today.", "a dog likes it today."], ["my friend found it today.", "the team built a boat today."],
              padding=True, return_token_type_ids=True, return_tensors="np")
    return {k: v.astype(np.int64) for k, v in enc.items()}


def test_pair_classifier_keeps_token_type_ids(pair_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    feed = _pair_feed(pair_dir)
    assert feed["token_type_ids"].any()
    model = AutoModelForSequenceClassification.from_pretrained(pair_dir).eval()
    with torch.inference_mode():
        want = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
        flat = model(input_ids=torch.from_numpy(feed["input_ids"]),
                     attention_mask=torch.from_numpy(feed["attention_mask"])).logits.numpy()
    assert np.abs(want - flat).max() > 1e-2  # the segments change the answer

    np.savez(tmp_path / "calib.npz", **{k: np.repeat(v, 4, axis=0) for k, v in feed.items()})
    (art,) = edgekit.convert(pair_dir, targets=["onnx"], precisions=["fp32"], calib=tmp_path / "calib.npz",
                             out=tmp_path / "out")
    assert art.status == "ok"
    with edgekit.load(art.path) as m:
        assert [s.name for s in m.signature.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
        got = m.run(feed)["logits"]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_type_vocab_size_one_does_not_add_token_type_ids(tmp_path: Path) -> None:
    """RoBERTa-style: the model takes token_type_ids, but one segment type means they carry nothing."""
    from transformers import BertConfig, BertForSequenceClassification

    from edgekit.sources import resolve_source

    folder = tmp_path / "one-type"
    BertForSequenceClassification(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32,
                                             type_vocab_size=1)).save_pretrained(folder)
    assert resolve_source(str(folder)).input_names == ["input_ids", "attention_mask"]


# --------------------------------------------------------------------------------------------
# Item 7: image models without preprocessor_config.json
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ResNetConfig, ResNetForImageClassification

    folder = tmp_path_factory.mktemp("img") / "tiny-resnet"
    torch.manual_seed(0)
    cfg = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3,
                       architectures=["ResNetForImageClassification"])
    ResNetForImageClassification(cfg).eval().save_pretrained(folder)
    assert not (folder / "preprocessor_config.json").exists()
    return folder


def test_fully_convolutional_image_model_keeps_height_and_width_dynamic(resnet_dir: Path, tmp_path: Path) -> None:
    from transformers import ResNetForImageClassification

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", pixel_values=rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    (art,) = edgekit.convert(resnet_dir, targets=["onnx"], precisions=["fp32"], calib=tmp_path / "calib.npz",
                             out=tmp_path / "out")
    assert art.status == "ok"
    model = ResNetForImageClassification.from_pretrained(resnet_dir).eval()
    with edgekit.load(art.path) as m:
        spec = m.signature.inputs[0]
        assert spec.shape[1] == 3 and all(isinstance(d, str) for d in (spec.shape[0], spec.shape[2], spec.shape[3]))
        assert spec.example_shape == (2, 3, 32, 32)  # the examples took the calibration data's size
        for h, w in ((32, 32), (48, 40)):
            x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
            with torch.inference_mode():
                want = model(torch.from_numpy(x)).logits.numpy()
            np.testing.assert_allclose(m.run({"pixel_values": x})["logits"], want, atol=1e-4)


@pytest.mark.slow
def test_fixed_shape_format_exports_the_calibration_size(resnet_dir: Path, tmp_path: Path) -> None:
    """TFLite exports fixed shapes: the size of the data (32x32), not a guessed 224x224."""
    pytest.importorskip("litert_torch")
    np.savez(tmp_path / "calib.npz", pixel_values=np.random.default_rng(1).standard_normal((8, 3, 32, 32))
             .astype(np.float32))
    (art,) = edgekit.convert(resnet_dir, targets=["tflite"], precisions=["fp32"], calib=tmp_path / "calib.npz",
                             out=tmp_path / "out")
    assert art.status == "ok" and art.verification.passed
    with edgekit.load(art.path) as m:
        assert m.signature.inputs[0].shape[1:] == (3, 32, 32)


def test_shape_option_sets_the_example_size(resnet_dir: Path) -> None:
    from edgekit.sources import resolve_source

    src = resolve_source(str(resnet_dir), {"pixel_values": np.zeros((1, 3, 40, 40), np.float32)})
    assert src.example_inputs["pixel_values"].shape[1:] == (3, 40, 40)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    folder = tmp_path_factory.mktemp("img") / "tiny-vit"
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=16, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=32, num_labels=3,
                    architectures=["ViTForImageClassification"])
    ViTForImageClassification(cfg).eval().save_pretrained(folder)
    return folder


def test_fixed_size_network_takes_its_size_from_the_config(vit_dir: Path, tmp_path: Path) -> None:
    """A ViT's position table fixes the size: config.image_size, not 224, and data of another size is
    refused with the size the model needs."""
    from edgekit.sources import resolve_source

    src = resolve_source(str(vit_dir))
    assert src.example_inputs["pixel_values"].shape[1:] == (3, 32, 32)
    assert src.dynamic_axes["pixel_values"] == {0: "batch"}
    np.savez(tmp_path / "calib.npz", pixel_values=np.zeros((4, 3, 48, 48), np.float32))
    with pytest.raises(CalibrationError) as info:
        edgekit.convert(vit_dir, targets=["onnx"], precisions=["fp32"], calib=tmp_path / "calib.npz",
                        out=tmp_path / "out")
    assert "expected ['N', 3, 32, 32]" in info.value.problem
