"""The library's modules import each other without cycles, and evalkit never imports metaeval.

Every import statement of every module under ``evalkit/`` and ``metaeval/`` counts, wherever it
is: at the top, inside a function (a "local" import) or under ``if TYPE_CHECKING:``. A cycle
hidden in a local import is still two modules that cannot be understood (or tested, or split)
one without the other.

How names become modules:

* ``import a.b.c`` imports the longest prefix that is a module of the library (``a.b.c``, else
  ``a.b``, ...); ``from pkg import name`` imports ``pkg.name`` when that is a module, else
  ``pkg`` itself; relative imports are resolved against the importing module's package.
* A package is its ``__init__``: ``evalkit/__init__.py`` re-exporting ``evalkit.evaluate``
  is an edge ``evalkit -> evalkit.evaluate``, and a submodule's ``import evalkit`` an edge to
  that facade. Importing ``evalkit.x`` is *not* counted as an import of ``evalkit`` (Python
  runs the parent package first, but every submodule would then sit in a cycle with its
  package, which says nothing about layering); ``from . import _rng`` is an edge to
  ``evalkit._rng``, not to ``evalkit``.
* A package's lazily loaded submodules (the names listed in its ``_LAZY_SUBMODULES``, which its
  module ``__getattr__`` imports on first access) and ``importlib.import_module("literal")``
  calls count as imports too: they are local imports spelt differently.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("evalkit", "metaeval")

#: ``{module: {imported module: [line, ...]}}``
Graph = dict[str, dict[str, list[int]]]


# ---------------------------------------------------------------------- building the graph
def discover_modules(root: Path, packages: Iterable[str]) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (file, is_package)}`` for every ``.py`` file under ``packages``."""
    modules: dict[str, tuple[Path, bool]] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            modules[".".join(parts)] = (path, is_package)
    return modules


def _known_prefix(name: str, modules: Mapping[str, object]) -> str | None:
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _relative_base(module: str, is_package: bool, level: int, name: str | None) -> str:
    package = module if is_package else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name}" if name else package


def _lazy_submodules(tree: ast.Module) -> list[tuple[str, int]]:
    """Names a package's ``__init__`` lists in ``_LAZY_SUBMODULES = ("a", "b", ...)``."""
    out = []
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name)
                                                 and t.id == "_LAZY_SUBMODULES"
                                                 for t in node.targets)
                and isinstance(node.value, ast.Tuple | ast.List)):
            out += [(elt.value, node.lineno) for elt in node.value.elts
                    if isinstance(elt, ast.Constant) and isinstance(elt.value, str)]
    return out


def module_imports(module: str, path: Path, is_package: bool,
                   modules: Mapping[str, object]) -> dict[str, list[int]]:
    """The library modules ``module`` imports, with the lines that import them."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[str | None, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(_known_prefix(alias.name, modules), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (_relative_base(module, is_package, node.level, node.module) if node.level
                    else node.module or "")
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.append((full if full in modules else _known_prefix(base, modules),
                              node.lineno))
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "import_module"))):
            target = node.args[0].value
            if target.startswith("."):
                level = len(target) - len(target.lstrip("."))
                target = _relative_base(module, is_package, level, target.lstrip(".") or None)
            found.append((_known_prefix(target, modules), node.lineno))
    if is_package:
        found += [(f"{module}.{name}" if f"{module}.{name}" in modules else None, line)
                  for name, line in _lazy_submodules(tree)]
    out: dict[str, list[int]] = {}
    for target, line in found:
        if target is not None and target != module:
            out.setdefault(target, []).append(line)
    return out


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> Graph:
    """The module graph of ``packages`` (see the module docstring for what counts)."""
    modules = discover_modules(root, packages)
    return {name: module_imports(name, path, is_package, modules)
            for name, (path, is_package) in modules.items()}


# ---------------------------------------------------------------------- checking it
def tangles(graph: Mapping[str, Mapping[str, object]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each module of one reaches
    every other through imports): Tarjan's algorithm, iterative, in sorted order so that the
    answer is deterministic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
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
                    components.append(sorted(component))
    return components


def find_cycles(graph: Mapping[str, Mapping[str, object]]) -> list[list[str]]:
    """One shortest cycle ``[a, b, ..., a]`` in each of the graph's :func:`tangles`."""
    return [_cycle_in(graph, set(c)) for c in tangles(graph)]


def _cycle_in(graph: Mapping[str, Mapping[str, object]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first search)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt not in component:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def describe_cycle(graph: Graph, cycle: list[str]) -> str:
    """``a -> b (line 12) -> a (lines 3, 40)``: the path with the lines of each import."""
    steps = [cycle[0]]
    for a, b in itertools.pairwise(cycle):
        lines = sorted(set(graph[a][b]))
        steps.append(f"{b} (line{'s' if len(lines) > 1 else ''} "
                     f"{', '.join(map(str, lines))} of {a})")
    return " -> ".join(steps)


def without_edges(graph: Graph, edges: Iterable[tuple[str, str]]) -> Graph:
    dropped = set(edges)
    return {a: {b: lines for b, lines in targets.items() if (a, b) not in dropped}
            for a, targets in graph.items()}


def assert_acyclic(graph: Graph) -> None:
    """Fail with each cycle's path and import lines (and the modules tangled with it)."""
    found = tangles(graph)
    assert not found, "import cycles:\n" + "\n".join(
        f"  {describe_cycle(graph, _cycle_in(graph, set(c)))}"
        + (f"\n    (tangled: {', '.join(c)})" if len(c) > 2 else "") for c in found)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


# ---------------------------------------------------------------------- the checks themselves
def test_finds_every_module_and_kind_of_import(graph):
    """The graph sees local, TYPE_CHECKING, relative and lazy imports (guards the checker)."""
    assert {"evalkit", "evalkit.evaluate", "evalkit.metrics.base", "metaeval.engine"} <= set(graph)
    # from . import _rng: the submodule, not the package
    assert "evalkit._rng" in graph["evalkit.evaluate"]
    assert "evalkit" not in graph["evalkit.evaluate"]
    # the package's eager and lazy submodules
    assert {"evalkit.evaluate", "evalkit.leaderboard", "evalkit.cli"} <= set(graph["evalkit"])
    # a local import inside a function (the metric base class imports explain() on demand)
    assert "evalkit.explain" in graph["evalkit.metrics.base"]


def test_the_checker_reports_a_cycle_with_its_lines(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from .b import g\ndef f():\n    return 1\n")
    (pkg / "b.py").write_text("def g():\n    from . import a\n    return a.f()\n")
    (pkg / "c.py").write_text("import pkg.b\n")
    g = import_graph(tmp_path, ["pkg"])
    assert g["pkg"] == {"pkg.a": [1]} and g["pkg.c"] == {"pkg.b": [1]}
    assert find_cycles(g) == [["pkg.a", "pkg.b", "pkg.a"]]
    with pytest.raises(AssertionError, match=r"pkg\.a -> pkg\.b \(line 3 of pkg\.a\) -> "
                                             r"pkg\.a \(line 2 of pkg\.b\)"):
        assert_acyclic(g)
    assert_acyclic(without_edges(g, [("pkg.b", "pkg.a")]))


def test_no_import_cycles(graph):
    """No cycle at all, local and TYPE_CHECKING imports included."""
    assert_acyclic(graph)


def test_evalkit_never_imports_metaeval(graph):
    offending = {(a, b): lines for a, targets in graph.items() if a.split(".")[0] == "evalkit"
                 for b, lines in targets.items() if b.split(".")[0] == "metaeval"}
    assert not offending, f"evalkit imports metaeval: {offending}"


def test_ranking_is_pure(graph):
    """The ranking rule depends on nothing of the library but validation helpers."""
    assert set(graph["evalkit.ranking"]) <= {"evalkit._validation"}


def test_views_do_not_import_the_data_object(graph):
    """Leaderboards and plots read results by duck typing; Results reaches them, not the
    reverse."""
    for view in ("evalkit.leaderboard", "evalkit.plotting", "evalkit.ranking"):
        assert "evalkit.results" not in graph[view], view


def test_executors_know_nothing_of_evaluate(graph):
    """The driver and the executors sit below evaluate(): they run any planned evaluation."""
    assert "evalkit.evaluate" not in graph["evalkit.executors"]
