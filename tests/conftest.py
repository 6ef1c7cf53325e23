"""Small models and data built in the tests and shared by them: one definition each, imported
from here (``from tests.conftest import ...``) or, for fixtures, found by pytest by name."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv/bn/relu/pool/linear, the shape of a mobile image classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(128, classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(pixels).flatten(1))


class TinyEncoder(nn.Module):
    """A 2-layer transformer encoder classifier: MatMul-heavy, token ids and a mask in."""

    def __init__(self, vocab: int = 64, dim: int = 128, classes: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 4, 4 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(input_ids), src_key_padding_mask=attention_mask == 0)
        return self.head(h.mean(1))


def _init(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in module.parameters():  # non-trivial BN statistics and weights
        nn.init.normal_(p, std=0.2) if p.dim() > 1 else nn.init.uniform_(p, -0.5, 0.5)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return module.eval()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models train faster on one thread, most of all on a shared, busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cnn() -> nn.Module:
    return _init(SmallCNN())


@pytest.fixture(scope="session")
def encoder() -> nn.Module:
    torch.manual_seed(0)
    return TinyEncoder().eval()


def text_batch(n: int, seq: int = 16, vocab: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(n, seq)).astype(np.int64)
    mask = np.ones((n, seq), dtype=np.int64)
    mask[: n // 2, seq - 4:] = 0  # some padded rows
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="session")
def cnn_calib(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("calib") / "cnn_calib.npz"
    np.savez(path, pixels=np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32))
    return str(path)


@pytest.fixture(scope="session")
def cnn_artifacts(cnn: nn.Module, cnn_calib: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import edgekit

    out = tmp_path_factory.mktemp("cnn_out")
    x = torch.randn(2, 3, 16, 16)
    arts = edgekit.convert(cnn, (x,), targets=["onnx"], name="cnn", output_names=["logits"],
                           precisions=["fp32", "fp16", "int8-dynamic", "int8", "int4"],
                           calib=cnn_calib, out=out)
    return {a.precision.value: a for a in arts}


@pytest.fixture(scope="session")
def encoder_artifacts(encoder: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict:
    import edgekit

    tmp = tmp_path_factory.mktemp("enc_out")
    np.savez(tmp / "calib.npz", **text_batch(32, seed=2))
    ex = text_batch(2)
    arts = edgekit.convert(encoder, ex, targets=["onnx"], name="encoder", output_names=["logits"],
                           dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                         "attention_mask": {0: "batch", 1: "sequence"}},
                           precisions=["fp32", "int8-dynamic", "int8", "int4"],
                           calib=tmp / "calib.npz", out=tmp)
    return {a.precision.value: a for a in arts}


def install_runtime_plugin(tmp_path, monkeypatch: pytest.MonkeyPatch, module: str, source: str,
                           group: str = "edgekit.runtimes") -> None:
    """Install ``source`` as module ``module`` of a third-party distribution whose entry point in
    ``group`` names it, as a real plugin would; child processes find it."""
    import os
    import sys
    import textwrap

    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    dist = tmp_path / f"{module}-0.1.dist-info"
    dist.mkdir()
    name = module.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{module} = {module}\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), *sys.path]))


# -- a tiny BERT: WordPiece vocabulary and tokenizer, saved the way save_pretrained() does ---------
WORDS = ("the a an edgekit exports this sentence to every format second somewhat longer example "
         "keeps sequence axis dynamic model runs fast on small devices good bad movie film great "
         "terrible is was not very really plot actors music ending boring fun").split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = SPECIAL + sorted(set(WORDS)) + list(LETTERS + ".,!?") + ["##" + c for c in LETTERS]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
CALIB_TEXTS = [
    "the movie was good", "a bad film", "edgekit runs fast on small devices",
    "this sentence is great", "the plot was boring and the ending was terrible",
    "really fun music, very good actors", "not a great film", "an example sentence!",
    "the actors were not very good", "was the ending fun?", "small devices run this model",
    "every format keeps the sequence axis dynamic",
]
TEXTS = ["the movie was good", "a bad film", "the plot was boring and the ending was terrible",
         "really fun music, very good actors", "not a great film", "was the ending fun?"]


def bert_tokenizer(words: list[str] | None = None, **options: Any) -> Any:
    """A BertTokenizerFast over ``words`` (default :data:`VOCAB`, special tokens first), built here
    (nothing downloaded); ``options`` go to BertTokenizerFast (e.g. ``model_input_names``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    vocab = {w: i for i, w in enumerate(VOCAB if words is None else words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                             cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]", **options)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT sequence classifier with its tokenizer, as a Hugging Face directory."""
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("hf") / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=3,
                        id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    BertForSequenceClassification(config).eval().save_pretrained(path)
    bert_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like :func:`hf_dir`, with the head centred on :data:`TEXTS` so they get different labels."""
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("hf") / "tiny-clf"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=3, id2label=LABELS, initializer_range=0.2,
                        label2id={v: k for k, v in LABELS.items()})
    model = BertForSequenceClassification(config).eval()
    tok = bert_tokenizer()
    with torch.no_grad():  # a random head gives every text the same label: centre it on these texts
        pooled = torch.cat([model.bert(**tok(t, return_tensors="pt")).pooler_output for t in TEXTS])
        mu, w = pooled.mean(0), torch.randn(3, 32)
        w *= 3.0 / ((pooled - mu) @ w.T).std()
        model.classifier.weight.copy_(w)
        model.classifier.bias.copy_(-w @ mu)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BertModel saved the way sentence-transformers lays it out, with no tokenizer.json: the
    conversion has to write one from vocab.txt."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("hf") / "tiny-st"
    torch.manual_seed(1)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)
    BertModel(config).eval().save_pretrained(path)
    bert_tokenizer().save_pretrained(path)
    (path / "tokenizer.json").unlink()
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    return path


@pytest.fixture(scope="module")
def probe_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """LiteRT probe markers go to a fresh cache, not the user's (``pytestmark = usefixtures(...)``)."""
    old = os.environ.get("EDGEKIT_CACHE_DIR")
    os.environ["EDGEKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield Path(os.environ["EDGEKIT_CACHE_DIR"])
    if old is None:
        os.environ.pop("EDGEKIT_CACHE_DIR", None)
    else:
        os.environ["EDGEKIT_CACHE_DIR"] = old


def convert_fp32(source: Any, out: Path, targets: list[str], **kw: Any) -> dict[str, Path]:
    """fp32 artifacts by format; without an IR conversion, "openvino" is the ONNX file, which the
    OpenVINO runtime reads too (load it with runtime="openvino"): one export less per model."""
    import edgekit

    arts = edgekit.convert(source, targets=targets, precisions=["fp32"], out=out,
                           options={"tflite": {"layout": "nhwc"}} if kw.pop("nhwc", False) else None, **kw)
    assert all(a.status == "ok" for a in arts), [(a.format, a.reason) for a in arts]
    paths = {a.format.value: a.path for a in arts}
    return {"openvino": paths["onnx"], **paths}


# -- a tiny Llama for GGUF: a byte-level BPE tokenizer trained here and random weights -------------
BPE_VOCAB = 512
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def english_corpus() -> list[str]:
    """Real English text: gensim's Lee news corpus when installed, else sentences built here."""
    try:
        import gensim

        path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if lines:
            return lines
    except ImportError:
        pass
    subjects = ["The council", "A small team", "Researchers", "The old bridge", "Farmers", "Our neighbour"]
    verbs = ["announced", "repaired", "studied", "crossed", "planted", "measured"]
    objects = ["the new plan", "12 wooden boats", "the river's depth", "3.5 tonnes of wheat",
               "an unusual comet", "the town's water supply"]
    return [f"{s} {v} {o} on day {i} of the year, and it's not over yet." for i, (s, v, o) in
            enumerate((s, v, o) for s in subjects for v in verbs for o in objects)]


def bpe_tokenizer(folder: Path) -> Any:
    """Train a :data:`BPE_VOCAB`-token byte-level BPE with :data:`CHAT_TEMPLATE`; save it in ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(english_corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def save_random_lm(model: Any, folder: Path, tok_from: Path) -> Path:
    """Save ``model`` with random weights whose spread gives peaked next-token distributions (top-1
    is meaningful), and the tokenizer files of ``tok_from`` beside it."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
            elif "norm" in name or "ln_" in name:
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0, 0.02)
    model.eval().save_pretrained(folder)
    for f in tok_from.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (folder / f.name).write_bytes(f.read_bytes())
    return folder


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the offline BPE tokenizer (:func:`bpe_tokenizer`), for the GGUF tests."""
    folder = tmp_path_factory.mktemp("tok")
    bpe_tokenizer(folder)
    return folder


def tiny_llama_gguf(tmp: Path, *, hidden: int = 64, max_positions: int = 256, precision: str = "f16") -> Path:
    """A 1-layer Llama with random weights, test_gguf's BPE tokenizer and chat template, converted
    by edgekit to GGUF at ``precision`` in ``tmp``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import edgekit

    (tmp / "tok").mkdir()
    bpe_tokenizer(tmp / "tok")
    cfg = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_positions,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, architectures=["LlamaForCausalLM"])
    src = save_random_lm(LlamaForCausalLM(cfg), tmp / "llama", tmp / "tok")
    (art,) = edgekit.convert(src, targets=["gguf"], precisions=[precision], out=tmp / "out", name="lm")
    return art.path


@pytest.fixture(scope="session")
def lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama as f16 GGUF (the LLM serve and engine tests')."""
    return tiny_llama_gguf(tmp_path_factory.mktemp("lm"))


@pytest.fixture(scope="session")
def lm_q8(lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model quantized to Q8_0 by llama.cpp's own quantizer."""
    import ctypes

    import llama_cpp

    out = tmp_path_factory.mktemp("lm_q8") / "lm-q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, 1
    assert llama_cpp.llama_model_quantize(str(lm).encode(), str(out).encode(), ctypes.byref(params)) == 0
    return out
