"""The modules of ``medkd3d.export`` import each other without cycles (module-level and function-level imports).

The graph is read from the source with ``ast``, so a lazy import inside a function counts like one at the top: a
cycle hidden behind a function-level import still means two modules that cannot be understood one without the
other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "medkd3d"


def _module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every dotted name an ``import`` or ``from ... import`` statement anywhere in ``tree`` may refer to."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # ``from pkg import submodule``
    return names


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for every module under ``package_dir``."""
    paths = {_module_name(p, package_dir): p for p in package_dir.rglob("*.py")}
    graph = {}
    for module, path in paths.items():
        names = _imported_names(ast.parse(path.read_text(encoding="utf-8")), module, path.name == "__init__.py")
        graph[module] = {name for name in names if name in paths and name != module}
    return graph


def _cycle_from(node: str, graph: dict[str, set[str]], path: list[str], finished: set[str]) -> list[str] | None:
    """A cycle reachable from ``node`` (depth-first; ``path`` is the current chain), or ``None``."""
    if node in path:
        return [*path[path.index(node) :], node]
    if node in finished:  # explored before without finding a cycle
        return None
    path.append(node)
    for successor in sorted(graph.get(node, ())):
        cycle = _cycle_from(successor, graph, path, finished)
        if cycle:
            return cycle
    path.pop()
    finished.add(node)
    return None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles (``[a, b, ..., a]``): at least one whenever the graph has any, none when it is acyclic."""
    cycles: list[list[str]] = []
    finished: set[str] = set()
    for start in sorted(graph):
        cycle = _cycle_from(start, graph, [], finished)
        if cycle:
            cycles.append(cycle)
            finished.update(cycle)  # report each cycle once; the test fails on the first anyway
    return cycles


def test_the_checker_finds_cycles_through_function_level_and_relative_imports(tmp_path: Path) -> None:
    package = tmp_path / "medkd3d" / "export"
    package.mkdir(parents=True)
    (tmp_path / "medkd3d" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from medkd3d.export.b import f\n")
    (package / "b.py").write_text("def f():\n    from . import c\n")
    (package / "c.py").write_text("def g():\n    import medkd3d.export.a\n")
    (package / "d.py").write_text("from medkd3d.export import a\n")  # imports into the cycle, is not part of it
    graph = import_graph(tmp_path / "medkd3d")
    assert graph["medkd3d.export.b"] == {"medkd3d.export", "medkd3d.export.c"}
    assert [set(c) for c in find_cycles(graph)] == [{"medkd3d.export.a", "medkd3d.export.b", "medkd3d.export.c"}]


@pytest.mark.parametrize("subpackage", ["medkd3d.export"])
def test_no_import_cycle_inside(subpackage: str) -> None:
    graph = import_graph()

    def within(name: str) -> bool:
        return name == subpackage or name.startswith(f"{subpackage}.")

    inside = {m: {n for n in deps if within(n)} for m, deps in graph.items() if within(m)}
    assert len(inside) > 10, "the package's modules were not found"
    assert find_cycles(inside) == [], "import cycles: " + "; ".join(" -> ".join(c) for c in find_cycles(inside))
