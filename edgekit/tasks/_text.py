"""Text to model inputs with the artifact's own tokenizer (``tokenizers``, never transformers).

Sequence length: an artifact with a fixed sequence axis gets every row padded to it; one with a
dynamic axis gets each batch padded to its longest row. Either way rows are truncated to the
manifest's ``max_length``, and to the size the artifact was built for when its graph is fixed
underneath (a TFLite file, whose runtime pads shorter rows itself where that was checked safe).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import ArtifactError, InputError
from edgekit.inputs import check_unicode

if TYPE_CHECKING:
    from edgekit.tasks._base import Pipeline

# model input name -> the tokenizers.Encoding attribute that fills it
INPUT_FIELDS: dict[str, str] = {"input_ids": "ids", "attention_mask": "attention_mask",
                                "token_type_ids": "type_ids"}
DEFAULT_MAX_LENGTH = 512
PAD_TOKENS = ("[PAD]", "<pad>", "<|pad|>", "<unk>")  # tried in order when nothing names the pad token


class TextEncoder:
    """Tokenizes batches of text into the feed a text artifact takes."""

    def __init__(self, pipeline: Pipeline) -> None:
        from edgekit.deps import require

        model = pipeline.model
        require("tokenizers", model.extra, "text pipelines")
        from tokenizers import Tokenizer

        path = pipeline.asset("tokenizer", "tokenizer", "convert from a Hugging Face directory that holds "
                              "tokenizer.json or vocab.txt, or pass convert(..., preprocess={'tokenizer': "
                              "'path/to/tokenizer.json'})")
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for unreadable files
            raise ArtifactError(f"the tokenizer {path} could not be read: {e}",
                                fix="copy the assets folder again, or re-run the conversion") from e
        self.names = model.signature.input_names
        unknown = [n for n in self.names if n not in INPUT_FIELDS]
        if unknown:
            raise ArtifactError(f"{model.path.name} takes input(s) {unknown} that a tokenizer does not produce",
                                fix=f"a text pipeline fills: {', '.join(INPUT_FIELDS)}; call run() with arrays")
        self.fixed, self.max_length = self._lengths(pipeline)
        self.pad_id, self.pad_token = self._pad(pipeline)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token,
                                      length=self.max_length if self.fixed else None)

    def _lengths(self, pipeline: Pipeline) -> tuple[bool, int]:
        """(whether every row must be padded to the limit, the limit)."""
        model = pipeline.model
        spec = model.signature.inputs[0]
        if spec.rank < 2:
            raise ArtifactError(f"{model.path.name}: input {spec.name!r} has rank {spec.rank}, a token input "
                                "has a batch and a sequence axis", fix="call run() with arrays")
        wanted = int(pipeline.spec.get("max_length") or DEFAULT_MAX_LENGTH)
        if isinstance(spec.shape[1], int) and spec.shape[1] > 0:
            return True, spec.shape[1]
        static = (model.manifest.conversion.get("static_shapes") or {}).get(spec.name) if model.manifest else None
        if static and len(static) > 1:  # a graph fixed underneath a padding runtime (TFLite)
            wanted = min(wanted, int(static[1]))
        return False, wanted

    def _pad(self, pipeline: Pipeline) -> tuple[int, str]:
        tok = self.tokenizer
        if tok.padding:  # tokenizer.json's own padding settings
            return int(tok.padding["pad_id"]), str(tok.padding["pad_token"])
        config = pipeline.model.path.parent / str(pipeline.spec.get("assets_dir") or "") / "tokenizer_config.json"
        names: list[str] = []
        if config.is_file():
            try:
                pad = json.loads(config.read_text(encoding="utf-8")).get("pad_token")
            except (OSError, json.JSONDecodeError):
                pad = None
            pad = pad.get("content") if isinstance(pad, dict) else pad
            names += [pad] if isinstance(pad, str) else []
        for name in names + list(PAD_TOKENS):
            idx = tok.token_to_id(name)
            if idx is not None:
                return int(idx), name
        return 0, "[PAD]"

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token arrays (int64, one row per text) for the model's inputs."""
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise InputError(f"text pipelines take strings; item {bad[0]} is a {type(texts[bad[0]]).__name__}",
                             fix="pass a string or a list of strings")
        check_unicode(texts)
        encodings = self.tokenizer.encode_batch(list(texts))
        return {name: np.asarray([getattr(e, INPUT_FIELDS[name]) for e in encodings], dtype=np.int64)
                for name in self.names}

    def describe(self) -> dict[str, Any]:
        return {"max_length": self.max_length, "padding": "max_length" if self.fixed else "longest",
                "pad_id": self.pad_id}

