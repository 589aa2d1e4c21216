"""The jaxrec package's import graph has no cycle.

A cycle makes the import order matter (a module half-initialised when the other reads it) and
hides which layer owns what. The graph is read from the source with `ast`: every `import` and
`from ... import` in a module, function-level ones included, resolved to the jaxrec module it
names (`from jaxrec.data import features` is jaxrec.data.features, `from jaxrec.eval import
evaluate_ranking` is the package jaxrec.eval). Imports under `if TYPE_CHECKING:` count too: a
type-only import is still a dependency of the design. `importlib.import_module` calls with a
computed name (models' registry, optional third-party modules) are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import jaxrec

PACKAGE_DIR = Path(jaxrec.__file__).parent
# Entry points (python -m ...): they import the library, which never imports them.
COMMAND_LINE = {
    "jaxrec.train",
    "jaxrec.evaluate",
    "jaxrec.plan",
    "jaxrec.report",
    "jaxrec.export",
    "jaxrec.serve",
    "jaxrec.launch_local",
    "jaxrec.data.__main__",
}


def module_name(path: Path) -> str:
    parts = ("jaxrec", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.Module, module: str, is_package: bool) -> set[tuple[str, str | None]]:
    """(source, name) of each import in the module, relative sources made absolute: name is the
    `y` of `from X import y`, None for `import X`."""
    imports = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                parts = module.split(".")
                base = parts[: len(parts) - node.level + is_package]
                source = ".".join(base + ([node.module] if node.module else []))
            imports.update((source, alias.name) for alias in node.names)
    return imports


def import_graph() -> dict[str, set[str]]:
    """jaxrec module -> the jaxrec modules it imports. `from X import y` is an edge to X.y when
    that is a module, else to X. A parent package whose __init__ Python runs first is not an edge:
    a package that re-exports its submodules would otherwise close a harmless loop with each."""
    paths = {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}
    graph = {}
    for module, path in paths.items():
        edges = set()
        for source, name in imported_names(ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py"):
            target = f"{source}.{name}" if f"{source}.{name}" in paths else source
            if target in paths and target != module:
                edges.add(target)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, first repeated last) through each strongly connected
    component of more than one module (Tarjan's algorithm, iterative). A component can hold more
    cycles than the one shown: `describe` lists its modules."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return [cycle_in(graph, component) for component in components]


def cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first, inside it)."""
    start = min(component)
    parents, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node] & component):
                if child == start:
                    path = [node]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle in component {sorted(component)}")


def test_graph_resolves_absolute_relative_and_function_level_imports():
    graph = import_graph()
    assert "jaxrec.data.types" in graph["jaxrec.data.dataset"]  # from jaxrec.data.types import ...
    assert "jaxrec.data.features" in graph["jaxrec.data.dataset"]  # from jaxrec.data import features
    assert "jaxrec.data.fetch" in graph["jaxrec.data.dataset"]  # inside read_raw()
    assert "jaxrec.eval" in graph["jaxrec.train_lib"]  # from jaxrec.eval import evaluate_ranking_sweeps
    assert "jaxrec.eval" not in graph["jaxrec.eval.evaluator"]  # from jaxrec.eval import metrics


def test_find_cycles_reports_each_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def describe(graph: dict[str, set[str]], cycle: list[str]) -> str:
    """The cycle, then every module that can reach and be reached from it, with its edges there."""
    component = {m for m in graph if cycle[0] in reachable(graph, m) and m in reachable(graph, cycle[0])}
    edges = "".join(f"\n    {m} imports {', '.join(sorted(graph[m] & component))}" for m in sorted(component))
    return " -> ".join(cycle) + edges


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for child in graph[todo.pop()] - seen:
            seen.add(child)
            todo.append(child)
    return seen


def test_jaxrec_import_graph_has_no_cycle():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles in jaxrec:\n" + "\n".join(describe(graph, cycle) for cycle in cycles)


def test_layers_import_downwards():
    """No library module imports a command-line module, and the data layer imports no evaluation
    code (evaluation reads data)."""
    graph = import_graph()
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if (target in COMMAND_LINE and module not in COMMAND_LINE)
        or (module.startswith("jaxrec.data") and target.startswith("jaxrec.eval"))
    )
    assert not upward, "imports against the layering:\n" + "\n".join(upward)
