"""Task pipelines: ``classify``/``embed`` on tiny models converted here, on ONNX, OpenVINO and TFLite.

Every answer is compared with the original PyTorch model run on each input alone (no padding),
so a pipeline that tokenizes, pads, masks, pools, resizes, crops, normalises or lays out
differently from the source fails. A fresh interpreter shows the pipelines import neither torch
nor transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import edgekit
from edgekit.cli import main as cli
from edgekit.errors import ArtifactError, ConfigError, InputError
from edgekit.manifest import read_manifest
from tests.conftest import LABELS, TEXTS, VOCAB, convert_fp32

pytest.importorskip("tokenizers")
pytest.importorskip("PIL")
pytestmark = pytest.mark.usefixtures("probe_cache")  # LiteRT probe markers in a fresh cache

FORMATS = ["onnx", "openvino", "tflite"]
SUFFIX = {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}
LONG = " ".join(["the actors were not very good and the music was boring"] * 6)  # past any fixed length
CNN_LABELS = [f"class-{i}" for i in range(10)]
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
IMAGE_SPEC = {"size": [16, 16], "channels": 3, "mean": MEAN, "std": STD, "resize": 20, "crop": 16}


def _load(arts: dict[str, Path], fmt: str, **kw: Any) -> edgekit.Model:
    """The artifact for ``fmt``, run by that format's runtime (OpenVINO's for an ONNX stand-in, in
    f32: on a bf16-capable CPU OpenVINO's own default is bf16, which an IR's manifest overrides)."""
    if fmt == "openvino" and arts[fmt].suffix == ".onnx":
        kw = {"runtime": "openvino", "precision_hint": "f32", **kw}
    return edgekit.load(arts[fmt], **kw)


# -- a text classifier (Hugging Face directory with tokenizer.json: conftest.clf_dir) -----------
@pytest.fixture(scope="module")
def clf(clf_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return convert_fp32(clf_dir, tmp_path_factory.mktemp("clf_out"), FORMATS)


def _hf_probs(path: Path, texts: list[str], max_length: int = 512) -> np.ndarray:
    """The source model's class probabilities, one text at a time (no padding at all)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            enc = tok(text, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(model(**enc).logits.softmax(-1)[0].numpy())
    return np.stack(rows)


@pytest.mark.parametrize("fmt", FORMATS)
def test_classify_texts_matches_the_source_model(fmt: str, clf: dict[str, Path], clf_dir: Path) -> None:
    ref = _hf_probs(clf_dir, TEXTS)
    assert len({int(i) for i in ref.argmax(1)}) > 1  # guards the fixture: labels differ between texts
    with _load(clf, fmt) as m:
        got = m.classify(TEXTS, top_k=3, batch_size=4)  # batches of 4 and 2, each padded to its longest
    assert [r["label"] for r in got] == [LABELS[int(i)] for i in ref.argmax(1)]
    for r, want in zip(got, ref):
        assert r["index"] == int(want.argmax()) and r["score"] == r["top"][0]["score"]
        assert [t["score"] for t in r["top"]] == sorted((t["score"] for t in r["top"]), reverse=True)
        by_index = np.array([t["score"] for t in sorted(r["top"], key=lambda t: t["index"])])
        np.testing.assert_allclose(by_index, want, atol=1e-4)
        assert {t["label"] for t in r["top"]} == set(LABELS.values())


def test_one_text_is_a_list_of_one_and_top_k_is_checked(clf: dict[str, Path]) -> None:
    with edgekit.load(clf["onnx"]) as m:
        one = m.classify("the movie was good")
        assert len(one) == 1 and len(one[0]["top"]) == 1
        assert one[0] == m.classify(["the movie was good", "a bad film"])[0]
        assert m.classify([]) == []
        with pytest.raises(ConfigError, match="top_k"):
            m.classify("x", top_k=0)
        with pytest.raises(InputError, match="strings"):
            m.classify([1, 2])


def test_tflite_truncates_to_the_length_it_was_built_for(clf: dict[str, Path], clf_dir: Path) -> None:
    """The TFLite graph is fixed underneath (its sequence is the export example's length): a longer
    text is truncated to that length, not refused by the runtime."""
    manifest = read_manifest(clf["tflite"])
    fixed = manifest.conversion["static_shapes"]["input_ids"][1]
    assert fixed < 40
    ref = _hf_probs(clf_dir, [LONG], max_length=fixed)[0]
    with edgekit.load(clf["tflite"]) as m:
        got = m.classify(LONG, top_k=3)[0]
    np.testing.assert_allclose([t["score"] for t in sorted(got["top"], key=lambda t: t["index"])], ref, atol=1e-4)


def test_a_fixed_shape_artifact_gets_fixed_batches(clf: dict[str, Path]) -> None:
    """OpenVINO reshaped to 1 x 24 (what an NPU needs): every row padded to 24, one row per call."""
    shapes = "input_ids=1x24,attention_mask=1x24,token_type_ids=1x24"
    with _load(clf, "openvino") as dynamic, _load(clf, "openvino", static_shapes=shapes) as fixed:
        assert fixed.signature.inputs[0].shape == (1, 24)
        want, got = dynamic.classify(TEXTS, top_k=3), fixed.classify(TEXTS, top_k=3)
    assert [r["label"] for r in got] == [r["label"] for r in want]
    np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=1e-4)


# -- an embedding model (sentence-transformers layout, vocab.txt only: conftest.emb_dir) -------
@pytest.fixture(scope="module")
def emb(emb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return convert_fp32(emb_dir, tmp_path_factory.mktemp("emb_out"), ["onnx", "tflite"])


def _hf_embeddings(path: Path, texts: list[str]) -> np.ndarray:
    """Mean of the token states, then L2 norm: what sentence-transformers computes, one text at a time."""
    from transformers import AutoTokenizer, BertModel

    tok, model = AutoTokenizer.from_pretrained(path), BertModel.from_pretrained(path).eval()
    rows = []
    with torch.inference_mode():
        for text in texts:
            v = model(**tok(text, return_tensors="pt")).last_hidden_state[0].mean(0).numpy()
            rows.append(v / np.linalg.norm(v))
    return np.stack(rows)


def test_conversion_records_what_embed_needs(emb: dict[str, Path]) -> None:
    manifest = read_manifest(emb["onnx"])
    pre = manifest.preprocess
    assert manifest.task == "feature-extraction"
    assert (pre["pooling"], pre["normalize"], pre["tokenizer"]) == ("mean", True, "tokenizer.json")
    assets = emb["onnx"].parent / pre["assets_dir"]
    assert {"tokenizer.json", "vocab.txt", "modules.json"} <= {p.name for p in assets.iterdir()}
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(assets / "tokenizer.json")).encode("The movie was good").ids
    assert ids == [VOCAB.index(w) for w in ("[CLS]", "the", "movie", "was", "good", "[SEP]")]


@pytest.mark.parametrize("fmt", FORMATS)
def test_embed_matches_mean_pooled_source_vectors(fmt: str, emb: dict[str, Path], emb_dir: Path) -> None:
    ref = _hf_embeddings(emb_dir, TEXTS)
    with _load(emb, fmt) as m:
        got = m.embed(TEXTS, batch_size=4)
        raw = m.embed(TEXTS[:2], normalize=False)
    assert got.shape == (len(TEXTS), 32) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, ref, atol=2e-4)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_pooling_is_read_from_the_sentence_transformers_config(tmp_path: Path) -> None:
    from edgekit.errors import SourceError
    from edgekit.sources import hf_records

    (tmp_path / "1_Pooling").mkdir()
    cfg = tmp_path / "1_Pooling" / "config.json"
    cfg.write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    assert hf_records.pooling(tmp_path) == "cls" and hf_records.normalize(tmp_path) is True
    (tmp_path / "modules.json").write_text(json.dumps([{"path": "1_Pooling",
                                                        "type": "sentence_transformers.models.Pooling"}]))
    assert hf_records.normalize(tmp_path) is False  # a pipeline without a Normalize module
    cfg.write_text(json.dumps({"pooling_mode_weightedmean_tokens": True}))
    with pytest.raises(SourceError, match="weightedmean"):
        hf_records.pooling(tmp_path)


# -- an image classifier (nn.Module + preprocess=...) -----------------------------------------
@pytest.fixture(scope="module")
def img(cnn: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return convert_fp32(cnn, tmp_path_factory.mktemp("img_out"), ["onnx", "tflite"],
                        example_inputs=(torch.randn(2, 3, 16, 16),), name="cnn", output_names=["logits"],
                        nhwc=True, preprocess={"id2label": CNN_LABELS, "image": IMAGE_SPEC})


def _photos(tmp_path: Path) -> list[Path]:
    """Non-square RGB images with structure (so resize and crop matter)."""
    from PIL import Image

    rng = np.random.default_rng(3)
    paths = []
    for i, (w, h) in enumerate([(30, 24), (24, 40), (20, 20)]):
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([xx * 255 / w, yy * 255 / h, rng.uniform(0, 255, (h, w))], -1).astype(np.uint8)
        paths.append(tmp_path / f"photo{i}.png")
        Image.fromarray(np.roll(arr, 7 * i, axis=1)).save(paths[-1])
    return paths


def _cnn_probs(cnn: torch.nn.Module, paths: list[Path]) -> np.ndarray:
    """Preprocessing written out by hand: short side to 20 (bilinear), centre crop 16, /255, normalise."""
    from PIL import Image

    rows = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        w, h = im.size
        im = im.resize((20, int(20 * h / w)) if w <= h else (int(20 * w / h), 20), Image.Resampling.BILINEAR)
        left, top = (im.size[0] - 16) // 2, (im.size[1] - 16) // 2
        x = (np.asarray(im.crop((left, top, left + 16, top + 16)), np.float32) / 255 - MEAN) / STD
        with torch.inference_mode():
            rows.append(cnn(torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))).softmax(-1)[0].numpy())
    return np.stack(rows)


def test_preprocess_given_to_convert_is_recorded(img: dict[str, Path]) -> None:
    manifest = read_manifest(img["onnx"])
    assert manifest.task == "image-classification"
    assert manifest.preprocess["id2label"]["3"] == "class-3"
    assert manifest.preprocess["image"]["resize"] == 20 and manifest.preprocess["image"]["mean"] == MEAN
    with pytest.raises(ConfigError, match="unknown key"):
        edgekit.convert(torch.nn.Linear(2, 2), (torch.randn(1, 2),), preprocess={"labels": ["a", "b"]})


@pytest.mark.parametrize("fmt", FORMATS)
def test_classify_images_from_paths_pil_and_arrays(fmt: str, img: dict[str, Path], cnn: torch.nn.Module,
                                                   tmp_path: Path) -> None:
    from PIL import Image

    paths = _photos(tmp_path)
    ref = _cnn_probs(cnn, paths)
    with _load(img, fmt) as m:
        if fmt == "tflite":  # converted channel-last: the pipeline lays the batch out for it
            assert m.signature.inputs[0].shape[1:] == (16, 16, 3)
        by_path = m.classify([str(p) for p in paths], top_k=10, batch_size=2)
        by_pil = m.classify([Image.open(p) for p in paths], top_k=10)
        by_array = m.classify(np.asarray(Image.open(paths[0])), top_k=10)
        by_bytes = m.classify(paths[0].read_bytes(), top_k=10)
        with open(paths[1], "rb") as f:
            by_file = m.classify(f, top_k=10)
    assert [r["label"] for r in by_path] == [CNN_LABELS[i] for i in ref.argmax(1)]
    for r, want in zip(by_path, ref):
        np.testing.assert_allclose([t["score"] for t in sorted(r["top"], key=lambda t: t["index"])], want, atol=1e-4)
    assert [r["top"] for r in by_pil] == [r["top"] for r in by_path]
    assert by_array[0]["top"] == by_bytes[0]["top"] == by_path[0]["top"]
    assert by_file[0]["top"] == by_path[1]["top"]


@pytest.mark.parametrize("processor", ["ViTImageProcessor", "CLIPImageProcessor"])
def test_a_hugging_face_processor_is_recorded_and_reproduced(processor: str, tmp_path: Path) -> None:
    """A ViT directory's preprocessor_config.json becomes preprocess["image"]; the pipeline's tensor
    equals the processor's own (direct resize / shortest edge + centre crop, bilinear / bicubic)."""
    import transformers
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification

    from edgekit.sources import resolve_source
    from edgekit.tasks import ImageSpec, load_pixels, to_tensor

    kwargs = {"ViTImageProcessor": {"size": {"height": 32, "width": 32}, "image_mean": MEAN, "image_std": STD},
              "CLIPImageProcessor": {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}}}
    proc = getattr(transformers, processor)(**kwargs[processor])
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=4, id2label={i: f"kind-{i}" for i in range(4)})
    ViTForImageClassification(config).eval().save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    source = resolve_source(str(tmp_path))
    assert source.task == "image-classification" and source.preprocess["id2label"]["2"] == "kind-2"
    spec = ImageSpec.parse(source.preprocess["image"])
    assert spec.size == (32, 32) and spec.resample == ("bicubic" if processor == "CLIPImageProcessor" else "bilinear")
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 50, 3)).astype(np.uint8))
    want = proc(photo, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(to_tensor([load_pixels(photo, spec)], spec), want, atol=1e-5)


def test_digits_spec_maps_grey_images_to_the_training_range() -> None:
    """builtin:digits-cnn was trained on counts 0..16 divided by 16: a 0..255 grey file becomes
    pixel/255 after box-downsampling to 8x8; float arrays are taken as counts."""
    from edgekit.sources.builtin import DIGITS_IMAGE
    from edgekit.tasks import ImageSpec, load_pixels, to_tensor

    spec = ImageSpec.parse(DIGITS_IMAGE)
    big = np.kron(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4, np.ones((4, 4), np.uint8))  # 32x32 blocks
    x = to_tensor([load_pixels(big, spec)], spec)
    assert x.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(x[0, 0], np.arange(64).reshape(8, 8) * 4 / 255.0, atol=1e-5)
    counts = np.random.default_rng(0).integers(0, 17, (8, 8)).astype(np.float64)
    np.testing.assert_allclose(to_tensor([load_pixels(counts, spec)], spec)[0, 0], counts / 16, atol=1e-6)


def test_image_errors_name_the_input(img: dict[str, Path], tmp_path: Path) -> None:
    with edgekit.load(img["onnx"]) as m:
        with pytest.raises(InputError, match="no such image file"):
            m.classify(str(tmp_path / "missing.png"))
        (tmp_path / "not.png").write_text("text")
        with pytest.raises(InputError, match="not an image"):
            m.classify(tmp_path / "not.png")


# -- the wrong method, no manifest, generate ----------------------------------------------------
def test_the_wrong_task_method_names_the_task_and_the_right_call(clf: dict[str, Path], emb: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    with edgekit.load(emb["onnx"]) as m, pytest.raises(ConfigError) as info:
        m.classify("x")
    assert "'feature-extraction'" in info.value.problem and "embed()" in info.value.fix
    with edgekit.load(clf["onnx"]) as m:
        with pytest.raises(ConfigError) as info:
            m.embed("x")
        assert "text-classification" in info.value.problem and "classify()" in info.value.fix
        with pytest.raises(ConfigError) as info:
            m.generate("x")
        assert "generate() needs an artifact whose task is text-generation" in info.value.problem
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(clf["onnx"].read_bytes())
    with edgekit.load(bare) as m, pytest.raises(ArtifactError, match="no edgekit manifest"):
        m.classify("x")


def test_generate_is_the_same_entry_point_on_gguf(tmp_path: Path) -> None:
    """``Model.generate`` is the shared surface: llama.cpp serves it for a GGUF artifact, and the
    same model refuses ``classify`` naming generate()/chat()."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import bpe_tokenizer, save_random_lm

    tok = tmp_path / "tok"
    tok.mkdir()
    bpe_tokenizer(tok)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, architectures=["LlamaForCausalLM"])
    src = save_random_lm(LlamaForCausalLM(cfg), tmp_path / "llama", tok)
    (art,) = edgekit.convert(src, targets=["gguf"], precisions=["f16"], out=tmp_path / "out", name="lm")
    with edgekit.load(art.path, n_ctx=128) as m:
        assert isinstance(m, edgekit.Model)
        text = m.generate("The council", max_tokens=6, temperature=0.0)
        assert isinstance(text, str) and text == m.generate("The council", max_tokens=6, temperature=0.0)
        assert len(m.tokenize(text, add_special=False)) <= 6
        with pytest.raises(ConfigError) as info:
            m.classify("The council")
        assert "text-generation" in info.value.problem and "generate()" in info.value.fix
    result = CliRunner().invoke(cli, ["run", str(art.path), "--text", "The council", "--json"])
    assert result.exit_code == 0, result.output
    cli_text = json.loads(result.output)["results"][0]["output"]  # greedy, 64 tokens: the same start
    assert cli_text.startswith(text) and len(cli_text) > len(text)


# -- benchmark and CLI ----------------------------------------------------------------------------
def test_benchmark_task_reports_stages_apart(clf: dict[str, Path]) -> None:
    with edgekit.load(clf["onnx"]) as m:
        r = m.benchmark_task(TEXTS, warmup=2, runs=12)
    assert r.task == "text-classification" and r.batch == len(TEXTS) and r.latency.runs == 12
    assert set(r.stages) == {"preprocess", "inference", "postprocess"}
    assert all(s.runs == 12 and s.p50_ms > 0 for s in r.stages.values())
    total = sum(s.mean_ms for s in r.stages.values())
    assert abs(total - r.latency.mean_ms) < 1e-6 * max(1.0, total) + 1e-9
    again = type(r).from_dict(json.loads(json.dumps(r.to_dict())))
    assert again.stages == r.stages and "preprocess_p50_ms" in r.row()


def test_cli_run_and_bench_with_text_and_image(clf: dict[str, Path], img: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["run", str(clf["onnx"]), "--text", TEXTS[0], "--text", TEXTS[1], "--top-k", "2",
                                 "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    with edgekit.load(clf["onnx"]) as m:
        want = m.classify(TEXTS[:2], top_k=2)
    assert out["task"] == "text-classification" and [r["output"] for r in out["results"]] == want
    photo = _photos(tmp_path)[0]
    result = runner.invoke(cli, ["run", str(img["onnx"]), "--image", str(photo)])
    assert result.exit_code == 0, result.output
    with edgekit.load(img["onnx"]) as m:
        assert m.classify(photo)[0]["label"] in result.output
    result = runner.invoke(cli, ["run", str(img["onnx"]), "--text", "hello"])
    assert result.exit_code == 2 and "pass --image instead of --text" in result.output
    result = runner.invoke(cli, ["bench", str(img["tflite"]), "--image", str(photo), "--runs", "5", "--warmup", "1",
                                 "--json"])  # isolated: the image path and the stages cross the process boundary
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)["results"][0]
    assert row["status"] == "ok" and row["mode"] == "isolated" and row["task"] == "image-classification"
    assert set(row["stages"]) == {"preprocess", "inference", "postprocess"}


def test_classify_and_embed_import_neither_torch_nor_transformers(clf: dict[str, Path], emb: dict[str, Path],
                                                                   img: dict[str, Path], tmp_path: Path) -> None:
    photo = _photos(tmp_path)[0]
    code = f"""
import json, sys
import edgekit
out = {{}}
for fmt, path in {json.dumps({f: str(p) for f, p in clf.items()})}.items():
    with edgekit.load(path) as m:
        out["clf-" + fmt] = m.classify(["the movie was good"])[0]["label"]
for fmt, path in {json.dumps({f: str(p) for f, p in emb.items()})}.items():
    with edgekit.load(path, runtime="openvino" if fmt == "openvino" else None) as m:
        out["emb-" + fmt] = m.embed(["the movie was good"]).shape[1]
with edgekit.load({str(img["onnx"])!r}) as m:
    out["img"] = m.classify({str(photo)!r})[0]["label"]
heavy = sorted(n for n in ("torch", "transformers", "tensorflow") if n in sys.modules)
print(json.dumps({{"out": out, "heavy": heavy}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr[-2000:]
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reply["heavy"] == []
    assert len(reply["out"]) == 2 * len(FORMATS) + 1 and reply["out"]["emb-onnx"] == 32
