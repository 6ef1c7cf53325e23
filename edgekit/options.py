"""Typed, frozen option dataclasses built from user mappings (Python dicts, CLI ``-O k=v``, recipes).

:func:`coerce` is the one coercer of declared types; :func:`parse_options` builds converter and
runtime options with it, and recipe sections (``edgekit.optimize.recipe``) use it field by field.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from edgekit.errors import ConfigError, EdgekitError

OptionsT = TypeVar("OptionsT")
ErrorFn = Callable[[str, str, str], EdgekitError]  # (key path, problem, fix) -> the error to raise


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """``"did you mean 'prune'? "`` when a known word is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def option_error(path: str, problem: str, fix: str) -> ConfigError:
    """The :data:`ErrorFn` of converter and runtime options: ``option int4_block_size: ...``."""
    return ConfigError(f"option {path}: {problem}", fix=fix)


class _Mismatch(Exception):
    """``value`` is not of ``hint``; ``want`` says what would be (``a whole number``)."""

    def __init__(self, want: str) -> None:
        self.want = want


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def coerce(hint: Any, value: Any, path: str, error: ErrorFn = option_error,
           nested: Callable[[type, Any, str], Any] | None = None) -> Any:
    """``value`` as the declared type ``hint``, the one coercer of ``-O`` options, runtime options
    and recipes. Strings (from the CLI or YAML) become bools, numbers and ``a,b`` tuples; a union
    takes the first member the value fits; ``nested(cls, value, path)`` builds dataclass fields
    (recipe sections). A value that fits nothing raises ``error(path, problem, fix)``."""
    try:
        return _coerce(hint, value, path, error, nested)
    except _Mismatch as m:
        raise error(path, f"expected {m.want}, got {value!r}", f"give {path.rsplit('.', 1)[-1]} {m.want}") from None


def _coerce(hint: Any, value: Any, path: str, error: ErrorFn, nested: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower()
                                                      in ("none", "null"))):
            return None
        wants = []
        for member in (a for a in args if a is not type(None)):
            try:
                return _coerce(member, value, path, error, nested)
            except _Mismatch as m:
                wants.append(m.want)
        raise _Mismatch(" or ".join(wants))
    if hint is Any or hint is object:
        return value
    if nested is not None and dataclasses.is_dataclass(hint):
        return nested(hint, value, path)
    text = value.strip() if isinstance(value, str) else None
    if hint is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise _Mismatch("true or false")
    if hint is int:
        try:
            number = float(text if text is not None else value)
        except (TypeError, ValueError):
            raise _Mismatch("a whole number") from None
        if isinstance(value, bool) or not number.is_integer():
            raise _Mismatch("a whole number")
        return int(number)
    if hint is float:  # YAML 1.1 reads 1e-4 (no dot) as a string: accept numeric strings
        try:
            if isinstance(value, bool):
                raise ValueError
            return float(text if text is not None else value)
        except (TypeError, ValueError):
            raise _Mismatch("a number") from None
    if hint is str:
        if isinstance(value, os.PathLike):  # a folder option given as a Path
            return os.fspath(value)
        if text is None:
            raise _Mismatch("a string")
        return value
    if hint is Path:
        if text is None and not isinstance(value, Path):
            raise _Mismatch("a path")
        return Path(value)
    if origin in (tuple, list, collections.abc.Sequence):
        items = [t.strip() for t in text.split(",") if t.strip()] if text is not None else value
        if not isinstance(items, (list, tuple)):
            raise _Mismatch("a list")
        item = args[0] if args else Any
        out = [coerce(item, v, f"{path}[{i}]", error, nested) for i, v in enumerate(items)]
        return list(out) if origin is list else tuple(out)
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, Mapping):
            raise _Mismatch("a mapping of keys to values")
        item = args[1] if len(args) == 2 else Any
        return {str(k): coerce(item, v, f"{path}.{k}", error, nested) for k, v in value.items()}
    raise TypeError(f"option type {hint!r} of {path} is not handled")  # a bug in a dataclass's declaration


def parse_options(cls: type[OptionsT], raw: Mapping[str, Any] | OptionsT | None) -> OptionsT:
    """Build ``cls`` from a mapping (Python values or CLI strings), rejecting unknown keys with the
    closest known one and values that do not fit a field's declared type."""
    if raw is None:
        return cls()
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"options must be a mapping or {cls.__name__}, got {type(raw).__name__}",
                          fix=f"pass e.g. {{'{dataclasses.fields(cls)[0].name}': ...}}")  # type: ignore[arg-type]
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}",
                          fix=f"{did_you_mean(unknown[0], fields)}known options: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: coerce(hints[k], v, k) for k, v in raw.items()})


def options_dict(opts: Any) -> dict[str, Any]:
    """Options as plain JSON-able data for the manifest."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(opts).items()}


def parse_shapes(value: Mapping[str, Any] | str | None, option: str, example: str
                 ) -> dict[str, tuple[int, ...]]:
    """``"input_ids=1x128,attention_mask=1x128"`` (``;`` also separates) or a mapping of name to
    sizes -> ``{name: shape}``; every size a whole number of at least 1. ``option`` names the
    setting in errors and ``example`` shows a valid value."""
    if value is None:
        return {}
    items: list[tuple[str, Any]] = []
    if isinstance(value, str):
        for part in filter(None, (p.strip() for p in value.replace(";", ",").split(","))):
            name, sep, dims = part.partition("=")
            if not sep:
                raise ConfigError(f"{option} entry {part!r} is not NAME=DxD", fix=f"write e.g. {example}")
            items.append((name.strip(), dims.lower().split("x")))
    else:
        items = list(value.items())
    out: dict[str, tuple[int, ...]] = {}
    for name, dims in items:
        try:
            shape = tuple(int(d) for d in dims)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{option} for {name!r} is not a list of sizes: {dims!r}",
                              fix=f"give whole numbers, e.g. {example}") from e
        if not shape or any(d < 1 for d in shape):
            raise ConfigError(f"{option} for {name!r} has a size below 1: {list(shape)}",
                              fix="give every axis a fixed size of at least 1")
        out[name] = shape
    return out
