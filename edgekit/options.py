"""Typed, frozen option dataclasses built from user mappings (Python dicts or CLI ``-O k=v``)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from edgekit.errors import ConfigError

OptionsT = TypeVar("OptionsT")


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """CLI values arrive as strings: turn them into the field's declared type."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if typing.get_origin(hint) is tuple:  # "a,b" -> ("a", "b"); checked first: its args are (str, ...)
        return tuple(t.strip() for t in text.split(",") if t.strip())
    args = typing.get_args(hint)
    kinds = [a for a in args if a is not type(None)] or [hint]
    if text.lower() in ("none", "null") and type(None) in args:
        return None
    for kind in kinds:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
        elif kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                continue
        elif typing.get_origin(kind) is tuple:
            return tuple(t.strip() for t in text.split(",") if t.strip())
        elif kind is str:
            return text
    raise ConfigError(f"option {name}={value!r} is not a valid {hint}", fix=f"give {name} a {hint}")


def parse_options(cls: type[OptionsT], raw: Mapping[str, Any] | OptionsT | None) -> OptionsT:
    """Build ``cls`` from a mapping, rejecting unknown keys with the list of known ones."""
    if raw is None:
        return cls()
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"options must be a mapping or {cls.__name__}, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} option(s): {', '.join(unknown)}",
                          fix=f"known options: {', '.join(sorted(fields))}")
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in raw.items()})


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
