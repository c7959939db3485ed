"""The manhole's modules import each other without cycles (issue 13: ``_shell`` and ``_prompt`` did).

Every import counts, wherever it is written: at the top, inside a function (a lazy import), or under
``TYPE_CHECKING``. A cycle of lazy imports still ties the modules together: neither can be understood, tested or
replaced alone.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tapster.manhole

PACKAGE = "tapster.manhole"
FOLDER = Path(tapster.manhole.__file__).parent


def _module_names() -> dict[str, Path]:
    names = {PACKAGE: FOLDER / "__init__.py"}
    for path in FOLDER.glob("*.py"):
        if path.name != "__init__.py":
            names[f"{PACKAGE}.{path.stem}"] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the manhole modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    modules = _module_names()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = PACKAGE
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            graph[name].update(target for target in targets if target in modules and target != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_lazy_and_type_checking_imports() -> None:
    """The checker itself: it finds _shell's lazy import of _prompt and a cycle made up for the purpose."""
    graph = import_graph()
    assert f"{PACKAGE}._prompt" in graph[f"{PACKAGE}._shell"]  # imported inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_manhole_modules_import_each_other_without_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
