"""Edits of a converted ``.tflite`` flatbuffer: float I/O around an int8 graph, the edgekit plan
as metadata, and a summary of ops and tensor types for the manifest.

Uses ``ai_edge_litert``'s generated schema (the object API); imported inside the functions.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

# TensorType values of quantized tensors -> (QUANTIZE, DEQUANTIZE) op versions that take them
QUANTIZED_IO_VERSIONS: dict[str, int] = {"INT8": 2, "UINT8": 1, "INT16": 3}


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _read(model_bytes: bytes) -> Any:
    from ai_edge_litert.tools import flatbuffer_utils

    return flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))


def _write(model: Any) -> bytes:
    from ai_edge_litert.tools import flatbuffer_utils

    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _type_names() -> dict[int, str]:
    schema = _schema()
    return {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def _opcode(model: Any, builtin: int, version: int) -> int:
    """Index of the operator code for ``builtin`` at ``version``, added if missing."""
    schema = _schema()
    for i, code in enumerate(model.operatorCodes or []):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin and code.version == version:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)  # the int8 field old runtimes read
    code.version = version
    model.operatorCodes = [*(model.operatorCodes or []), code]
    return len(model.operatorCodes) - 1


def float_io(model_bytes: bytes, float_names: set[str]) -> tuple[bytes, list[str]]:
    """Give the quantized graph inputs/outputs named in ``float_names`` float32 I/O: a QUANTIZE
    op after each such input and a DEQUANTIZE op before each such output, with the tensor's own
    scale and zero point. Returns the new flatbuffer and the names changed.

    PT2E and ai-edge-quantizer static int8 fold the boundary (de)quantization into int8 I/O
    tensors; a camera or text pipeline on a phone feeds floats, so float I/O is the default.
    """
    schema = _schema()
    names = _type_names()
    model = _read(model_bytes)
    changed: list[str] = []
    for sig in model.signatureDefs or []:
        sg = model.subgraphs[sig.subgraphIndex]
        front, back = [], []
        for ends, is_input in ((sig.inputs or [], True), (sig.outputs or [], False)):
            for tmap in ends:
                name = tmap.name.decode() if isinstance(tmap.name, bytes) else tmap.name
                tensor = sg.tensors[tmap.tensorIndex]
                kind = names.get(tensor.type, "")
                q = tensor.quantization
                if name not in float_names or kind not in QUANTIZED_IO_VERSIONS or q is None or \
                        q.scale is None or len(q.scale) == 0:
                    continue
                new = schema.TensorT()
                new.name = (tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name)
                tensor.name = new.name + "_quantized"
                new.type = schema.TensorType.FLOAT32
                new.shape = list(tensor.shape)
                new.shapeSignature = list(tensor.shapeSignature) if tensor.shapeSignature is not None else None
                new.buffer = 0  # buffer 0 is the empty sentinel: a runtime tensor
                sg.tensors.append(new)
                new_index = len(sg.tensors) - 1
                op = schema.OperatorT()
                version = QUANTIZED_IO_VERSIONS[kind]
                if is_input:
                    op.opcodeIndex = _opcode(model, schema.BuiltinOperator.QUANTIZE, version)
                    op.inputs, op.outputs = [new_index], [tmap.tensorIndex]
                    sg.inputs = [new_index if i == tmap.tensorIndex else i for i in sg.inputs]
                    front.append(op)
                else:
                    op.opcodeIndex = _opcode(model, schema.BuiltinOperator.DEQUANTIZE, version)
                    op.inputs, op.outputs = [tmap.tensorIndex], [new_index]
                    sg.outputs = [new_index if i == tmap.tensorIndex else i for i in sg.outputs]
                    back.append(op)
                tmap.tensorIndex = new_index
                changed.append(name)
        sg.operators = [*front, *sg.operators, *back]
    return (_write(model) if changed else model_bytes), changed


def add_metadata(model_bytes: bytes, name: str, payload: bytes) -> bytes:
    """Store ``payload`` under ``name`` in the flatbuffer's metadata (replacing an older entry)."""
    schema = _schema()
    model = _read(model_bytes)
    buf = schema.BufferT()
    buf.data = list(payload)
    model.buffers.append(buf)
    meta = schema.MetadataT()
    meta.name = name
    meta.buffer = len(model.buffers) - 1
    keep = [m for m in (model.metadata or []) if (m.name.decode() if isinstance(m.name, bytes) else m.name) != name]
    model.metadata = [*keep, meta]
    return _write(model)


def summary(model_bytes: bytes) -> dict[str, Any]:
    """Op counts, and bytes of constant tensors per type (how much of the weights is int8/fp16)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = _read(model_bytes)
    names = _type_names()
    ops: Counter[str] = Counter()
    weights: Counter[str] = Counter()
    io: dict[str, str] = {}
    for sg in model.subgraphs:
        for op in sg.operators or []:
            ops[flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) or str(op.opcodeIndex)] += 1
        for tensor in sg.tensors or []:
            data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
            if data is not None and len(data):
                weights[names.get(tensor.type, str(tensor.type)).lower()] += len(data)
    for sig in (model.signatureDefs or [])[:1]:  # the signature's names are what users see
        sg = model.subgraphs[sig.subgraphIndex]
        for tmap in (*(sig.inputs or []), *(sig.outputs or [])):
            name = tmap.name.decode() if isinstance(tmap.name, bytes) else tmap.name
            io[name] = names.get(sg.tensors[tmap.tensorIndex].type, "?").lower()
    return {"ops": dict(sorted(ops.items())), "weight_bytes_by_type": dict(weights), "io_types": io}


# TensorType -> bits (FLOAT32, FLOAT16, INT32, UINT8, INT64, INT16, INT8, INT4)
BITS = {0: 32, 1: 16, 3: 8, 9: 8, 17: 4}


def weight_bits(model_bytes: bytes) -> dict[int, int]:
    """Bit width -> weight values stored at it: constant tensors of two or more dimensions."""
    model = _read(model_bytes)
    counts: dict[int, int] = {}
    for sg in model.subgraphs:
        for tensor in sg.tensors or []:
            data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
            bits = BITS.get(tensor.type)
            shape = list(tensor.shape) if tensor.shape is not None else []
            if data is None or not len(data) or bits is None or sum(int(d) > 1 for d in shape) < 2:
                continue
            n = 1
            for d in shape:
                n *= int(d)
            counts[bits] = counts.get(bits, 0) + n
    return counts
