"""Optional dependencies: probe without importing, import with an error naming the extra."""

from __future__ import annotations

import importlib
import importlib.util
from importlib import metadata
from types import ModuleType

from edgekit.errors import MissingDependencyError


def available(module: str) -> bool:
    """True when ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` with the install line."""
    if not available(module):
        what = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"the optional package {module!r} is needed{what} but is not installed",
            fix=f"pip install 'edgekit[{extra}]'",
        )
    return importlib.import_module(module)


def version(distribution: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
