"""Torch-side optimizers that run before export: pruning, distillation.

Import the verbs from their modules (``from edgekit.optimize.prune import prune``): a lazy
package attribute named ``prune`` would be shadowed by the submodule of the same name.
Nothing here imports torch until a function is called.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it, imported on first use (no name equal to a submodule's)
_LAZY = {
    "prune_source": "edgekit.optimize.prune", "PruneResult": "edgekit.optimize.prune",
    "DistillResult": "edgekit.optimize.distill",
    "Recipe": "edgekit.optimize.recipe", "load_recipe": "edgekit.optimize.recipe",
    "dump_recipe": "edgekit.optimize.recipe", "run_recipe": "edgekit.optimize.pipeline",
    "SensitivityReport": "edgekit.optimize.sensitivity",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit.optimize' has no attribute {name!r}")


__all__ = sorted(_LAZY)
