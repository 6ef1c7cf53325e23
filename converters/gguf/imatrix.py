"""An importance matrix for llama.cpp's quantizer, computed with PyTorch on calibration text.

For every weight that llama.cpp quantizes, the mean of the squared activations entering it, per
input column (what ``llama-imatrix`` collects): columns that carry large activations get their
quantization error weighted up. Stored as an ``.npz`` keyed by GGUF tensor name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np


def compute_imatrix(model: Any, names: dict[str, str], batches: Iterable[dict[str, np.ndarray]],
                    out: Path) -> dict[str, Any]:
    """Run ``model`` on ``batches`` (input_ids + attention_mask) with a hook on each module whose
    ``weight`` is in ``names`` (Hugging Face name -> GGUF name); write the matrix to ``out``."""
    import torch

    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    state: dict[str, Any] = {"mask": None, "last": None}
    hooks = []

    def squares(x: Any) -> tuple[Any, int]:
        """Per-column sum of squares over the unpadded rows; Q/K/V (and gate/up) share one input,
        so the last answer is reused for the same tensor object (held, so that its memory cannot
        be handed to a new tensor that would then look the same by address)."""
        if state["last"] is not None and state["last"][0] is x:
            return state["last"][1]
        flat = x.detach().reshape(-1, x.shape[-1])
        mask = state["mask"]
        if mask is not None and mask.numel() == flat.shape[0] and not bool(mask.all()):
            flat = flat[mask.reshape(-1)]
        flat = flat.float()
        result = (torch.einsum("ij,ij->j", flat, flat), int(flat.shape[0]))
        state["last"] = (x, result)
        return result

    def hook_for(gguf_name: str) -> Any:
        def hook(module: Any, inputs: tuple, output: Any) -> None:
            sq, rows = squares(inputs[0])
            sums[gguf_name] = sq if gguf_name not in sums else sums[gguf_name] + sq
            counts[gguf_name] = counts.get(gguf_name, 0) + rows
        return hook

    hooked = []
    for module_name, module in model.named_modules():
        key = f"{module_name}.weight"
        weight = getattr(module, "weight", None)
        if key in names and weight is not None and weight.dim() == 2:
            hooks.append(module.register_forward_hook(hook_for(names[key])))
            hooked.append(module)
    options = last_logits_only(model, hooked)
    tokens = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                ids = torch.from_numpy(np.asarray(batch["input_ids"], dtype=np.int64))
                mask = torch.from_numpy(np.asarray(batch.get("attention_mask", np.ones_like(ids)), dtype=np.int64))
                state["mask"], state["last"] = mask.bool(), None
                model(input_ids=ids, attention_mask=mask, **options)
                tokens += int(mask.sum())
    finally:
        for h in hooks:
            h.remove()
    arrays = {name: (s / max(counts[name], 1)).numpy().astype(np.float32) for name, s in sums.items()}
    np.savez(out, **arrays)
    return {"tensors": len(arrays), "tokens": tokens}


def last_logits_only(model: Any, hooked: list[Any]) -> dict[str, Any]:
    """``logits_to_keep=1`` when the output head is not hooked (tied to the embedding, so llama.cpp
    does not quantize it with the matrix): every hooked input is the same, and the batch's logits,
    which nobody reads (8 x 128 x 49,152 float32 is 200 MB on SmolLM2), are not computed."""
    import inspect

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or any(m is head for m in hooked):
        return {}
    try:
        accepted = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
