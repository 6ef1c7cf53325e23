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
