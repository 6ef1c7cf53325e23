"""Helpers of the LiteRT backend that need no LiteRT (numpy only): the edgekit plan stored inside a
``.tflite`` file and a reader for it, capture of what native code writes to stdout/stderr, and the
array mapping between the caller and the fixed-shape graph (quantization, batch chunks, padding).

The plan is JSON in the flatbuffer's ``metadata`` table under :data:`METADATA_NAME`. It travels
with the file (a phone's LiteRT ignores it) and tells edgekit's runtime how the fixed-shape graph
relates to the PyTorch model it came from: which axis is the batch (run in chunks of the fixed
batch), which axes may be padded up to their fixed size (and which outputs to crop back), which
inputs are channel-last, and which 64-bit inputs/outputs were narrowed to 32 bits.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ArtifactError

METADATA_NAME = "edgekit"
PLAN_SCHEMA = "edgekit.tflite-plan/1"
FILE_IDENTIFIER = b"TFL3"
QUANTIZED = (np.int8, np.uint8, np.int16)

# tflite schema.fbs field slots (0-based) of the tables the reader walks
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


@dataclass(frozen=True)
class InputPlan:
    """How the runtime adapts one input: batch chunks, padding, channel-last, 64-bit source."""

    batch_axis: int | None = None
    pad_axis: int | None = None
    pad_name: str | None = None  # the source's name for the padded axis ("sequence")
    pad_value: float = 0
    nhwc: bool = False  # the file takes NHWC where the PyTorch model took NCHW
    source_dtype: str | None = None  # e.g. int64, narrowed to int32 in the file

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v is not False}


@dataclass(frozen=True)
class OutputPlan:
    """How the runtime maps one output back: batch concatenation, crop of padded positions."""

    batch_axis: int | None = None
    crop_axis: int | None = None
    crop_name: str | None = None
    source_dtype: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None and v is not False}


@dataclass(frozen=True)
class Plan:
    """Everything edgekit's runtime needs beyond the graph; empty for a foreign ``.tflite``.

    Inputs and outputs keep the PyTorch model's order (a signature def lists them by name).
    """

    inputs: dict[str, InputPlan] = field(default_factory=dict)
    outputs: dict[str, OutputPlan] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": PLAN_SCHEMA,
                "inputs": [{"name": k, **v.to_dict()} for k, v in self.inputs.items()],
                "outputs": [{"name": k, **v.to_dict()} for k, v in self.outputs.items()]}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict()).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Plan:
        data = json.loads(raw.decode())
        if data.get("schema") != PLAN_SCHEMA:
            return cls()  # another edgekit generation's plan: run the graph as it is
        ins = {d.pop("name"): InputPlan(**d) for d in map(dict, data.get("inputs", []))}
        outs = {d.pop("name"): OutputPlan(**d) for d in map(dict, data.get("outputs", []))}
        return cls(ins, outs)


class _Table:
    """Just enough of a flatbuffer table reader for ``Model.metadata`` and ``Model.buffers``."""

    def __init__(self, buf: Any, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - struct.unpack_from("<i", buf, pos)[0]
        self.vsize = struct.unpack_from("<H", buf, self.vtable)[0]

    def _field(self, slot: int) -> int | None:
        at = 4 + 2 * slot
        if at >= self.vsize:
            return None
        off = struct.unpack_from("<H", self.buf, self.vtable + at)[0]
        return self.pos + off if off else None

    def scalar(self, slot: int, fmt: str, default: int = 0) -> int:
        at = self._field(slot)
        return struct.unpack_from(fmt, self.buf, at)[0] if at is not None else default

    def _vector(self, slot: int) -> tuple[int, int] | None:
        at = self._field(slot)
        if at is None:
            return None
        start = at + struct.unpack_from("<I", self.buf, at)[0]
        return start + 4, struct.unpack_from("<I", self.buf, start)[0]

    def tables(self, slot: int) -> list[_Table]:
        vec = self._vector(slot)
        if vec is None:
            return []
        start, n = vec
        return [_Table(self.buf, start + 4 * i + struct.unpack_from("<I", self.buf, start + 4 * i)[0])
                for i in range(n)]

    def bytes_(self, slot: int) -> bytes:
        vec = self._vector(slot)
        return bytes(self.buf[vec[0]:vec[0] + vec[1]]) if vec else b""


def read_metadata(path: Path) -> dict[str, bytes]:
    """The flatbuffer's ``metadata`` entries by name, without LiteRT; raises
    :class:`ArtifactError` for a file that is not a TFLite flatbuffer or is cut short."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if len(buf) < 8 or buf[4:8] != FILE_IDENTIFIER:
                raise ArtifactError(f"{path.name} is not a TFLite model (no TFL3 identifier)",
                                    fix="check the path, or re-run `edgekit convert --to tflite`")
            model = _Table(buf, struct.unpack_from("<I", buf, 0)[0])
            buffers = model.tables(_MODEL_BUFFERS)
            out = {}
            for meta in model.tables(_MODEL_METADATA):
                name = meta.bytes_(_METADATA_NAME).decode("utf-8", "replace")
                index = meta.scalar(_METADATA_BUFFER, "<I")
                if index >= len(buffers):
                    raise IndexError(index)
                b = buffers[index]
                offset, size = b.scalar(_BUFFER_OFFSET, "<Q"), b.scalar(_BUFFER_SIZE, "<Q")
                out[name] = bytes(buf[offset:offset + size]) if offset > 1 else b.bytes_(_BUFFER_DATA)
            return out
    except (struct.error, IndexError, ValueError, OverflowError) as e:
        raise ArtifactError(f"{path.name} is truncated or corrupt (its flatbuffer cannot be read)",
                            fix="re-run `edgekit convert --to tflite` or copy the file again") from e


def read_plan(path: Path) -> Plan:
    """The edgekit plan inside ``path`` (an empty plan for a ``.tflite`` made elsewhere)."""
    raw = read_metadata(path).get(METADATA_NAME)
    if not raw:
        return Plan()
    try:
        return Plan.from_json(raw)
    except (ValueError, TypeError) as e:
        raise ArtifactError(f"{path.name} carries an unreadable edgekit plan: {e}",
                            fix="re-run `edgekit convert --to tflite`") from e


_FD_LOCK = threading.Lock()


@dataclass
class Captured:
    text: str = ""

    def tail(self, lines: int = 3) -> str:
        kept = [ln.strip() for ln in self.text.splitlines() if ln.strip()]
        return " | ".join(kept[-lines:])


@contextlib.contextmanager
def native_output() -> Iterator[Captured]:
    """Send what C++ code writes to file descriptors 1 and 2 into a buffer for the duration.

    LiteRT, its converter and absl log straight to the descriptors ("INFO: Created TensorFlow
    Lite XNNPACK delegate", MLIR pass timings); the library must not print, and the text is
    the best explanation when something fails, so it is kept for error messages.
    """
    captured = Captured()
    with _FD_LOCK, tempfile.TemporaryFile(mode="w+b") as sink:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = []
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                    os.dup2(sink.fileno(), fd)
                except OSError:  # no such descriptor (embedded interpreters): nothing to silence
                    continue
            yield captured
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", "replace")


def quant_params(details: dict[str, Any], raw: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(scale, zero point) shaped to broadcast over the tensor, or (None, None) when values are
    exchanged as they are (not quantized, or ``raw``)."""
    q = details.get("quantization_parameters") or {}
    scales = np.asarray(q.get("scales", []), dtype=np.float32)
    if raw or np.dtype(details["dtype"]).type not in QUANTIZED or scales.size == 0:
        return None, None
    zps = np.asarray(q.get("zero_points", []), dtype=np.float32)
    shape = [1] * len(details["shape"])
    if scales.size > 1:  # per-axis parameters broadcast along the quantized dimension
        shape[int(q.get("quantized_dimension", 0))] = scales.size
        return scales.reshape(shape), zps.reshape(shape)
    return scales.reshape(()), (zps.reshape(()) if zps.size else np.zeros((), np.float32))


def take_rows(arr: np.ndarray, axis: int, start: int, size: int) -> np.ndarray:
    """Rows ``start:start+size`` on ``axis``; a short last chunk repeats its last row (and the
    extra outputs are dropped), so a graph with a fixed batch above 1 still takes any batch."""
    n = arr.shape[axis]
    index = np.minimum(np.arange(start, start + size), n - 1)
    if start == 0 and size == n:
        return arr
    return np.take(arr, index, axis=axis)


def pad_axis(arr: np.ndarray, axis: int, size: int, value: float) -> np.ndarray:
    missing = size - arr.shape[axis]
    if missing <= 0:
        return arr
    widths = [(0, 0)] * arr.ndim
    widths[axis] = (0, missing)
    return np.pad(arr, widths, constant_values=value)
