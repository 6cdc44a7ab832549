"""The project's import graph, read from the source (ast): which first-party module imports
which, at module level or inside functions. The rooms test (tests/test_rooms.py) checks the
directions and the absence of cycles against it."""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

from .servers import ROOT

# The top-level packages of this repository (tests/ and scripts/ are directories of modules).
PACKAGES = (
    "common",
    "runtime",
    "vision",
    "modelbuild",
    "predictor",
    "transformer",
    "batch",
    "edge",
    "groundtruth",
    "rollout",
    "bench",
    "harness",
)


def module_name(path: Path) -> str:
    """`predictor/model.py` -> `predictor.model`; a package's `__init__.py` -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(roots: Iterable[str] = (*PACKAGES, "tests", "scripts")) -> Iterator[Path]:
    """Every .py file under `roots`."""
    for root in roots:
        yield from sorted((ROOT / root).rglob("*.py"))


def imports_of(path: Path) -> set[str]:
    """The absolute names `path` imports anywhere in it (relative imports resolved); for
    `from X import Y` both X and X.Y (Y may be a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    """{module: first-party modules it imports}, over every package, tests and scripts."""
    files = list(source_files())
    known = {module_name(path) for path in files}
    edges: dict[str, set[str]] = {}
    for path in files:
        edges[module_name(path)] = {target for target in imports_of(path) if target in known} - {
            module_name(path)
        }
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every first-party module `start` imports, directly or not (itself included)."""
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return seen
