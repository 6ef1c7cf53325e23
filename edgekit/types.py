"""Closed vocabularies (formats, precisions, devices) and tensor signatures.

Strings become enums at the API/CLI boundary through :meth:`parse`, which names the valid values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from edgekit.errors import ConfigError

E = TypeVar("E", bound="_Vocabulary")


class _Vocabulary(StrEnum):
    @classmethod
    def parse(cls: type[E], value: str | E) -> E:
        """Turn a user string into a member, or raise :class:`ConfigError` listing the valid ones."""
        if isinstance(value, cls):
            return value
        text = str(value).strip().lower()
        text = ALIASES.get(cls.__name__, {}).get(text, text)
        for member in cls:
            if text == member.value:
                return member
        valid = ", ".join(m.value for m in cls)
        raise ConfigError(
            f"unknown {cls.__name__.lower()} {value!r}", fix=f"use one of: {valid}"
        )

    @classmethod
    def parse_list(cls: type[E], values: str | Iterable[str | E]) -> list[E]:
        """Parse ``"a,b"`` or an iterable into members, keeping order and dropping repeats."""
        items = values.split(",") if isinstance(values, str) else list(values)
        out: list[E] = []
        for item in items:
            if isinstance(item, str) and not item.strip():
                continue
            member = cls.parse(item)
            if member not in out:
                out.append(member)
        return out


# other spellings users type (llama.cpp says f16, numpy says float16) -> the canonical value
ALIASES: dict[str, dict[str, str]] = {
    "Precision": {"f32": "fp32", "float32": "fp32", "f16": "fp16", "float16": "fp16",
                  "bfloat16": "bf16", "int8_dynamic": "int8-dynamic", "int8_weights": "int8-weights"},
    "Format": {"ir": "openvino", "litert": "tflite"},
}


class Format(_Vocabulary):
    """Artifact formats edgekit writes and runs."""

    ONNX = "onnx"
    OPENVINO = "openvino"
    TFLITE = "tflite"
    GGUF = "gguf"


class Precision(_Vocabulary):
    """Numeric precision of an artifact's weights (and activations, for static int8).

    Each converter declares the subset it supports; the ``q*`` members are llama.cpp's GGUF
    quantization types.
    """

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8_DYNAMIC = "int8-dynamic"  # int8 weights, activations quantized on the fly
    INT8 = "int8"  # static: int8 weights and calibrated int8 activations
    INT8_WEIGHTS = "int8-weights"  # weight-only int8, float activations
    INT4 = "int4"  # weight-only 4-bit, block-wise
    Q8_0 = "q8_0"
    Q4_0 = "q4_0"
    Q4_K_M = "q4_k_m"
    Q5_K_M = "q5_k_m"
    Q6_K = "q6_k"


class Device(_Vocabulary):
    """Where a model runs; each runtime maps these onto its own backends."""

    CPU = "cpu"
    GPU = "gpu"
    NPU = "npu"
    AUTO = "auto"


Dim = int | str  # a fixed size, or the name of a dynamic axis

# progress(stage, done, total): long work reports each step; total None when unknown
ProgressFn = Callable[[str, int, "int | None"], None]


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output.

    ``shape`` holds ints for fixed sizes and names (``"batch"``) for dynamic ones;
    ``example_shape`` and ``value_range`` describe the inputs the model was converted with,
    so a benchmark can synthesize realistic data.
    """

    name: str
    dtype: str
    shape: tuple[Dim, ...]
    example_shape: tuple[int, ...] | None = None
    value_range: tuple[float, float] | None = None

    @property
    def rank(self) -> int:
        return len(self.shape)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.example_shape is not None:
            d["example_shape"] = list(self.example_shape)
        if self.value_range is not None:
            d["value_range"] = list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(
            name=d["name"],
            dtype=d["dtype"],
            shape=tuple(d["shape"]),
            example_shape=tuple(d["example_shape"]) if d.get("example_shape") else None,
            value_range=tuple(d["value_range"]) if d.get("value_range") else None,
        )

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class Signature:
    """The inputs and outputs of a model, in order."""

    inputs: tuple[TensorSpec, ...] = field(default_factory=tuple)
    outputs: tuple[TensorSpec, ...] = field(default_factory=tuple)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Signature:
        return cls(
            inputs=tuple(TensorSpec.from_dict(x) for x in d.get("inputs", [])),
            outputs=tuple(TensorSpec.from_dict(x) for x in d.get("outputs", [])),
        )

    def with_examples(self, examples: dict[str, Any]) -> Signature:
        """Return a copy whose inputs record the shape and value range of ``examples``."""
        import numpy as np

        specs = []
        for spec in self.inputs:
            arr = examples.get(spec.name)
            if arr is None:
                specs.append(spec)
                continue
            arr = np.asarray(arr)
            rng = (float(arr.min()), float(arr.max())) if arr.size else None
            specs.append(
                TensorSpec(spec.name, spec.dtype, spec.shape, tuple(int(s) for s in arr.shape), rng)
            )
        return Signature(tuple(specs), self.outputs)


def merge_shapes(fixed: Sequence[int], dynamic: dict[int, str]) -> tuple[Dim, ...]:
    """Shape with the named dynamic axes put in place of the example sizes."""
    return tuple(dynamic.get(i, int(s)) for i, s in enumerate(fixed))
