"""GGUF: torch layers -> GGUF tensor names (through the writer's own name table), the per-tensor
type overrides handed to llama.cpp's quantizer, and the check of each tensor's type in the file.

Excluded tensors are kept at ``exclude_type`` (f16 by default; q8_0 or f32 on request). A name may
also be a GGUF tensor name itself (``blk.0.attn_q.weight``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edgekit.optimize.exclusions import ExclusionCheck, resolve

# exclude_type -> (ggml type name, ggml_type value in llama.h)
KEEP_TYPES: dict[str, tuple[str, int]] = {"f32": ("F32", 0), "f16": ("F16", 1), "q8_0": ("Q8_0", 8)}
FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})


def tensor_names(source: Any, model: Any, arch: Any, names: Iterable[str]) -> dict[str, list[str]]:
    """Requested name (a torch layer or a GGUF tensor) -> the GGUF tensors it stands for."""
    from edgekit.converters.gguf.write import iter_names, plan_tensors
    from edgekit.types import Precision

    table = list(iter_names(plan_tensors(model, arch, Precision.FP16)))
    gguf_names = [g for _, g in table]
    wanted = resolve(source, names, also=gguf_names, what="layer or GGUF tensor")
    out: dict[str, list[str]] = {}
    for name in wanted:
        if name in gguf_names:
            out[name] = [name]
        else:
            out[name] = [g for hf, g in table if hf.rsplit(".", 1)[0] == name]
    return out


def overrides(native: Mapping[str, Sequence[str]], keep: str) -> dict[str, int]:
    """llama.cpp ``tt_overrides``: an anchored regex per tensor -> the ggml type to keep it at."""
    return {f"^{re.escape(t)}$": KEEP_TYPES[keep][1] for found in native.values() for t in found}


def check(types: Mapping[str, str], native: Mapping[str, Sequence[str]], keep: str, float_file: bool
          ) -> ExclusionCheck:
    """Which requested tensors have the kept type (any float type in an f32/f16/bf16 file)."""
    want = FLOAT_TYPES if float_file else {KEEP_TYPES[keep][0]}
    applied, reasons = [], {}
    for name, tensors in native.items():
        wrong = {t: types.get(t, "absent") for t in tensors if types.get(t) not in want}
        if tensors and not wrong:
            applied.append(name)
        elif wrong:
            reasons[name] = ", ".join(f"{t} is {k}" for t, k in wrong.items())
    note = None if not float_file else "a float file: every tensor is already float"
    return ExclusionCheck.of(native, applied, reasons, note)
