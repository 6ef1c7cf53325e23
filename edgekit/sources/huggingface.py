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
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise SourceError(f"the tokenizer in {path} could not be loaded: {e}",
                          fix="check tokenizer.json / tokenizer_config.json") from e
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # GPT-2, Llama, Mistral ship without one; their users pad with EOS (masked out), as here
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def from_hf_dir(path: Path, *, seq_len: int | None = None, example_inputs: Any = None) -> ModelSource:
    """Load a Hugging Face directory offline and describe it as a :class:`ModelSource`.

    ``example_inputs`` (``--shape pixel_values=1x3x32x32``) sets an image model's example size;
    else ``config.image_size``, else 224. Height and width stay dynamic where the network runs
    at other sizes (fully convolutional with adaptive pooling)."""
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
        examples, axes = _image_examples(model, config, example_inputs)
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
    # segment ids matter when the model takes them and has more than one segment type, whatever the
    # tokenizer lists (many pair classifiers' tokenizer_config.json leave them out): as Optimum does
    segments = "token_type_ids" in accepted and getattr(config, "type_vocab_size", 0) > 1
    if tokenizer is not None:
        texts = list(EXAMPLE_TEXTS)
        if tokenizer.pad_token is None:  # no pad and no EOS: equal lengths, so nothing needs padding
            shortest = min(len(tokenizer(t)["input_ids"]) for t in texts)
            enc = tokenizer(texts, truncation=True, max_length=min(seq_len or 128, shortest),
                            return_token_type_ids=segments or None, return_tensors="np")
        else:
            enc = tokenizer(texts, padding=True, truncation=True, max_length=seq_len or 128,
                            return_token_type_ids=segments or None, return_tensors="np")
        names = [n for n in tokenizer.model_input_names if n in accepted and n in enc]
        if segments and "token_type_ids" not in names:
            names.append("token_type_ids")
        return {n: enc[n].astype(np.int64) for n in names}
    vocab = int(getattr(config, "vocab_size", 1000))
    length = min(seq_len or 16, 16)
    ids = np.random.default_rng(0).integers(0, vocab, size=(2, length), dtype=np.int64)
    examples = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if segments:
        examples["token_type_ids"] = np.zeros_like(ids)
    return examples


def _make_tokenize(tokenizer: Any, names: Sequence[str], max_length: int) -> Any:
    segments = "token_type_ids" in names or None
    pad = "max_length" if tokenizer.pad_token is not None else False

    def tokenize(texts: Sequence[str]) -> dict[str, np.ndarray]:
        if pad:
            enc = tokenizer(list(texts), padding=pad, truncation=True, max_length=max_length,
                            return_token_type_ids=segments, return_tensors="np")
            return {n: enc[n].astype(np.int64) for n in names}
        # no pad token and no EOS: cut every sample to the shortest, which needs no padding
        rows = [tokenizer(t, truncation=True, max_length=max_length, return_token_type_ids=segments)
                for t in texts]
        size = min(len(r["input_ids"]) for r in rows)
        return {n: np.asarray([r[n][:size] for r in rows], dtype=np.int64) for n in names}

    return tokenize


def _image_examples(model: Any, config: Any, given: Any) -> tuple[dict[str, np.ndarray],
                                                                    dict[str, dict[int, str]]]:
    """Example pixels at the ``--shape`` size, else ``config.image_size``, else 224; height and width
    dynamic when the network gives same-shaped outputs at two other sizes (adaptive pooling)."""
    import torch

    c = int(getattr(config, "num_channels", 3))
    shape = None
    if isinstance(given, dict) and given.get("pixel_values") is not None:
        shape = tuple(np.asarray(given["pixel_values"]).shape)
        if len(shape) != 4 or shape[1] != c:
            raise SourceError(f"--shape pixel_values={'x'.join(map(str, shape))} does not fit an image model "
                              f"with {c} channels", fix=f"write --shape pixel_values=1x{c}xHEIGHTxWIDTH")
    size = getattr(config, "image_size", None) or 224
    size = size if isinstance(size, (list, tuple)) else (size, size)
    h, w = (shape[2], shape[3]) if shape else (int(size[0]), int(size[1]))
    examples = {"pixel_values": np.random.default_rng(0).standard_normal((2, c, h, w)).astype(np.float32)}
    axes: dict[str, dict[int, str]] = {"pixel_values": {0: "batch"}}

    def out_shape(ph: int, pw: int) -> tuple | None:
        try:
            with torch.inference_mode():
                out = model(torch.zeros(1, c, ph, pw))
        except Exception:  # the network fixes its input size (e.g. a ViT position table)
            return None
        first = out[0] if isinstance(out, (tuple, list)) else next(iter(out.values()))
        return tuple(first.shape)

    base = out_shape(h, w)
    if base is not None and out_shape(h + 16, w + 32) == base and out_shape(max(h // 2, 8), w) == base:
        axes["pixel_values"].update({2: "height", 3: "width"})
    return examples, axes
