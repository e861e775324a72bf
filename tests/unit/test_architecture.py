"""The house plan holds: no import cycle between wellfed's modules or between its rooms.

The imports are read from the source (``ast``), module-level and function-level alike: a
lazy import inside a function still ties two rooms together. A room is a top-level module or
package of ``wellfed`` (``wellfed.doctor._probe`` is in the room ``doctor``). See
docs/architecture.md for what each room may import.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import wellfed

SRC = Path(wellfed.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = ["wellfed", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _imports() -> dict[str, set[str]]:
    """module -> the wellfed modules it imports (``from pkg import mod`` counts as pkg.mod)."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    targets.append(sub if sub in modules else module)
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "wellfed"


def test_no_import_cycle_between_modules() -> None:
    graph = _imports()
    # A package's __init__ importing its own submodules is how a package is built, not a cycle.
    within = {
        a: {b for b in bs if not (_room(a) == _room(b) and a == b.rpartition(".")[0])}
        for a, bs in graph.items()
    }
    assert _cycles(within) == []


def test_no_import_cycle_between_rooms() -> None:
    rooms: dict[str, set[str]] = defaultdict(set)
    for a, bs in _imports().items():
        for b in bs:
            if _room(a) != _room(b) and "wellfed" not in (_room(a), _room(b)):
                rooms[_room(a)].add(_room(b))
    assert _cycles(rooms) == [], dict(rooms)


def test_the_walker_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
