"""The package's import graph: no cycles, and no layer importing one it must not depend on.

Every ``import`` / ``from ... import`` statement in every module counts, wherever it is: at module
level, inside a function, or under ``if TYPE_CHECKING:`` (a type-only cycle is still a cycle a
reader has to untangle). The graph is read from the source with :mod:`ast`, nothing is imported,
and the package walked is the one ``import rpclatch`` finds (so ``PYTHONPATH=<other tree>`` checks
another tree).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest

import rpclatch

# package -> packages it must never import (the protocol layers do not depend on what is built on
# them: ipsec and rpc are independent of each other and of everything above; the simulator is
# built on ipsec and rpc, never the other way round)
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "rpclatch.ipsec": (
        "rpclatch.netsim",
        "rpclatch.rpc",
        "rpclatch.gss",
        "rpclatch.connect",
        "rpclatch.demo",
        "rpclatch.nfs4",
        "rpclatch.commands",
        "rpclatch.cli",
    ),
    "rpclatch.rpc": (
        "rpclatch.gss",
        "rpclatch.ipsec",
        "rpclatch.netsim",
        "rpclatch.connect",
        "rpclatch.demo",
        "rpclatch.nfs4",
        "rpclatch.commands",
        "rpclatch.cli",
    ),
    "rpclatch.netsim": (
        "rpclatch.gss",
        "rpclatch.connect",
        "rpclatch.demo",
        "rpclatch.nfs4",
        "rpclatch.commands",
        "rpclatch.cli",
    ),
}


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package directory ``root``."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base) + (f".{node.module}" if node.module else "")
    else:
        target = node.module or ""
    # ``from pkg import name``: name may be a submodule (then that module is imported) or not
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (the most specific module each import names;
    a module importing its own parent package is not an edge: Python runs that package's
    ``__init__`` first anyway)."""
    files = module_files(root)
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(module, path.name == "__init__.py", node):
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != module and not module.startswith(f"{target}."):
                    graph[module].add(target)
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, pending = work[-1]
            if pending:
                w = pending.pop()
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, sorted(graph[w])))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component: list[str] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def forbidden_imports(
    graph: Mapping[str, set[str]], rules: Mapping[str, tuple[str, ...]]
) -> list[tuple[str, str]]:
    def inside(module: str, package: str) -> bool:
        return module == package or module.startswith(f"{package}.")

    return sorted(
        (m, t)
        for m, targets in graph.items()
        for t in targets
        for src, banned in rules.items()
        if inside(m, src)
        for dst in banned
        if inside(t, dst)
    )


PACKAGE_ROOT = Path(rpclatch.__file__).parent


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE_ROOT)


def test_the_walk_sees_the_whole_package(graph: dict[str, set[str]]) -> None:
    # a walk that found nothing would pass the checks below vacuously
    assert {
        "rpclatch.ipsec.engine",
        "rpclatch.ipsec.ulp",
        "rpclatch.rpc.client",
        "rpclatch.gss.client",
    } <= graph.keys()
    assert "rpclatch.ipsec.latch" in graph["rpclatch.ipsec.engine"]


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_layer_imports_what_it_must_not(graph: dict[str, set[str]]) -> None:
    found = forbidden_imports(graph, FORBIDDEN)
    assert not found, "forbidden imports:\n" + "\n".join(f"{m} -> {t}" for m, t in found)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_the_checks_catch_a_type_checking_cycle_and_a_forbidden_relative_import(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "low/__init__.py": "",
            "low/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.low.b import B\n",
            "low/b.py": "def f():\n    from . import a\n    from ..high import c\n",
            "high/__init__.py": "",
            "high/c.py": "from pkg.low.a import A\n",
        },
    )
    g = import_graph(root)
    assert cycles(g) == [["pkg.high.c", "pkg.low.a", "pkg.low.b"]]
    assert forbidden_imports(g, {"pkg.low": ("pkg.high",)}) == [
        ("pkg.low.b", "pkg.high"),
        ("pkg.low.b", "pkg.high.c"),
    ]
