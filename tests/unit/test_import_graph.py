"""The registry's modules import each other without cycles (function-level imports included).

A cycle makes "which module owns this rule" a matter of import order; the layers contract in
pyproject.toml (import-linter) only sees the packages, not the modules inside ``registry``.
"""

from __future__ import annotations

import itertools

import grimp


def test_no_import_cycles_inside_registry() -> None:
    graph = grimp.build_graph("registry", "mergetools")
    modules = sorted(m for m in graph.modules if m == "registry" or m.startswith("registry."))
    cycles = [
        " -> ".join([*(graph.find_shortest_chain(importer=a, imported=b) or ()), a])
        for a, b in itertools.combinations(modules, 2)
        if graph.chain_exists(importer=a, imported=b) and graph.chain_exists(importer=b, imported=a)
    ]
    assert cycles == []
