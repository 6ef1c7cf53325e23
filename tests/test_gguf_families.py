"""GGUF for every claimed family: a tiny random model of each (2 layers, hidden 64) built here with
an offline tokenizer, written by edgekit at f16, run by llama.cpp and compared with PyTorch
(top-1 agreement 1.0 outside exact ties, mean cosine >= 0.9999); then, tensor by tensor, against
llama.cpp's own ``convert_hf_to_gguf.py`` from the llama-cpp-python sdist (same names, types,
shapes and bytes; same ``{arch}.*`` hyper-parameters wherever llama.cpp writes one).

llama.cpp's converter needs the sdist (``pip download --no-deps --no-binary :all:
llama-cpp-python==0.3.36 -d ~/.cache/edgekit/sdist``); without it the identity tests skip and say
so. It runs in a subprocess with the sdist's own ``gguf-py`` first on ``sys.path`` (its tables
must match its code) and a vocabulary it can read: our trained tokenizers hash to no known
pre-tokenizer, so the pre-tokenizer name is pinned and ``set_vocab`` reads the BPE tokenizer.
Only the tensors and hyper-parameters are compared.
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

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf", reason="the gguf package is not installed: pip install 'edgekit[convert]'")
pytest.importorskip("tokenizers")

from bench.gguf_convert import DOWNLOAD, llama_cpp_root  # noqa: E402
from tests.conftest import save_random_lm  # noqa: E402

pytestmark = pytest.mark.slow

SMALL = dict(vocab_size=512, bos_token_id=1, eos_token_id=2, pad_token_id=2)
DEC = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=512)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}

# family -> (config class, model class, tiny config); every family of converters/gguf/families.py
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(**DEC, rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(**DEC, sliding_window=None)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(**DEC, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(**DEC, head_dim=32, tie_word_embeddings=True)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(**DEC, head_dim=16)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(**DEC, head_dim=16, sliding_window=16,
                                                          query_pre_attn_scalar=16)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(**DEC, head_dim=16, sliding_window=16,
                                                              query_pre_attn_scalar=16)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(**DEC)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=64, n_layer=2, n_head=4, n_positions=512)),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", dict(**DEC)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(**DEC)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(**DEC, partial_rotary_factor=0.5)),
    "granite": ("GraniteConfig", "GraniteForCausalLM", dict(**DEC, embedding_multiplier=2.0, residual_multiplier=0.5,
                                                            attention_multiplier=0.1, logits_scaling=0.5)),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", dict(**DEC)),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(**{**DEC, "num_hidden_layers": 4})),  # layer 3: no rope
    # intermediate 4 * hidden: llama.cpp's converter writes feed_forward_length = 4 * n_embd whatever the config says
    "phi2": ("PhiConfig", "PhiForCausalLM", dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                                 num_attention_heads=4, max_position_embeddings=512,
                                                 partial_rotary_factor=0.5)),
    "command-r": ("CohereConfig", "CohereForCausalLM", dict(**DEC, logit_scale=0.5)),
    "arcee": ("ArceeConfig", "ArceeForCausalLM", dict(**DEC)),
    "seed_oss": ("SeedOssConfig", "SeedOssForCausalLM", dict(**DEC, head_dim=16)),
    "exaone4": ("Exaone4Config", "Exaone4ForCausalLM", dict(**DEC)),
    "ernie4_5": ("Ernie4_5Config", "Ernie4_5ForCausalLM", dict(**DEC)),
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM", dict(**DEC, sliding_window=16)),
    "glm4": ("Glm4Config", "Glm4ForCausalLM", dict(**DEC, head_dim=16)),
    "bloom": ("BloomConfig", "BloomForCausalLM", dict(hidden_size=64, n_layer=2, n_head=4)),
    "starcoder": ("GPTBigCodeConfig", "GPTBigCodeForCausalLM", dict(n_embd=64, n_layer=2, n_head=4, n_positions=512,
                                                                    multi_query=True)),
    "nemotron": ("NemotronConfig", "NemotronForCausalLM", dict(**DEC, partial_rotary_factor=0.5)),
}
# Phi-3 128k (microsoft/Phi-3-mini-128k-instruct): long rope, factors far from 1 so that a file without them,
# or with long and short swapped, is far off; 88 test tokens > the original 64 select the long factors
PHI3_LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 64,
                 "long_factor": [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0],
                 "short_factor": [1.0, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6]}
# variant -> (family, config class, model class, tiny config): configs of a family that take another path
VARIANTS: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "phi3-longrope": ("phi3", "Phi3Config", "Phi3ForCausalLM",
                      dict(**DEC, original_max_position_embeddings=64, rope_parameters=PHI3_LONGROPE)),
}
CASES = {**FAMILIES, **{name: v[1:] for name, v in VARIANTS.items()}}


def sdist_root() -> Path:
    """llama.cpp's converter, its ``conversion`` package and ``gguf-py``, from the sdist."""
    root = llama_cpp_root()
    if root is None:
        pytest.skip(f"llama.cpp's convert_hf_to_gguf.py comes from the llama-cpp-python sdist; get it with: {DOWNLOAD}")
    return root


# runs in a subprocess: llama.cpp's converter over several models, one status line each
_DRIVER = r"""
import json, runpy, sys, traceback
from pathlib import Path
root, jobs = Path(sys.argv[1]), json.loads(sys.argv[2])
sys.path[:0] = [str(root / "gguf-py"), str(root)]
import conversion
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
_get = conversion.get_model_class
def _with_bpe_vocab(name, mmproj=False):
    cls = _get(name, mmproj)
    cls.set_vocab = lambda self: self._set_vocab_gpt2()
    return cls
conversion.get_model_class = _with_bpe_vocab
for src, out in jobs:
    sys.argv = [str(root / "convert_hf_to_gguf.py"), src, "--outtype", "f16", "--outfile", out]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        status = "ok"
    except BaseException as e:
        status = (traceback.format_exception_only(type(e), e)[-1].strip() or repr(e))[:300]
    print(json.dumps({"src": src, "status": status}), flush=True)
"""


@pytest.fixture(scope="module")
def checkpoints(tok_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every family's tiny checkpoint, saved once for the module."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for fam, (cfg_name, cls_name, kw) in CASES.items():
        cfg = getattr(transformers, cfg_name)(**SMALL, **kw)
        cfg.architectures = [cls_name]
        out[fam] = save_random_lm(getattr(transformers, cls_name)(cfg), root / fam, tok_dir)
    return out


@pytest.fixture(scope="module")
def llama_cpp_files(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """llama.cpp's own f16 file of every checkpoint (or why its converter failed), in one process."""
    root = sdist_root()
    out_dir = tmp_path_factory.mktemp("llama_cpp_out")
    jobs = [(str(d), str(out_dir / f"{fam}.gguf")) for fam, d in checkpoints.items()]
    env = {**os.environ, "PYTHONPATH": "", "NO_LOCAL_GGUF": "1"}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(root), json.dumps(jobs)], capture_output=True,
                          text=True, timeout=600, env=env)
    status = {json.loads(line)["src"]: json.loads(line)["status"] for line in proc.stdout.splitlines()
              if line.startswith("{")}
    assert status, proc.stderr[-2000:]
    return {fam: (Path(out) if status.get(src) == "ok" else status.get(src, "did not run"))
            for (fam, _), (src, out) in zip(checkpoints.items(), jobs)}


_WRITTEN: dict[str, Path] = {}


def _write(fam: str, folder: Path, out: Path) -> Path:
    """edgekit's f16 file of a family's checkpoint (written once per session)."""
    if fam in _WRITTEN:
        return _WRITTEN[fam]
    from edgekit.converters.gguf.arch import arch_for
    from edgekit.converters.gguf.tokenizer import read_vocab
    from edgekit.converters.gguf.write import write_gguf
    from edgekit.types import Precision

    cfg = transformers.AutoConfig.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    arch = arch_for(type(model).__name__)
    assert arch.name == VARIANTS.get(fam, (fam,))[0]
    # not the family name: llama.cpp gives tokens of a model named "phi3" attributes by name
    write_gguf(out, model, arch, read_vocab(folder, SMALL["vocab_size"], cfg), Precision.FP16, "tiny", folder=folder)
    _WRITTEN[fam] = out
    return out


def test_every_family_is_registered_once_and_names_its_architecture() -> None:
    from edgekit.converters.gguf.families import FAMILIES as REGISTERED

    classes = [c for f in REGISTERED.values() for c in f.hf_classes]
    assert len(classes) == len(set(classes))
    assert set(FAMILIES) == set(REGISTERED) and len(FAMILIES) >= 20  # every registered family is tested
    for fam in REGISTERED.values():
        assert fam.arch_name == gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH[fam.arch]]


@pytest.mark.parametrize("fam", list(CASES))
def test_family_f16_matches_pytorch_in_llama_cpp(fam: str, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: pip install 'edgekit[llamacpp]'")
    import edgekit
    from edgekit.perplexity import top1_agrees

    folder = checkpoints[fam]
    path = _write(fam, folder, folder.parent / f"{fam}.gguf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = [1] + list(range(3, 90))
    with torch.inference_mode():
        expected = hf(input_ids=torch.tensor([ids])).logits[0].float().numpy().astype(np.float64)
    with edgekit.load(path, threads=2) as m:
        got = m.logits(ids).astype(np.float64)
    cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert top1_agrees(expected, got).all(), fam
    assert cos.mean() >= 0.9999 and cos.min() > 0.999, (fam, cos.mean(), cos.min())
    assert np.abs(expected).max() > 1.0  # peaked logits: top-1 means something


def _tensors(path: Path) -> dict[str, Any]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def _arch_keys(path: Path) -> dict[str, Any]:
    r = gguf.GGUFReader(path)
    arch = r.fields["general.architecture"].contents()
    return {k: f.contents() for k, f in r.fields.items() if k.startswith(arch + ".")}


@pytest.mark.parametrize("fam", list(CASES))
def test_family_tensors_are_identical_to_llama_cpps_converter(fam: str, checkpoints: dict[str, Path],
                                                              llama_cpp_files: dict[str, Any], tmp_path: Path) -> None:
    theirs = llama_cpp_files[fam]
    if not isinstance(theirs, Path):
        pytest.skip(f"llama.cpp's convert_hf_to_gguf.py fails on this config: {theirs}")
    ours = _write(fam, checkpoints[fam], checkpoints[fam].parent / f"{fam}.gguf")
    a, b = _tensors(ours), _tensors(theirs)
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = a[name], b[name]
        assert (x.tensor_type, list(x.shape)) == (y.tensor_type, list(y.shape)), name
        assert np.asarray(x.data).tobytes() == np.asarray(y.data).tobytes(), name
    ka, kb = _arch_keys(ours), _arch_keys(theirs)
    for key, value in kb.items():
        assert key in ka and ka[key] == pytest.approx(value), (key, ka.get(key), value)



def test_gpt2_keeps_positions_in_f32_and_files_carry_size_label_and_quant_version(
        checkpoints: dict[str, Path]) -> None:
    path = _write("gpt2", checkpoints["gpt2"], checkpoints["gpt2"].parent / "gpt2.gguf")
    r = gguf.GGUFReader(path)
    tensors = {t.name: t.tensor_type.name for t in r.tensors}
    assert tensors["position_embd.weight"] == "F32" and tensors["token_embd.weight"] == "F16"
    assert tensors["blk.0.attn_qkv.weight"] == "F16" and tensors["blk.0.attn_qkv.bias"] == "F32"
    n_params = sum(int(np.prod(t.shape)) for t in r.tensors)
    assert r.fields["general.size_label"].contents() == gguf.size_label(n_params, 0, 0, 0)
    assert r.fields["general.quantization_version"].contents() == 2


def test_safetensors_are_read_lazily_and_match_the_state_dict(tok_dir: Path, tmp_path: Path) -> None:
    """A bfloat16 checkpoint read from its memory-mapped file, tensor by tensor, gives the same
    file as the loaded model's state dict."""
    from edgekit.converters.gguf.arch import arch_for
    from edgekit.converters.gguf.tokenizer import read_vocab
    from edgekit.converters.gguf.write import write_gguf
    from edgekit.types import Precision

    cfg_name, cls_name, kw = FAMILIES["gemma2"]  # norm offsets are added in the checkpoint's precision
    cfg = getattr(transformers, cfg_name)(**SMALL, **kw)
    folder = save_random_lm(getattr(transformers, cls_name)(cfg).to(torch.bfloat16), tmp_path / "bf16", tok_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    vocab = read_vocab(folder, SMALL["vocab_size"], model.config)
    details = write_gguf(tmp_path / "lazy.gguf", model, arch_for(cls_name), vocab, Precision.FP16, "t", folder=folder)
    assert details["weights_from"].startswith("safetensors")
    eager = write_gguf(tmp_path / "eager.gguf", model, arch_for(cls_name), vocab, Precision.FP16, "t")
    assert eager["weights_from"] == "state dict"
    a, b = _tensors(tmp_path / "lazy.gguf"), _tensors(tmp_path / "eager.gguf")
    assert sorted(a) == sorted(b)
    for name in a:
        assert np.asarray(a[name].data).tobytes() == np.asarray(b[name].data).tobytes(), name


def test_a_smollm3_llama_cpp_would_run_differently_is_refused() -> None:
    from edgekit.converters.gguf.arch import hparam_values
    from edgekit.converters.gguf.families import FAMILIES as REGISTERED
    from edgekit.errors import SourceError

    cfg = transformers.SmolLM3Config(**SMALL, **{**DEC, "num_hidden_layers": 4})
    assert hparam_values(REGISTERED["smollm3"], cfg)["smollm3.block_count"] == 4
    cfg.no_rope_layer_interval = 2
    with pytest.raises(SourceError, match="every 4th"):
        hparam_values(REGISTERED["smollm3"], cfg)
