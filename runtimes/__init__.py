"""Runtime backends, one module each, all subclasses of :class:`edgekit.runtime.Model`.

A module registers its class with ``@RUNTIMES.register("name")``; third-party backends do the
same from a module named in the ``edgekit.runtimes`` entry-point group.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekit.registry import Registry

if TYPE_CHECKING:
    from edgekit.runtime import Model

RUNTIMES: Registry[str, type[Model]] = Registry("runtime", "edgekit.runtimes", "edgekit.runtimes")
