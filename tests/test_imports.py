"""The layers of the harness, checked on the source: every import of every module (at module
level and inside functions) is read with `ast`, nothing is executed.

- `pretrain/` and `transfer/` import from `bench` only its ground floor, `bench.core`;
- `bench.core` imports nothing from the rest of `bench`, from `pretrain` or from `transfer`;
- `pretrain` and `transfer` never import each other;
- reporting (`bench.report`) never imports orchestration (`bench.study`), and orchestration calls
  reporting through its one entry point, the package `bench.report` (`write_reports`, `where`);
- `bench/` holds packages only: no module beside `__init__.py` and `__main__.py`;
- no two files import each other, directly or through a longer cycle. A package's `__init__`
  importing its own modules (so that they register) is not an edge: the modules import their
  registry from a module (`base.py`), never from the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "pretrain", "transfer")


def _modules() -> dict[str, Path]:
    mods = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The module file an imported dotted name lives in (the longest known prefix)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """Every harness module `module` imports, anywhere in the file. `from P import x` counts as
    an import of `P.x` when that is a module, else of `P`."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES and (resolved := _resolve(target)) and resolved != module:
                found.add(resolved)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _layer_violations(rule) -> list[str]:
    return sorted(f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets if rule(a, b))


def test_stages_import_only_the_ground_floor_of_bench():
    bad = _layer_violations(lambda a, b: a.split(".")[0] in ("pretrain", "transfer")
                            and _within(b, "bench") and not _within(b, "bench.core"))
    assert bad == [], "pretrain/ and transfer/ may import only bench.core:\n" + "\n".join(bad)


def test_ground_floor_imports_nothing_above_it():
    bad = _layer_violations(lambda a, b: _within(a, "bench.core") and not _within(b, "bench.core"))
    assert bad == [], "bench.core imports the rest of the harness:\n" + "\n".join(bad)


def test_stages_never_import_each_other():
    bad = _layer_violations(lambda a, b: {a.split(".")[0], b.split(".")[0]} == {"pretrain", "transfer"})
    assert bad == [], "\n".join(bad)


def test_reporting_never_imports_orchestration():
    bad = _layer_violations(lambda a, b: _within(a, "bench.report") and _within(b, "bench.study"))
    assert bad == [], "bench.report imports bench.study:\n" + "\n".join(bad)


def test_orchestration_calls_reporting_through_its_entry_point_only():
    bad = _layer_violations(lambda a, b: _within(a, "bench.study") and _within(b, "bench.report")
                            and b != "bench.report")
    assert bad == [], "bench.study imports a module of bench.report, not its entry point:\n" + "\n".join(bad)
    assert "bench.report" in GRAPH["bench.study.runner"]  # (the rule is not met by never calling it)


def test_the_harness_folder_holds_packages_only():
    loose = sorted(p.name for p in (REPO / "bench").glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert loose == [], f"modules directly in bench/: {loose}; put each on its floor (docs/layout.md)"


def _registration_edge(a: str, b: str) -> bool:
    """A package's __init__ importing one of its own modules."""
    return MODULES[a].name == "__init__.py" and b.startswith(a + ".")


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_two_files_import_each_other():
    graph = {a: {b for b in targets if not _registration_edge(a, b)} for a, targets in GRAPH.items()}
    cycles = import_cycles(graph)
    assert cycles == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles():
    # The checker itself: a three-module ring and a pair are found, a chain and a registration are not.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"g"}, "g": set()}
    assert import_cycles(graph) == [["a", "b", "c"], ["d", "e"]]


@pytest.mark.parametrize("module", ["transfer.datasets.kitti", "transfer.decoders.linear",
                                    "pretrain.methods.flow", "pretrain.sources.kitti_raw"])
def test_registered_modules_import_their_registry_from_a_module(module):
    package = module.rpartition(".")[0]
    assert package not in GRAPH[module], f"{module} imports its package {package}; import from {package}.base"


def test_the_import_reader_sees_function_level_imports():
    # bench.study.runner reaches pretrain.api only inside functions: a reader of module-level imports
    # alone would miss the edge.
    assert "pretrain.api" in GRAPH["bench.study.runner"]
