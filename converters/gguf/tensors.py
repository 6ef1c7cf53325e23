"""Where the GGUF writer reads weights from: the checkpoint's safetensors files, memory-mapped and
read one tensor at a time (as llama.cpp's converter does), else the loaded model's state dict.

Reading the files rather than the model keeps the writer's own footprint to about one tensor: the
pages of a memory-mapped file are the page cache's, dropped as soon as the tensor is written.
"""

from __future__ import annotations

import json
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

    def release(self, name: str) -> None:
        """The writer is done with ``name``: drop what reading it keeps resident."""

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
    """``*.safetensors`` of a Hugging Face directory (sharded or not), memory-mapped.

    A tensor is copied out of the mapping when asked for, and its pages are then dropped
    (``MADV_DONTNEED``): a mapped page counts in resident memory until it is dropped, so without it
    the writer's footprint would grow to the size of the checkpoint."""

    kind = "safetensors (memory-mapped, one tensor at a time)"

    def __init__(self, files: list[Path]) -> None:
        self._maps: list[Any] = []
        self._where: dict[str, tuple[Any, int, int, str, tuple[int, ...]]] = {}
        for path in files:
            self._index(path)

    def _index(self, path: Path) -> None:
        import mmap
        import struct

        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._maps.append(mm)
        (size,) = struct.unpack("<Q", mm[:8])
        header = json.loads(mm[8:8 + size])
        for key, info in header.items():
            if key == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            self._where[key] = (mm, 8 + size + begin, 8 + size + end, info["dtype"],
                                tuple(int(s) for s in info["shape"]))

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name][4]

    def get(self, name: str) -> Any:
        """A read-only view of the mapped bytes (no copy); :meth:`release` drops its pages."""
        import warnings

        import torch

        mm, begin, end, dtype, shape = self._where[name]
        if dtype not in _TORCH_DTYPES:
            from edgekit.errors import ExportError

            raise ExportError(f"tensor {name!r} is stored as {dtype}, which the GGUF writer does not read",
                              fix="save the model in float32, float16 or bfloat16")
        torch_dtype = getattr(torch, _TORCH_DTYPES[dtype])
        if end == begin:
            return torch.empty(shape, dtype=torch_dtype)
        with warnings.catch_warnings():  # the mapping is read-only and the writer never writes to it
            warnings.simplefilter("ignore", UserWarning)
            view = torch.frombuffer(mm, dtype=torch_dtype, count=(end - begin) // torch_dtype.itemsize,
                                    offset=begin)
        return view.reshape(shape)

    def release(self, name: str) -> None:
        import mmap

        mm, begin, end, _, _ = self._where[name]
        start = begin - begin % mmap.PAGESIZE
        if hasattr(mm, "madvise") and end > start:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def close(self) -> None:
        self._where.clear()
        for mm in self._maps:
            try:
                mm.close()
            except BufferError:  # a caller still holds a view; the mapping goes with it
                pass
        self._maps.clear()


# safetensors dtype -> torch dtype name
_TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                 "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


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
    """The safetensors files when they hold every parameter the model has, else the model (a
    config alone, without a model, must come with the files)."""
    files = safetensors_files(folder)
    if files:
        src = SafetensorsSource(files)
        wanted = {n for n, _ in model.named_parameters()} if hasattr(model, "named_parameters") else set()
        tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
        missing = {n for n in wanted if n not in src and not (tied and n.endswith("lm_head.weight"))}
        if not missing:
            return src
        src.close()
    return StateDictSource(model)


