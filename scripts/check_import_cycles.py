#!/usr/bin/env python3
"""Fail on an import cycle between foxtive's own Python modules.

The graph takes every ``import``/``from`` of a foxtive module: at module level
(``if TYPE_CHECKING:`` included) and inside functions, so a cycle cannot hide
behind a function-level import. An import of a foxtive module inside a
function or class is itself an error: each module imports only downward, at
the top. Exits 1 with every finding printed.

    python scripts/check_import_cycles.py [python/foxtive]
"""

from __future__ import annotations

import ast
import os
import sys
from pathlib import Path

PACKAGE = "foxtive"


def module_names(root: Path) -> dict[str, Path]:
    """``foxtive.x`` -> file, for the package's .py files and compiled modules."""
    names: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix not in (".py", ".pyi", ".so", ".pyd"):
            continue
        parts = [PACKAGE, *path.relative_to(root).parts]
        parts[-1] = parts[-1].split(".", 1)[0]
        if parts[-1] == "__init__":
            parts.pop()
        names.setdefault(".".join(parts), path)
    return names


def imported(tree: ast.Module, here: str, is_package: bool,
             known: dict[str, Path]) -> list[tuple[str, ast.stmt, bool]]:
    """(foxtive module, statement, inside a function or class) per import."""
    out: list[tuple[str, ast.stmt, bool]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
            if isinstance(child, ast.Import):
                out.extend((a.name, child, nested) for a in child.names
                           if a.name.split(".")[0] == PACKAGE)
            elif isinstance(child, ast.ImportFrom):
                out.extend((m, child, nested) for m in targets(child, here, is_package, known))
            visit(child, inner)

    visit(tree, False)
    return out


def targets(node: ast.ImportFrom, here: str, is_package: bool,
            known: dict[str, Path]) -> list[str]:
    if node.level:
        base = here.split(".")
        drop = node.level - 1 if is_package else node.level
        base = base[:len(base) - drop]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != PACKAGE:
        return []
    # ``from . import demo`` imports the module foxtive.demo, not a name of foxtive.
    subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in known]
    rest = len(subs) < len(node.names)
    return subs + ([source] if rest or not subs else [])


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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
            if len(component) > 1 or v in graph.get(v, ()):
                cycles.append(path_within(graph, set(component)) + sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def path_within(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A concrete cycle through the component's first module (breadth first)."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, ()) & component):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                queue.append(w)
    return [start, start]


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else Path(__file__).parent.parent / "python" / PACKAGE)
    known = module_names(root)
    graph: dict[str, set[str]] = {}
    problems: list[str] = []
    for name, path in known.items():
        if path.suffix != ".py":
            continue
        rel = os.path.relpath(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        edges = graph.setdefault(name, set())
        for target, node, nested in imported(tree, name, path.name == "__init__.py", known):
            if target != name:
                edges.add(target)
            if nested:
                problems.append(f"{rel}:{node.lineno}: function-level import of {target} "
                                "(import it at the top; if that makes a cycle, move code down)")
    for found in find_cycles(graph):
        cut = found.index(found[0], 1) + 1
        cycle, tangle = found[:cut], found[cut:]
        problems.append("import cycle: " + " -> ".join(cycle)
                        + (f" (modules tangled with it: {', '.join(tangle)})"
                           if len(tangle) > len(cycle) - 1 else ""))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"no import cycles among {len(graph)} {PACKAGE} modules")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
