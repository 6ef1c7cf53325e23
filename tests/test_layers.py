"""Import rules read from the source: no import cycles at module level (only ones inside
``if TYPE_CHECKING:`` remain), and no module imports another package's ``_private`` module.

Both checks parse the files (nothing is imported), and both are shown to catch a planted violation.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# import name -> folder: converters/ and runtimes/ install as edgekit.converters / edgekit.runtimes
EDGEKIT = {"edgekit": REPO / "edgekit", "edgekit.converters": REPO / "converters",
           "edgekit.runtimes": REPO / "runtimes"}
# code that imports edgekit from outside: it may use public names only
CLIENTS = {"tests": REPO / "tests", "bench": REPO / "bench", "samples": REPO / "samples"}


def modules(roots: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under each root."""
    out: dict[str, Path] = {}
    for prefix, base in roots.items():
        for f in sorted(base.rglob("*.py")):
            parts = list(f.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([prefix, *parts])] = f
    return out


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(tree: ast.Module, name: str, is_package: bool, *, top_level: bool) -> Iterator[tuple[str, str | None]]:
    """``(module, imported name or None)`` for each import; ``top_level``: only what runs when the
    module is imported (not function bodies, not ``if TYPE_CHECKING:``)."""

    def walk(nodes: list[ast.stmt]) -> Iterator[tuple[str, str | None]]:
        for node in nodes:
            if isinstance(node, ast.Import):
                yield from ((a.name, None) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                yield from ((base, a.name) for a in node.names)
            elif isinstance(node, ast.If) and _type_checking(node.test):
                yield from walk(node.orelse if top_level else node.body + node.orelse)
            elif top_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            elif top_level and isinstance(node, ast.ClassDef):
                yield from walk(node.body)
            else:
                yield from walk([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)])

    return walk(tree.body)


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``files`` its top level imports."""
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        for module, attr in imports(ast.parse(path.read_text()), name, path.name == "__init__.py", top_level=True):
            if attr and f"{module}.{attr}" in files:
                deps.add(f"{module}.{attr}")
            elif module in files:
                deps.add(module)
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def private_imports(files: dict[str, Path], clients: tuple[str, ...] = ("tests",)) -> list[str]:
    """``importer -> what`` for every import (anywhere in the file) of a ``_private`` module from
    outside the package that owns it, and, in ``clients`` (the tests), of a ``_private`` name from
    any other module: a test uses public names only, and tests share through conftest."""
    bad = []
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        for module, attr in imports(ast.parse(path.read_text()), name, is_package, top_level=False):
            if "." not in module and f"{here}.{module}" in files:  # a script's sibling (bench/_common.py)
                module = f"{here}.{module}"
            parts = module.split(".") + ([attr] if attr and attr != "*" else [])
            for i, part in enumerate(parts):
                if not part.startswith("_") or part.startswith("__"):
                    continue
                what, owner = ".".join(parts[:i + 1]), ".".join(parts[:i])
                outside = here != owner and not here.startswith(owner + ".")
                if (what in files and outside) or (
                        what not in files and name.split(".")[0] in clients and owner != name):
                    bad.append(f"{name} -> {what}")
                break
    return bad


def test_no_import_cycles_outside_type_checking() -> None:
    graph = import_graph(modules(EDGEKIT))
    assert len(graph) > 100 and "edgekit.runtimes.onnxruntime" in graph
    assert "edgekit.runtime" in graph["edgekit.runtimes.onnxruntime"]  # the graph sees real edges
    assert cycles(graph) == []


def test_no_import_of_another_packages_private_module() -> None:
    assert private_imports(modules({**EDGEKIT, **CLIENTS})) == []


def _plant(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return modules({"pkg": tmp_path / "pkg", "tests": tmp_path / "tests"})


def test_the_checks_catch_planted_violations(tmp_path: Path) -> None:
    files = _plant(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",  # a -> b -> a at import time: a real cycle
        "pkg/b.py": "import pkg.a\n",
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.d import D\n",
        "pkg/d.py": "from pkg.c import C\n",  # c -> d only for type checkers: allowed
        "pkg/e.py": "def f():\n    from pkg.f import g\n",  # deferred to a call: not an import-time cycle
        "pkg/f.py": "from pkg.e import f\n",
        "pkg/sub/__init__.py": "from ._impl import x\n",  # a package uses its own private module
        "pkg/sub/_impl.py": "x = 1\n",
        "pkg/g.py": "def h():\n    from pkg.sub._impl import x\n",  # another package's private module
        "pkg/h.py": "from pkg.e import _helper\n",  # a private name inside the package: its business
        "tests/test_x.py": "from pkg.sub import _hidden\nfrom pkg.sub._impl import x\n",
        "tests/test_y.py": "from tests.test_x import _fixture\nfrom tests.conftest import shared\n",
    })
    assert cycles(import_graph(files)) == [["pkg.a", "pkg.b"]]
    assert private_imports(files) == ["pkg.g -> pkg.sub._impl", "tests.test_x -> pkg.sub._hidden",
                                      "tests.test_x -> pkg.sub._impl", "tests.test_y -> tests.test_x._fixture"]
