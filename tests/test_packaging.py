"""Layout and packaging: one namespace, light imports, extras."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnxruntime", "onnx", "openvino", "ai_edge_litert", "llama_cpp", "nncf", "transformers")


def _py(code: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_import_edgekit_loads_no_heavy_backend(tmp_path: Path) -> None:
    code = ("import sys, edgekit, edgekit.runtime, edgekit.runtimes.onnxruntime, edgekit.harness, edgekit.cli; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    assert _py(code, tmp_path) == ""


def test_converters_and_runtimes_install_under_the_edgekit_namespace(tmp_path: Path) -> None:
    # run from outside the repository, so only the installed mapping can resolve them
    out = _py("import edgekit.converters.onnx as c, edgekit.runtimes.onnxruntime as r; "
              "print(c.__file__); print(r.__file__)", tmp_path).splitlines()
    assert Path(out[0]) == ROOT / "converters" / "onnx" / "__init__.py"
    assert Path(out[1]) == ROOT / "runtimes" / "onnxruntime.py"


def test_runtime_extra_needs_no_torch() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    runtime_only = " ".join(meta["dependencies"] + extras["onnxruntime"])
    assert "torch" not in runtime_only and "transformers" not in runtime_only
    assert any(d.startswith("torch") for d in extras["convert"])
    assert "onnxruntime" in extras["all"][0] and "convert" in extras["all"][0]


def test_registries_list_the_builtin_backends() -> None:
    from edgekit.converters import CONVERTERS
    from edgekit.runtimes import RUNTIMES
    from edgekit.types import Format

    assert Format.ONNX in CONVERTERS
    assert "onnxruntime" in RUNTIMES


def test_every_package_directory_is_listed_for_the_wheel() -> None:
    """A sub-package missing from ``[tool.setuptools] packages`` works editable and vanishes from a wheel."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    roots = {"edgekit": ROOT / "edgekit", "edgekit.converters": ROOT / "converters",
             "edgekit.runtimes": ROOT / "runtimes"}
    found = set()
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            rel = init.parent.relative_to(folder).parts
            found.add(".".join((name, *rel)) if rel else name)
    assert found - listed == set()
