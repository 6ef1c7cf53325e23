"""Read a GGUF file's header without llama.cpp or the ``gguf`` package: metadata, tensor table,
and the checks that turn a truncated file or one missing required keys into an
:class:`ArtifactError` before llama.cpp sees it (llama.cpp would only log, or abort).

Layout (GGUF v2/v3): magic ``GGUF``, version, tensor count, key/value count, the key/values,
the tensor infos (name, dims, ggml type, offset), padding to ``general.alignment``, the data.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from edgekit.errors import ArtifactError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF value type -> struct format (scalars); 8 is a string, 9 an array
SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                           10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9

# ggml type id -> (name, elements per block, bytes per block), as in ggml.h / gguf-py's
# GGML_QUANT_SIZES (tests/test_gguf.py checks this table against the gguf package's)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}

# keys llama.cpp needs in every file; "{arch}" is general.architecture
REQUIRED_KEYS: tuple[str, ...] = (
    "general.architecture", "{arch}.context_length", "{arch}.embedding_length",
    "{arch}.block_count", "{arch}.attention.head_count", "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
)
# keys llama.cpp also needs for some architectures (it refuses the file without them)
REQUIRED_BY_ARCH: dict[str, tuple[str, ...]] = {
    "llama": ("{arch}.feed_forward_length", "{arch}.attention.layer_norm_rms_epsilon"),  # Llama, SmolLM2
    "qwen2": ("{arch}.feed_forward_length", "{arch}.attention.layer_norm_rms_epsilon"),  # Qwen2
    "gpt2": ("{arch}.attention.layer_norm_epsilon",),  # GPT-2
}


@dataclass(frozen=True)
class ArrayValue:
    """An array value: its element type and length (the elements are not kept)."""

    type: int
    count: int
    head: tuple[Any, ...] = ()  # the first elements, for small arrays of scalars or strings


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: the fastest-varying dimension first
    type: int
    offset: int  # from the start of the data section

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.type, (f"type{self.type}", 1, 1))[0]

    @property
    def nbytes(self) -> int:
        _, block, size = GGML_TYPES[self.type]
        n = 1
        for d in self.shape:
            n *= d
        return n // block * size


@dataclass
class GgufHeader:
    """Metadata and tensor table of a GGUF file."""

    path: Path
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: list[TensorInfo] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get("general.architecture")
        return arch if isinstance(arch, str) else None

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value; ``{arch}`` in ``key`` becomes the architecture name."""
        return self.metadata.get(key.format(arch=self.architecture or ""), default)

    def missing_keys(self) -> list[str]:
        arch = self.architecture or ""
        wanted = REQUIRED_KEYS + REQUIRED_BY_ARCH.get(arch, ())
        return [k.format(arch=arch) for k in wanted if k.format(arch=arch) not in self.metadata]

    def tensor_types(self) -> dict[str, int]:
        """How many tensors of each ggml type the file holds."""
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.type_name] = counts.get(t.type_name, 0) + 1
        return counts


class _Reader:
    def __init__(self, f: BinaryIO, path: Path) -> None:
        self.f, self.path = f, path

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise _Truncated()
        return data

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > 1 << 32:
            raise _Corrupt(f"a string of {n} bytes")
        return self.take(n).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.scalar("<Q")
        if n > 1 << 32:
            raise _Corrupt(f"a string of {n} bytes")
        self.f.seek(n, 1)  # past the end: the next read or the size check fails

    def value(self, vtype: int) -> Any:
        if vtype in SCALARS:
            return self.scalar(SCALARS[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            etype, count = self.scalar("<I"), self.scalar("<Q")
            if count > 1 << 31:
                raise _Corrupt(f"an array of {count} elements")
            head: list[Any] = []
            if etype == STRING:
                for i in range(count):
                    if i < 8:
                        head.append(self.string())
                    else:
                        self.skip_string()
            elif etype in SCALARS:
                size = struct.calcsize(SCALARS[etype])
                keep = min(count, 8)
                head = [self.scalar(SCALARS[etype]) for _ in range(keep)]
                self.f.seek(size * (count - keep), 1)  # past the end: the next read or the size check fails
            else:
                raise _Corrupt(f"an array of value type {etype}")
            return ArrayValue(etype, count, tuple(head))
        raise _Corrupt(f"value type {vtype}")


class _Truncated(Exception):
    pass


class _Corrupt(Exception):
    pass


def read_header(path: str | Path) -> GgufHeader:
    """Parse the header of ``path`` and check that every tensor's data lies inside the file.

    Raises :class:`ArtifactError` for a file that is not GGUF, truncated, or corrupt.
    """
    path = Path(path)
    size = path.stat().st_size
    fix = "the file is incomplete or damaged: copy it again, or re-run `edgekit convert`"
    try:
        with open(path, "rb") as f:
            r = _Reader(f, path)
            magic = r.take(4)
            if magic != MAGIC:
                raise ArtifactError(f"{path.name} is not a GGUF file (starts with {magic!r}, not b'GGUF')",
                                    fix="pass a .gguf model written by edgekit or llama.cpp")
            version = r.scalar("<I")
            if version not in (2, 3):
                raise ArtifactError(f"{path.name} is GGUF version {version}; llama.cpp reads versions 2 and 3",
                                    fix="re-convert the model with a current converter")
            n_tensors, n_kv = r.scalar("<Q"), r.scalar("<Q")
            if n_tensors > 1 << 24 or n_kv > 1 << 24:
                raise _Corrupt(f"{n_tensors} tensors and {n_kv} keys")
            header = GgufHeader(path, version, file_size=size)
            for _ in range(n_kv):
                key = r.string()
                header.metadata[key] = r.value(r.scalar("<I"))
            for _ in range(n_tensors):
                name = r.string()
                n_dims = r.scalar("<I")
                if n_dims > 8:
                    raise _Corrupt(f"tensor {name!r} with {n_dims} dimensions")
                shape = tuple(r.scalar("<Q") for _ in range(n_dims))
                ttype, offset = r.scalar("<I"), r.scalar("<Q")
                if ttype not in GGML_TYPES:
                    raise ArtifactError(f"{path.name}: tensor {name!r} has ggml type {ttype}, unknown to edgekit",
                                        fix="upgrade edgekit, or re-quantize the model to a common type")
                header.tensors.append(TensorInfo(name, shape, ttype, offset))
            align = header.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
            align = align if isinstance(align, int) and align > 0 else DEFAULT_ALIGNMENT
            pos = f.tell()
            header.data_offset = pos + (-pos % align)
    except _Truncated:
        raise ArtifactError(f"{path.name} is truncated: it ends inside its header ({size} bytes)", fix=fix) from None
    except _Corrupt as e:
        raise ArtifactError(f"{path.name} is corrupt: its header declares {e}", fix=fix) from None
    end = max((header.data_offset + t.offset + t.nbytes for t in header.tensors), default=header.data_offset)
    if end > size:
        raise ArtifactError(f"{path.name} is truncated: its tensors need {end:,} bytes, the file has {size:,}",
                            fix=fix)
    return header
