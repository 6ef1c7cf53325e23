"""A Hugging Face model directory: ``config.json`` plus safetensors weights, loaded offline.

The task comes from ``config.architectures``; each row of ``TASKS`` is the class-name suffix,
the task name and the output the artifact exposes.
"""

from __future__ import annotations

import tempfile
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import SourceError
from edgekit.fsutil import sha256_file
from edgekit.sources import ModelSource, hf_records

# architecture suffix -> (task, exported output)
TASKS: dict[str, tuple[str, str]] = {
    "ForSequenceClassification": ("text-classification", "logits"),
    "ForCausalLM": ("text-generation", "logits"),
    "LMHeadModel": ("text-generation", "logits"),  # GPT2LMHeadModel; before "Model", which it also ends with
    "ForImageClassification": ("image-classification", "logits"),
    "ForTokenClassification": ("token-classification", "logits"),
    "ForMaskedLM": ("fill-mask", "logits"),
    "Model": ("feature-extraction", "last_hidden_state"),
}
IMAGE_TASKS = {"image-classification"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "tokenizer.model")
PREPROCESSOR_FILES = ("preprocessor_config.json",)
EXAMPLE_TEXTS = ("edgekit exports this sentence to every format.",
                 "A second, somewhat longer example sentence keeps the sequence axis dynamic.")


def _task_for(architecture: str | None) -> tuple[str, str]:
    if architecture is None:
        return TASKS["Model"]
    for suffix, task in TASKS.items():
        if architecture.endswith(suffix):
            return task
    known = ", ".join(f"*{s}" for s in TASKS)
    raise SourceError(f"architecture {architecture!r} maps to no task edgekit knows",
                      fix=f"supported architecture kinds: {known}")


def _weights(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = sorted(path.glob("*.bin")) + sorted(path.glob("*.pt"))
        hint = (f"found only pickled weights ({pickled[0].name}); re-save the model with "
                "model.save_pretrained(dir, safe_serialization=True)") if pickled else \
            "save the model with model.save_pretrained(dir)"
        raise SourceError(f"no safetensors weights in {path}", fix=hint)
    return [{"file": f.name, "sha256": sha256_file(f), "bytes": f.stat().st_size} for f in files]


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """The library never prints: no "Loading weights" progress bar, only transformers' errors."""
    from transformers.utils import logging as hf_logging

    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _load_model(path: Path, architecture: str | None) -> Any:
    import transformers

    cls = getattr(transformers, architecture, None) if architecture else None
    cls = cls or transformers.AutoModel
    try:
        with _quiet_transformers():
            return cls.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except Exception as e:  # transformers raises many types; all mean "cannot load this dir"
        raise SourceError(f"transformers could not load {path}: {e}",
                          fix="check config.json and the safetensors files in the directory") from e


def _tokenizer(path: Path) -> Any | None:
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise SourceError(f"the tokenizer in {path} could not be loaded: {e}",
                          fix="check tokenizer.json / tokenizer_config.json") from e


def from_hf_dir(path: Path, *, seq_len: int | None = None) -> ModelSource:
    """Load a Hugging Face directory offline and describe it as a :class:`ModelSource`."""
    from edgekit.deps import require

    require("transformers", "convert", "loading Hugging Face models")
    if not (path / "config.json").is_file():
        raise SourceError(f"{path} has no config.json, so it is not a Hugging Face model directory",
                          fix="pass the directory written by model.save_pretrained()")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    architecture = (config.architectures or [None])[0]
    task, output = _task_for(architecture)
    weights = _weights(path)
    model = _load_model(path, architecture)
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    preprocess: dict[str, Any] = {}
    id2label = getattr(config, "id2label", None)
    if task.endswith("classification") and id2label:
        preprocess["id2label"] = {str(k): v for k, v in id2label.items()}
    assets = [path / f for f in TOKENIZER_FILES + PREPROCESSOR_FILES if (path / f).is_file()]
    tokenizer = None if task in IMAGE_TASKS else _tokenizer(path)
    if task in IMAGE_TASKS:
        c, s = getattr(config, "num_channels", 3), getattr(config, "image_size", 224)
        examples = {"pixel_values": np.random.default_rng(0).standard_normal((2, c, s, s))
                    .astype(np.float32)}
        axes = {"pixel_values": {0: "batch"}}
    else:
        examples = _text_examples(model, config, tokenizer, seq_len)
        axes = {n: {0: "batch", 1: "sequence"} for n in examples}
        preprocess["max_length"] = seq_len or hf_records.max_seq_length(path) or 128
    tokenize = _make_tokenize(tokenizer, list(examples), seq_len or 128) if tokenizer else None
    scratch = None
    if tokenizer is not None:  # the runtime pipelines read tokenizer.json (the tokenizers package)
        preprocess["tokenizer"] = "tokenizer.json"
        if not (path / "tokenizer.json").is_file():
            scratch = tempfile.TemporaryDirectory(prefix="edgekit-tokenizer-")
            assets.append(hf_records.write_tokenizer_json(tokenizer, Path(scratch.name)))
    if task == "feature-extraction":
        preprocess.update(pooling=hf_records.pooling(path), normalize=hf_records.normalize(path))
        assets += hf_records.st_assets(path)
    if task in IMAGE_TASKS and (image := hf_records.image_spec(path, config)) is not None:
        preprocess["image"] = image
    from edgekit.sources.module import from_module

    source = from_module(
        model, examples, dynamic_axes=axes, name=path.name, kind="huggingface",
        output_keys=[output], output_names=[output], task=task, location=str(path.resolve()),
        weights=weights, assets=assets, preprocess=preprocess, tokenize=tokenize,
    )
    if scratch is not None:  # the written tokenizer.json lives as long as the source
        weakref.finalize(source, scratch.cleanup)
    return source


def _text_examples(model: Any, config: Any, tokenizer: Any, seq_len: int | None
                   ) -> dict[str, np.ndarray]:
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    if tokenizer is not None:
        enc = tokenizer(list(EXAMPLE_TEXTS), padding=True, truncation=True,
                        max_length=seq_len or 128, return_tensors="np")
        names = [n for n in tokenizer.model_input_names if n in accepted and n in enc]
        return {n: enc[n].astype(np.int64) for n in names}
    vocab = int(getattr(config, "vocab_size", 1000))
    length = min(seq_len or 16, 16)
    ids = np.random.default_rng(0).integers(0, vocab, size=(2, length), dtype=np.int64)
    examples = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in accepted and getattr(config, "type_vocab_size", 0) > 1:
        examples["token_type_ids"] = np.zeros_like(ids)
    return examples


def _make_tokenize(tokenizer: Any, names: Sequence[str], max_length: int) -> Any:
    def tokenize(texts: Sequence[str]) -> dict[str, np.ndarray]:
        enc = tokenizer(list(texts), padding="max_length", truncation=True,
                        max_length=max_length, return_tensors="np")
        return {n: enc[n].astype(np.int64) for n in names}

    return tokenize
