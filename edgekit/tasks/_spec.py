"""The ``preprocess`` record a user gives ``edgekit.convert(..., preprocess={...})``, validated.

For an ``nn.Module`` or factory source, which carries no tokenizer or processor files of its own:
``{"id2label": [...] or {...}, "image": {...}}`` for an image classifier,
``{"tokenizer": "path/to/tokenizer.json", "max_length": 128, "id2label": [...]}`` for a text
classifier, ``{"tokenizer": ..., "pooling": "mean", "normalize": True}`` for an embedding model.
A tokenizer path becomes an asset copied beside the artifact.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError
from edgekit.tasks._base import ACTIVATIONS
from edgekit.tasks._image import ImageSpec

KEYS = ("id2label", "tokenizer", "max_length", "pooling", "normalize", "image", "activation")


def check_preprocess(preprocess: Mapping[str, Any]) -> tuple[dict[str, Any], list[Path]]:
    """(the manifest record, the files to copy into ``<name>.assets/``)."""
    from edgekit.tasks.embed import POOLING

    unknown = sorted(set(preprocess) - set(KEYS))
    if unknown:
        raise ConfigError(f"preprocess has unknown key(s) {unknown}", fix=f"known keys: {', '.join(KEYS)}")
    out: dict[str, Any] = {}
    assets: list[Path] = []
    if "id2label" in preprocess:
        labels = preprocess["id2label"]
        pairs = labels.items() if isinstance(labels, Mapping) else enumerate(labels)
        out["id2label"] = {str(k): str(v) for k, v in pairs}
    if preprocess.get("tokenizer") is not None:
        path = Path(preprocess["tokenizer"]).expanduser()
        if not path.is_file():
            raise ConfigError(f"preprocess tokenizer {path} is not a file",
                              fix="give the path of a tokenizer.json (tokenizers' Tokenizer.save())")
        out["tokenizer"] = path.name
        assets.append(path)
    if preprocess.get("max_length") is not None:
        length = preprocess["max_length"]
        if not isinstance(length, int) or length < 1:
            raise ConfigError(f"preprocess max_length must be a positive integer, got {length!r}",
                              fix="give e.g. max_length=128")
        out["max_length"] = length
    if "pooling" in preprocess:
        if preprocess["pooling"] not in POOLING:
            raise ConfigError(f"preprocess pooling {preprocess['pooling']!r} is unknown",
                              fix=f"use one of: {', '.join(POOLING)}")
        out["pooling"] = preprocess["pooling"]
    if "normalize" in preprocess:
        out["normalize"] = bool(preprocess["normalize"])
    if "activation" in preprocess:
        if preprocess["activation"] not in ACTIVATIONS:
            raise ConfigError(f"preprocess activation {preprocess['activation']!r} is unknown",
                              fix=f"use one of: {', '.join(ACTIVATIONS)}")
        out["activation"] = preprocess["activation"]
    if preprocess.get("image") is not None:
        image = preprocess["image"]
        spec = image if isinstance(image, ImageSpec) else ImageSpec.parse(image)
        out["image"] = spec.to_dict()
    return out, assets
