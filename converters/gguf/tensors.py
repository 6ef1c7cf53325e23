"""Where the GGUF writer reads weights from: the checkpoint's safetensors files, memory-mapped and
read one tensor at a time (as llama.cpp's converter does), else the loaded model's state dict.

Reading the files rather than the model keeps the writer's own footprint to about one tensor: the
pages of a memory-mapped file are the page cache's, dropped as soon as the tensor is written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class TensorSource:
    """Name -> tensor, with shapes known before any data is read."""

    def names(self) -> list[str]:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def get(self, name: str) -> Any:
        """The tensor as a torch tensor (a fresh copy for files, the parameter itself for a model)."""
        raise NotImplementedError

    def same_storage(self, a: str, b: str) -> bool:
        return False

    def __contains__(self, name: str) -> bool:
        return name in set(self.names())

    def close(self) -> None:
        pass

    kind = "state dict"


class StateDictSource(TensorSource):
    """The loaded model's own parameters (a checkpoint without safetensors files)."""

    kind = "state dict"

    def __init__(self, model: Any) -> None:
        self._state = model.state_dict()

    def names(self) -> list[str]:
        return list(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(s) for s in self._state[name].shape)

    def get(self, name: str) -> Any:
        return self._state[name].detach()

    def same_storage(self, a: str, b: str) -> bool:
        return a in self._state and b in self._state and self._state[a].data_ptr() == self._state[b].data_ptr()

    def __contains__(self, name: str) -> bool:
        return name in self._state


class SafetensorsSource(TensorSource):
    """``*.safetensors`` of a Hugging Face directory (sharded or not), memory-mapped."""

    kind = "safetensors (memory-mapped, one tensor at a time)"

    def __init__(self, files: list[Path]) -> None:
        from safetensors import safe_open

        self._handles = [safe_open(str(f), framework="pt") for f in files]
        self._where: dict[str, Any] = {}
        for h in self._handles:
            for key in h.keys():
                self._where[key] = h

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(s) for s in self._where[name].get_slice(name).get_shape())

    def get(self, name: str) -> Any:
        return self._where[name].get_tensor(name)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def close(self) -> None:
        self._handles.clear()
        self._where.clear()


def safetensors_files(folder: Path | None) -> list[Path]:
    """The checkpoint's safetensors files (from the shard index when there is one)."""
    if folder is None:
        return []
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
        return [folder / s for s in shards if (folder / s).is_file()]
    single = folder / "model.safetensors"
    return [single] if single.is_file() else []


def open_source(model: Any, folder: Path | None) -> TensorSource:
    """The safetensors files when they hold every parameter the model has, else the model."""
    files = safetensors_files(folder)
    if files:
        src = SafetensorsSource(files)
        wanted = {n for n, _ in model.named_parameters()} if model is not None else set()
        tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        missing = {n for n in wanted if n not in src and not (tied and n.endswith("lm_head.weight"))}
        if not missing:
            return src
        src.close()
    return StateDictSource(model)


