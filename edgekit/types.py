"""Closed vocabularies (formats, precisions, devices) and tensor signatures.

Strings become enums at the API/CLI boundary through :meth:`parse`, which names the valid values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, Union

if TYPE_CHECKING:
    import numpy as np
    import torch

    from edgekit.sources import ModelSource

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


class ArtifactStatus(StrEnum):
    """How one converted variant came out (``Artifact.status``; the JSON holds the value)."""

    OK = "ok"
    FAILED = "failed"  # an error stopped it; ``reason`` says which
    DIVERGED = "diverged"  # built, but an fp32 output is out of tolerance
    DEGRADED = "degraded"  # built and usable, but static int8 ended short of its accuracy target
    SKIPPED = "skipped"  # a default precision that would not be true here (int4 with no 4-bit weight)


class BenchStatus(StrEnum):
    """How one benchmark run ended (``BenchResult.status``)."""

    OK = "ok"
    FAILED = "failed"  # an EdgekitError (load, inputs, runtime)
    CRASHED = "crashed"  # the isolated child process died
    TIMEOUT = "timeout"  # the isolated child ran past its deadline


class RowStatus(StrEnum):
    """Where one matrix row stands (``MatrixRow.status``): a conversion or a benchmark outcome."""

    OK = "ok"
    FAILED = "failed"
    DIVERGED = "diverged"
    CRASHED = "crashed"
    TIMEOUT = "timeout"
    CONVERTED = "converted"  # converted, not timed yet (an interrupted run resumes here)
    DEGRADED = "degraded"  # timed, but its static int8 is short of the accuracy target (see reason)
    SKIPPED = "skipped"  # a default precision the conversion skipped (see reason)


@dataclass(frozen=True)
class DeviceRequest:
    """Where to run a model, parsed once from the user's ``device`` string by ``edgekit.load``.

    ``"cpu"``, ``"gpu"``, ``"npu"`` and ``"auto"`` ask for a kind of device and let the runtime
    choose its backend for it. ``"RUNTIME:NATIVE"`` names one runtime and hands it NATIVE, that
    runtime's own device name, unchanged: ``onnxruntime:CUDAExecutionProvider``,
    ``openvino:GPU.1``, ``openvino:AUTO:GPU.0,CPU``, ``litert:xnnpack``,
    ``litert:/path/libdelegate.so``, ``llamacpp:gpu-offload``. Such a request has kind AUTO: which
    kind NATIVE is, only its runtime knows.

    >>> DeviceRequest.parse("openvino:GPU.1")
    DeviceRequest(kind=<Device.AUTO: 'auto'>, runtime='openvino', native='GPU.1')
    >>> str(DeviceRequest.parse(" GPU "))
    'gpu'
    """

    kind: Device = Device.CPU
    runtime: str | None = None  # the runtime a native name belongs to
    native: str | None = None  # that runtime's own device name, passed through

    def __post_init__(self) -> None:
        if (self.runtime is None) != (self.native is None) or self.runtime == "" or self.native == "":
            raise ConfigError(f"device {self.runtime!r}:{self.native!r} needs both a runtime and its device "
                              "name", fix=DEVICE_FIX)

    @classmethod
    def parse(cls, value: str | Device | DeviceRequest) -> DeviceRequest:
        """``"gpu"`` -> kind GPU; ``"openvino:GPU.1"`` -> runtime ``openvino``, native ``GPU.1``."""
        if isinstance(value, DeviceRequest):
            return value
        if isinstance(value, Device):
            return cls(value)
        if not isinstance(value, str):
            raise ConfigError(f"device must be a string, got {type(value).__name__}", fix=DEVICE_FIX)
        head, sep, rest = value.strip().partition(":")
        if not sep:
            try:
                return cls(Device.parse(head))
            except ConfigError as e:
                raise ConfigError(e.problem, fix=DEVICE_FIX) from None
        runtime, native = head.strip().lower(), rest.strip()
        if not runtime or not native:
            raise ConfigError(f"device {value!r} is not RUNTIME:NAME", fix=DEVICE_FIX)
        return cls(Device.AUTO, runtime, native)

    def __str__(self) -> str:
        return f"{self.runtime}:{self.native}" if self.native is not None else self.kind.value


DEVICE_FIX = ("use one of: " + ", ".join(d.value for d in Device) + ", or RUNTIME:NAME with a runtime's own "
              "device name, e.g. onnxruntime:CUDAExecutionProvider or openvino:GPU.1 (`edgekit devices` lists them)")

Dim = int | str  # a fixed size, or the name of a dynamic axis

# progress(stage, done, total): long work reports each step; total None when unknown
ProgressFn = Callable[[str, int, "int | None"], None]
# a model as convert/matrix/run_recipe/sensitivity take it: an nn.Module (with example inputs), a
# Hugging Face folder, a .pt2 file, "package.module:factory", "builtin:NAME", a resolved
# ModelSource, or None (the built-in default model)
ModelRef: TypeAlias = Union["torch.nn.Module", "ModelSource", str, Path, None]
# example inputs of an nn.Module or factory source: a tensor, a tuple of them, or arrays by input name
ExampleInputs: TypeAlias = Union["torch.Tensor", Sequence["torch.Tensor"], "Mapping[str, np.ndarray | torch.Tensor]",
                                 "np.ndarray", None]


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
