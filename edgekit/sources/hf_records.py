"""What the task pipelines need, read from a Hugging Face model directory at conversion time.

- text models: ``tokenizer.json`` (written from the loaded fast tokenizer when the directory has
  only ``vocab.txt``/``spiece.model``), ``max_length`` (sentence-transformers' ``max_seq_length``
  when there is one);
- feature extraction: ``pooling`` from a sentence-transformers ``1_Pooling/config.json`` (mean
  when absent) and ``normalize`` (a ``Normalize`` module in ``modules.json``; True without one);
- image classification: ``image`` from ``preprocessor_config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgekit.errors import SourceError
from edgekit.tasks import ImageSpec, from_hf_preprocessor

# sentence-transformers files copied into the artifact's assets beside the tokenizer
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
# 1_Pooling/config.json flag -> the pooling it names, first set flag wins
POOLING_FLAGS: dict[str, str] = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                                 "pooling_mode_max_tokens": "max"}


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SourceError(f"{path} is unreadable: {e}", fix="check the file, or remove it") from e


def _modules(path: Path) -> list[dict[str, Any]] | None:
    file = path / "modules.json"
    data = _json(file) if file.is_file() else None
    return data if isinstance(data, list) else None


def pooling(path: Path) -> str:
    """The pooling the source model defines (sentence-transformers), else mean."""
    modules = _modules(path) or []
    folder = next((m.get("path") for m in modules if str(m.get("type", "")).endswith(".Pooling")), "1_Pooling")
    config = path / str(folder or "1_Pooling") / "config.json"
    if not config.is_file():
        return "mean"
    flags = _json(config)
    chosen = [name for flag, name in POOLING_FLAGS.items() if flags.get(flag)]
    if not chosen:
        set_flags = sorted(k for k, v in flags.items() if k.startswith("pooling_mode") and v)
        raise SourceError(f"{config} asks for pooling {set_flags}, which edgekit's embed() does not implement",
                          fix=f"edgekit pools with: {', '.join(POOLING_FLAGS)}")
    return chosen[0]


def normalize(path: Path) -> bool:
    """Whether the source model L2-normalises its sentence vectors (True unless a
    sentence-transformers ``modules.json`` has no Normalize module)."""
    modules = _modules(path)
    if modules is None:
        return True
    return any(str(m.get("type", "")).endswith(".Normalize") for m in modules)


def max_seq_length(path: Path) -> int | None:
    file = path / "sentence_bert_config.json"
    value = _json(file).get("max_seq_length") if file.is_file() else None
    return int(value) if value else None


def st_assets(path: Path) -> list[Path]:
    return [path / f for f in ST_FILES if (path / f).is_file()]


def write_tokenizer_json(tokenizer: Any, folder: Path) -> Path:
    """Save a transformers fast tokenizer (converted from vocab.txt etc. on load) as tokenizer.json."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SourceError("the tokenizer has no tokenizer.json and no fast (Rust) version to write one from",
                          fix="save the tokenizer with a fast tokenizer class (AutoTokenizer(use_fast=True)"
                          ".save_pretrained(dir)) so the directory holds tokenizer.json")
    out = folder / "tokenizer.json"
    backend.save(str(out))
    return out


def image_spec(path: Path, config: Any) -> dict[str, Any] | None:
    """``preprocess["image"]`` from ``preprocessor_config.json``, or None when there is none."""
    file = path / "preprocessor_config.json"
    if not file.is_file():
        return None
    channels = int(getattr(config, "num_channels", 3) or 3)
    spec: ImageSpec = from_hf_preprocessor(_json(file), channels, int(getattr(config, "image_size", 224) or 224))
    return spec.to_dict()
