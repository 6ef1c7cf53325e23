"""A registry keyed by a name or enum, filled by decorators beside each implementation.

Built-in implementations live in a package (``edgekit.converters``, ``edgekit.runtimes``) whose
modules register themselves on import, or in one module (``edgekit.evaluate``); importing them is cheap because heavy libraries are
imported inside their functions. Third parties register through an entry-point group.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Hashable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

from edgekit.errors import ConfigError

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Registry(Generic[K, T]):
    """Maps keys to implementations; discovers built-ins and entry points on first use."""

    def __init__(self, kind: str, package: str, entry_point_group: str) -> None:
        self.kind = kind
        self._package = package
        self._group = entry_point_group
        self._items: dict[K, T] = {}
        self._discovered = False

    def register(self, key: K) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register(Format.ONNX)`` above a class."""

        def deco(obj: T) -> T:
            self._items[key] = obj
            return obj

        return deco

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self._package)
        for info in pkgutil.iter_modules(getattr(pkg, "__path__", ())):  # a module registers only its own
            if not info.name.startswith("_"):
                importlib.import_module(f"{self._package}.{info.name}")
        for ep in metadata.entry_points(group=self._group):
            ep.load()  # the loaded module registers itself, like the built-ins

    def get(self, key: K) -> T:
        self._discover()
        try:
            return self._items[key]
        except KeyError:
            known = ", ".join(str(k) for k in self._items) or "none"
            raise ConfigError(
                f"no {self.kind} registered for {key!s}",
                fix=f"use one of: {known} (or install a plugin that registers it)",
            ) from None

    def items(self) -> Iterator[tuple[K, T]]:
        self._discover()
        return iter(list(self._items.items()))

    def __iter__(self) -> Iterator[K]:
        """The registered keys, built-ins first."""
        self._discover()
        return iter(list(self._items))

    def __contains__(self, key: object) -> bool:
        self._discover()
        return key in self._items
