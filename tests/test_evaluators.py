"""Metrics live in the shared ``edgekit.registry.Registry``: built-ins and plugins alike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.errors import ConfigError
from edgekit.evaluate import EVALUATORS, CosineToOriginal, get_evaluator
from edgekit.registry import Registry
from tests.conftest import install_runtime_plugin

PLUGIN = """
from edgekit.evaluate import CosineToOriginal, register


@register("strict-cosine")
class StrictCosine(CosineToOriginal):
    pass
"""

CHILD = """
from edgekit.evaluate import EVALUATORS, get_evaluator
from edgekit.optimize.recipe import load_recipe

ev = get_evaluator("strict-cosine")
recipe = load_recipe("schema: edgekit.recipe/1\\neval: {metric: strict-cosine}")
print(type(ev).__name__, ev.name, ",".join(EVALUATORS), recipe.eval.metric)
"""


def test_built_in_metrics_are_registry_entries() -> None:
    assert isinstance(EVALUATORS, Registry)
    assert list(EVALUATORS)[:3] == ["accuracy", "perplexity", "cosine"]
    assert EVALUATORS.get("cosine") is CosineToOriginal and get_evaluator("cosine").name == "cosine"
    with pytest.raises(ConfigError) as info:
        get_evaluator("cosin")
    assert info.value.problem == "unknown metric 'cosin'"
    assert info.value.fix.startswith("did you mean 'cosine'? use one of: accuracy, perplexity, cosine")


def test_a_plugin_metric_comes_in_through_its_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_runtime_plugin(tmp_path, monkeypatch, "edgekit_strict_metric", PLUGIN, group="edgekit.evaluators")
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["StrictCosine", "strict-cosine", "accuracy,perplexity,cosine,strict-cosine",
                                  "strict-cosine"]
