"""The import graph of lasp_streams has no cycles, and every module imports (the layering
contracts themselves are import-linter's, in pyproject.toml, run by ``make lint`` and CI)."""

from __future__ import annotations

import importlib
import pkgutil

import grimp
import pytest

import lasp_streams

MODULES = sorted(
    info.name for info in pkgutil.walk_packages(lasp_streams.__path__, "lasp_streams.")
)


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports(module: str) -> None:
    """A module moved or renamed leaves no import line behind (import-linter and grimp
    ignore imports of modules that do not exist)."""
    importlib.import_module(module)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
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


def _chain(edges: dict[str, set[str]], component: list[str]) -> str:
    """One concrete import loop inside ``component``, for the failure message."""
    members = set(component)
    start = component[0]
    path = [start]
    seen = {start}
    node = start
    while True:
        nxt = sorted(m for m in edges[node] if m in members)
        if start in nxt and len(path) > 1:
            return " -> ".join([*path, start])
        fresh = [m for m in nxt if m not in seen]
        if not fresh:
            # A member we have visited closes a loop; print from there.
            back = next(m for m in nxt if m in seen)
            return " -> ".join([*path[path.index(back) :], back])
        node = fresh[0]
        path.append(node)
        seen.add(node)


def test_the_package_has_no_import_cycles() -> None:
    graph = grimp.build_graph("lasp_streams", cache_dir=None)
    edges = {
        module: {m for m in graph.find_modules_directly_imported_by(module) if m in graph.modules}
        for module in graph.modules
    }
    cycles = _cycles(edges)
    assert not cycles, "import cycles in lasp_streams:\n" + "\n".join(
        f"  {len(c)} modules: {_chain(edges, c)}" for c in cycles
    )


def test_the_cycle_check_names_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _chain(edges, ["a", "b", "c"]) == "a -> b -> c -> a"
