"""The package's shape: no import cycle between modules (function-level imports count) and no module over 800
lines. The layer order itself is the import-linter contract in `pyproject.toml` (`lint-imports`, run by
`scripts/test.sh`)."""

from __future__ import annotations

import pathlib

import pytest

import hf_decoding

grimp = pytest.importorskip("grimp")

PACKAGE = pathlib.Path(hf_decoding.__file__).resolve().parent
MAX_LINES = 800


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    adjacency = {
        module: sorted(m for m in graph.find_modules_directly_imported_by(module) if m.startswith("hf_decoding"))
        for module in graph.modules
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(adjacency):
        if root in index:
            continue
        work = [(root, iter(adjacency[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(adjacency.get(child, ()))))
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
                    components.append(sorted(component))
    return components


def test_cycle_finder_finds_a_cycle():
    class Graph:
        def __init__(self):
            self.modules = {"hf_decoding.a", "hf_decoding.b", "hf_decoding.c"}
            self.edges = {
                "hf_decoding.a": {"hf_decoding.b"},
                "hf_decoding.b": {"hf_decoding.a"},
                "hf_decoding.c": set(),
            }

        def find_modules_directly_imported_by(self, module):
            return self.edges[module]

    assert _cycles(Graph()) == [["hf_decoding.a", "hf_decoding.b"]]


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("hf_decoding", cache_dir=None)
    assert _cycles(graph) == []


def test_no_module_over_800_lines():
    sizes = {
        path.relative_to(PACKAGE).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert sizes, "no modules found"
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
