"""Open Inference Protocol (KServe v2) tensors <-> numpy, JSON and the binary-data extension.

A request body is JSON, or (binary extension, what ``tritonclient`` sends by default) a JSON
header of ``Inference-Header-Content-Length`` bytes followed by the raw tensors of the inputs
whose ``parameters.binary_data_size`` is set, in order. BYTES tensors travel as JSON strings, or
in binary as 4-byte little-endian lengths each followed by the bytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgekit.errors import InputError
from edgekit.inputs import check_unicode

HEADER = "Inference-Header-Content-Length"
# OIP datatype <-> numpy dtype (BYTES is object arrays of bytes)
DATATYPES: dict[str, str] = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
    "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
    "FP16": "float16", "FP32": "float32", "FP64": "float64", "BYTES": "object",
}
NUMPY_TO_OIP: dict[str, str] = {v: k for k, v in DATATYPES.items() if k != "BYTES"}
_WIRE: dict[str, np.dtype] = {k: np.dtype(v).newbyteorder("<") for k, v in DATATYPES.items() if k != "BYTES"}


def datatype_of(dtype: str | np.dtype) -> str:
    """The OIP datatype name of a numpy dtype (``float32`` -> ``FP32``)."""
    found = _DATATYPE_OF.get(dtype)
    if found is None:
        dt = np.dtype(dtype)
        found = "BYTES" if dt.kind in "OSU" else NUMPY_TO_OIP.get(dt.name, dt.name.upper())
        if len(_DATATYPE_OF) < 64:  # bounded: string dtypes differ by length
            _DATATYPE_OF[dtype] = found
    return found


_DATATYPE_OF: dict[Any, str] = {}  # every response asks: np.dtype(...).name is slow next to a dict


def parse_request(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON part of an infer request and the binary part after it (empty for plain JSON)."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise InputError(f"{HEADER} is {header_length!r}, but the body has {len(body)} bytes",
                             fix=f"set {HEADER} to the length of the JSON header")
        # the tensors stay a view of the body: decoded without a copy (np.frombuffer)
        head, blob = body[:int(header_length)], memoryview(body)[int(header_length):]
    else:
        head, blob = body, memoryview(b"")
    try:
        request = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"the request body is not JSON: {e}",
                         fix='send {"inputs": [{"name": ..., "shape": [...], "datatype": ..., "data": [...]}]}') from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise InputError("the request has no \"inputs\" list",
                         fix='send {"inputs": [{"name": ..., "shape": [...], "datatype": ..., "data": [...]}]}')
    return request, blob


def decode_inputs(request: Mapping[str, Any], blob: bytes | memoryview) -> dict[str, np.ndarray]:
    """Every input of an infer request as a numpy array (BYTES: an object array of bytes); binary
    numeric tensors are read-only views of ``blob`` on little-endian hosts (no copy)."""
    out: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(request["inputs"]):
        if not isinstance(tensor, dict):
            raise InputError(f"inputs[{i}] is not an object", fix="give name, shape, datatype and data")
        name, shape, dtype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
        if not isinstance(name, str) or not name:
            raise InputError(f"inputs[{i}] has no name", fix="give each input the model's input name")
        if name in out:
            raise InputError(f"input {name!r} is given twice", fix="send each input once")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                   for d in shape):
            raise InputError(f"input {name!r} has shape {shape!r}, not a list of sizes",
                             fix='give "shape" as a list of non-negative integers, e.g. [1, 3]')
        if dtype not in DATATYPES:
            raise InputError(f"input {name!r} has datatype {dtype!r}, which is not an OIP datatype",
                             fix=f"use one of: {', '.join(DATATYPES)}")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(blob):
                raise InputError(f"input {name!r} says binary_data_size={size!r}, past the end of the body",
                                 fix="send the binary tensors after the JSON header, in input order")
            arr = _from_binary(name, blob[offset:offset + size], dtype, shape)
            offset += size
        else:
            arr = _from_json(name, tensor.get("data"), dtype, shape)
        out[name] = arr
    if offset != len(blob):
        raise InputError(f"{len(blob) - offset} bytes after the binary tensors belong to no input",
                         fix="set binary_data_size on every binary input")
    return out


def _count(shape: list[int]) -> int:
    return math.prod(shape)  # Python ints: no overflow, and far cheaper than np.prod on a short list


def _from_binary(name: str, raw: bytes | memoryview, dtype: str, shape: list[int]) -> np.ndarray:
    if dtype == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise InputError(f"BYTES input {name!r} ends inside a length prefix", fix="check the serialisation")
            (n,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + n > len(raw):
                raise InputError(f"BYTES input {name!r} has an element past the end of its data",
                                 fix="check the serialisation")
            items.append(bytes(raw[pos + 4:pos + 4 + n]))
            pos += 4 + n
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
    else:
        wire = _WIRE[dtype]  # the little-endian dtype the binary extension sends
        if len(raw) != _count(shape) * wire.itemsize:
            raise InputError(f"input {name!r}: {len(raw)} bytes of data for shape {shape} {dtype} "
                             f"({_count(shape) * wire.itemsize} expected)", fix="make the data match the shape")
        arr = np.frombuffer(raw, dtype=wire)
        if not wire.isnative:  # a big-endian host: one copy into its own byte order
            arr = arr.astype(wire.newbyteorder("="))
    return _reshape(name, arr, shape)


def _from_json(name: str, data: Any, dtype: str, shape: list[int]) -> np.ndarray:
    if data is None:
        raise InputError(f"input {name!r} has no data", fix='give its values in "data" (a flat or nested list)')
    if dtype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(x, str) for x in flat):
            raise InputError(f"BYTES input {name!r} holds values that are not strings", fix="send strings")
        check_unicode(flat)  # a JSON "\\ud800" decodes to a lone surrogate, which UTF-8 cannot encode
        arr = np.empty(len(flat), dtype=object)
        arr[:] = [x.encode("utf-8") for x in flat]
        return _reshape(name, arr, shape)
    try:
        arr = np.asarray(data)
    except (TypeError, ValueError) as e:
        raise InputError(f"input {name!r}: data is not a regular list of numbers ({e})",
                         fix="send a flat list, or nested lists of equal lengths") from None
    if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f" and dtype not in ("FP16", "FP32", "FP64")):
        raise InputError(f"input {name!r}: data of kind {arr.dtype} does not fit datatype {dtype}",
                         fix=f"send {dtype} values" + (" (integers)" if dtype.startswith(("INT", "UINT")) else ""))
    target = np.dtype(DATATYPES[dtype])
    if target.kind in "iu" and arr.size and (arr.min() < np.iinfo(target).min or arr.max() > np.iinfo(target).max):
        raise InputError(f"input {name!r}: values {arr.min()}..{arr.max()} do not fit {dtype}",
                         fix=f"send values within {dtype}'s range")
    return _reshape(name, arr.astype(target).reshape(-1), shape)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _flatten(item)]
    return [data]


def _reshape(name: str, arr: np.ndarray, shape: list[int]) -> np.ndarray:
    if arr.size != _count(shape):
        raise InputError(f"input {name!r} has {arr.size} values, its shape {shape} needs {_count(shape)}",
                         fix="make the data match the shape")
    return arr.reshape(shape)


def texts_of(name: str, arr: np.ndarray) -> list[str]:
    """A BYTES tensor as a list of UTF-8 strings."""
    try:
        return [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
    except UnicodeDecodeError:
        raise InputError(f"BYTES input {name!r} is not UTF-8 text", fix="send UTF-8 encoded strings") from None


def encode_outputs(outputs: Mapping[str, np.ndarray], binary: set[str]) -> tuple[list[dict[str, Any]], list[Any]]:
    """Response tensors: JSON ``data`` for most, and for names in ``binary`` their raw bytes, as
    buffers to send after the JSON (``b"".join([head, *raw])``: one copy of the data in all)."""
    tensors, blobs = [], []
    for name, arr in outputs.items():
        arr = np.asarray(arr)
        dtype = datatype_of(arr.dtype)
        entry: dict[str, Any] = {"name": name, "datatype": dtype, "shape": list(arr.shape)}
        if name in binary:
            raw = _bytes_blob(arr) if dtype == "BYTES" else \
                memoryview(np.ascontiguousarray(arr, arr.dtype.newbyteorder("<"))).cast("B")
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        elif dtype == "BYTES":
            entry["data"] = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
        else:
            entry["data"] = arr.reshape(-1).tolist()
        tensors.append(entry)
    return tensors, blobs


def _bytes_blob(arr: np.ndarray) -> bytes:
    parts = []
    for x in arr.reshape(-1):
        b = x if isinstance(x, bytes) else str(x).encode("utf-8")
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)

