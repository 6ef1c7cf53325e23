"""llama.cpp's own quantizer (``llama_model_quantize``) on an f16/f32 GGUF file, in a child process.

ggml aborts the process on some inputs (an assertion, an imatrix that does not fit), so the
caller runs :func:`quantize` here through ``python -m edgekit.converters.gguf.quantize``: a
crash becomes a :class:`QuantizationError`, never a dead caller. The optional importance matrix
is an ``.npz`` of GGUF tensor name -> mean squared input activation per column.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from edgekit.errors import QuantizationError
from edgekit.isolation import run_child
from edgekit.types import Precision

# precision -> llama.cpp's llama_ftype (llama.h: LLAMA_FTYPE_MOSTLY_*)
FTYPES: dict[Precision, int] = {
    Precision.Q4_0: 2,
    Precision.Q8_0: 7,
    Precision.Q4_K_M: 15,
    Precision.Q5_K_M: 17,
    Precision.Q6_K: 18,
}


def quantize(src: Path, dst: Path, precision: Precision, *, threads: int | None = None,
             imatrix: Path | None = None, overrides: dict[str, int] | None = None,
             timeout: float = 3600.0) -> dict[str, Any]:
    """Quantize ``src`` into ``dst`` with llama.cpp in a fresh process; return its report.

    ``overrides`` maps a tensor-name regex to the ggml type its tensors keep (llama.cpp's
    ``tt_overrides``), for layers excluded from quantization."""
    job = {"src": str(src), "dst": str(dst), "ftype": FTYPES[precision], "nthread": threads or 0,
           "imatrix": str(imatrix) if imatrix else None, "overrides": overrides or {}}
    child = run_child("edgekit.converters.gguf.quantize", job, timeout)
    if child.timed_out:
        raise QuantizationError(f"llama.cpp's quantizer gave no result within {timeout:.0f} s",
                                fix="quantize a smaller model, or give it more threads")
    if child.signal:
        raise QuantizationError(f"llama.cpp's quantizer crashed ({child.signal}) on {precision.value}: "
                                f"{child.stderr_tail}".rstrip(": "),
                                fix="try another precision; the calling process was not affected")
    if not child.ok:
        raise QuantizationError(f"llama.cpp could not quantize to {precision.value}: {child.problem()}",
                                fix="check that the f16/f32 GGUF loads (edgekit run), or try another precision")
    reply = child.reply
    return reply


def _imatrix_entries(path: str) -> tuple[Any, list[Any]]:
    import ctypes

    import llama_cpp
    import numpy as np

    with np.load(path) as z:
        arrays = {k: np.ascontiguousarray(z[k], dtype=np.float32) for k in z.files}
    entries = (llama_cpp.llama_model_imatrix_data * (len(arrays) + 1))()
    keep: list[Any] = []  # the C side only borrows these buffers
    for i, (name, arr) in enumerate(arrays.items()):
        cname = ctypes.create_string_buffer(name.encode())
        keep += [cname, arr]
        entries[i].name = ctypes.cast(cname, ctypes.c_char_p)
        entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = arr.size
    entries[len(arrays)].name = None  # the list ends at a null name
    return entries, keep


def _main() -> None:
    import ctypes

    from edgekit.runtimes.llamacpp.log import LlamaLog, llama_cpp_module

    llama_cpp = llama_cpp_module()  # llama.cpp's log kept in memory, not printed
    job = json.loads(sys.stdin.read())
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = job["ftype"]
    params.nthread = job["nthread"]
    keep: list[Any] = []
    if job["imatrix"]:
        entries, keep = _imatrix_entries(job["imatrix"])
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        keep.append(entries)
    if job.get("overrides"):
        items = list(job["overrides"].items())
        table = (llama_cpp.llama_model_tensor_override * (len(items) + 1))()
        for i, (pattern, ggml_type) in enumerate(items):
            table[i].pattern = pattern.encode()
            table[i].type = ggml_type
        table[len(items)].pattern = None  # the list ends at a null pattern
        params.tt_overrides = ctypes.cast(table, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    rc = llama_cpp.llama_model_quantize(job["src"].encode(), job["dst"].encode(), ctypes.byref(params))
    if rc != 0:
        reply = {"error": LlamaLog.last_error() or f"llama_model_quantize returned {rc}"}
    else:
        reply = {"ok": True, "imatrix_tensors": (len(keep) - 1) // 2 if keep else 0}
    sys.stdout.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    _main()
