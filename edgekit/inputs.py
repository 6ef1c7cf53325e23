"""Input checking before a runtime sees the data, and synthetic inputs for benchmarks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edgekit.errors import InputError
from edgekit.types import Signature, TensorSpec


class InputChecker:
    """Validates a feed against a signature; precomputed so the per-call cost stays small."""

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self._specs = [(s.name, np.dtype(s.dtype), s.rank,
                        tuple((i, d) for i, d in enumerate(s.shape) if isinstance(d, int)), s)
                       for s in signature.inputs]
        self._names = {s.name for s in signature.inputs}

    def __call__(self, feed: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if len(feed) != len(self._specs) or not self._names.issuperset(feed):
            self._name_error(feed)
        out: dict[str, np.ndarray] = {}
        for name, dtype, rank, fixed, spec in self._specs:
            value = feed[name]
            arr = value if isinstance(value, np.ndarray) else _as_array(name, value, spec)
            if arr.ndim != rank:
                raise InputError(f"input {name!r} has rank {arr.ndim} (shape {list(arr.shape)}), "
                                 f"the model expects {spec.describe()}",
                                 fix=f"reshape {name!r} to rank {rank}")
            for axis, size in fixed:
                if arr.shape[axis] != size:
                    raise InputError(f"input {name!r} has size {arr.shape[axis]} on axis {axis} "
                                     f"(shape {list(arr.shape)}), the model expects {spec.describe()}",
                                     fix=f"give {name!r} size {size} on axis {axis}")
            if arr.dtype != dtype:
                arr = _cast(name, arr, dtype, spec)
            out[name] = arr
        return out

    def _name_error(self, feed: Mapping[str, Any]) -> None:
        missing = [n for n in self.signature.input_names if n not in feed]
        unknown = [n for n in feed if n not in self._names]
        parts = ([f"missing input(s) {missing}"] if missing else []) + \
                ([f"unknown input(s) {unknown}"] if unknown else [])
        expected = "; ".join(s.describe() for s in self.signature.inputs)
        raise InputError(" and ".join(parts), fix=f"the model takes: {expected}")


def check_unicode(texts: Sequence[str]) -> None:
    """Refuse text that is not valid Unicode (a lone surrogate, e.g. from a JSON ``"\\ud800"`` or a
    badly decoded file): tokenizers raise a bare TypeError on it, and UTF-8 cannot encode it."""
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InputError(f"text item {i} is not valid Unicode: a lone surrogate U+{ord(text[e.start]):04X} "
                             f"at character {e.start}",
                             fix="decode the text correctly (e.g. bytes.decode('utf-8')) or drop the "
                             "surrogate: text.encode('utf-8', 'replace').decode()") from None


def _as_array(name: str, value: Any, spec: TensorSpec) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"input {name!r} cannot be read as an array: {e}",
                         fix=f"pass a numpy array for {spec.describe()}") from e
    if arr.dtype.kind in "OUSV":
        raise InputError(f"input {name!r} holds {arr.dtype} values, not numbers",
                         fix=f"pass a numeric numpy array for {spec.describe()}")
    return arr


def _cast(name: str, arr: np.ndarray, dtype: np.dtype, spec: TensorSpec) -> np.ndarray:
    """Cast only where no value changes kind or overflows: int->wider int, int in range, float->float."""
    src = arr.dtype
    ok = np.can_cast(src, dtype, "safe")
    if not ok and src.kind in "iub" and dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        ok = bool(arr.min() >= info.min and arr.max() <= info.max)
    elif not ok and src.kind == "f" and dtype.kind == "f":
        ok = bool(np.all(np.abs(arr[np.isfinite(arr)]) <= np.finfo(dtype).max)) if arr.size else True
    if not ok:
        raise InputError(f"input {name!r} is {src}, the model expects {spec.describe()}; "
                         f"casting {src} to {dtype} would change values",
                         fix=f"pass {name}.astype(numpy.{dtype})")
    return arr.astype(dtype)


def synthesize(signature: Signature, *, batch: int = 1, dims: Mapping[str, int] | None = None,
               seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs shaped like the conversion's examples, with ``batch`` rows.

    Dynamic axes take ``dims[name]`` if given, else the example's size; integer inputs take
    values in the range seen at conversion (attention masks are all ones).
    """
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    feed: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = []
        for i, d in enumerate(spec.shape):
            if isinstance(d, int) and d >= 0:
                shape.append(d)
            elif isinstance(d, str) and d in dims:
                shape.append(int(dims[d]))
            elif i == 0:
                shape.append(batch)
            elif spec.example_shape is not None:
                shape.append(spec.example_shape[i])
            else:
                shape.append(128 if "seq" in str(d) else 1)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feed[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b" or "mask" in spec.name:
            feed[spec.name] = np.ones(shape, dtype=dtype)
        else:
            lo, hi = spec.value_range or (0, 0)
            feed[spec.name] = rng.integers(int(lo), int(hi) + 1, size=shape).astype(dtype)
    return feed
