"""The package's layering (docs/architecture.md, "The folders"), read from every import statement of
every module, the ones inside functions included: components never import a stage, the store imports
nothing above it, and a stage imports no other stage except where it chains them."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "logitcache"

STAGES = {"prepare", "train_teacher", "dump", "train_student", "evaluate", "bench", "export", "run",
          "report", "export_targets"}
BASE = {"errors", "files", "faults", "progress", "targets", "runtime"}  # leaf modules every layer may use
COMPONENT_FOLDERS = {"data", "teachers", "training", "store", "integrations"}
# a stage may import these other stages: run and bench chain stages (a stage that is a package, dump/, is one stage)
CHAINS = {"run": STAGES, "bench": {"dump", "evaluate", "train_student"}}


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every logitcache module `path` imports (absolute names; `from . import x` names the submodule x)."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] in ("logitcache", "logitcache_cli")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] not in ("logitcache", "logitcache_cli"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                folder = root / candidate.replace(".", "/")
                is_module = folder.with_suffix(".py").exists() or (folder / "__init__.py").exists()
                found.add(candidate if is_module else base)
    return found - {name}


def layer_of(module: str) -> str:
    """'stage:NAME', 'component:FOLDER', 'base', 'config' or 'package' for a logitcache module."""
    parts = module.split(".")[1:]
    if not parts:
        return "package"
    if parts[0] in STAGES:
        return f"stage:{parts[0]}"
    if parts[0] in COMPONENT_FOLDERS:
        return f"component:{parts[0]}"
    if parts[0] in BASE:
        return "base"
    if parts[0] in ("config", "_settings", "recipes"):
        return "config"
    raise AssertionError(f"{module} belongs to no layer: add it to tests/test_layers.py and docs/architecture.md")


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_every_module_has_a_layer_and_imports_resolve():
    for name, imported in GRAPH.items():
        layer_of(name)
        for target in imported:
            assert target.startswith("logitcache_cli") or target in MODULES, (name, target)


def test_the_library_never_imports_the_cli():
    assert {name: sorted(t for t in imported if t.startswith("logitcache_cli"))
            for name, imported in GRAPH.items() if any(t.startswith("logitcache_cli") for t in imported)} == {}


@pytest.mark.parametrize("module", sorted(n for n in MODULES if not layer_of(n).startswith("stage:")))
def test_components_never_import_a_stage(module):
    stages = sorted(t for t in GRAPH[module] if layer_of(t).startswith("stage:"))
    assert stages == [], f"{module} (a component) imports the stage(s) {stages}"


@pytest.mark.parametrize("module", sorted(n for n in MODULES if layer_of(n) == "component:store"))
def test_the_store_imports_nothing_above_it(module):
    above = sorted(t for t in GRAPH[module] if layer_of(t) not in ("component:store", "base"))
    assert above == [], f"{module} imports {above}; the store uses only itself and {sorted(BASE)}"


@pytest.mark.parametrize("module", sorted(n for n in MODULES if layer_of(n) == "base"))
def test_base_modules_import_only_base_modules(module):
    assert sorted(t for t in GRAPH[module] if layer_of(t) != "base") == []


@pytest.mark.parametrize("module", sorted(n for n in MODULES if layer_of(n).startswith("stage:")))
def test_a_stage_imports_no_other_stage_unless_it_chains_them(module):
    stage = module.split(".")[1]
    others = {t.split(".")[1] for t in GRAPH[module] if layer_of(t).startswith("stage:")} - {stage}
    assert others <= CHAINS.get(stage, set()), f"{module} imports the stage(s) {sorted(others - CHAINS.get(stage, set()))}"


def test_the_checker_sees_a_violation(tmp_path):
    """The import reader finds relative, absolute and in-function imports (what the rules above rely on)."""
    for name in ("logitcache/__init__.py", "logitcache/dump.py", "logitcache/teachers/__init__.py",
                 "logitcache/teachers/models.py", "logitcache/store/__init__.py", "logitcache/store/cache.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    probe = tmp_path / "logitcache" / "store" / "probe.py"
    probe.write_text("from ..dump import dump\n\ndef f():\n    from logitcache.teachers import models\n"
                     "    from . import cache\n    import numpy\n")
    found = imports_of(probe, tmp_path)
    assert found == {"logitcache.dump", "logitcache.teachers.models", "logitcache.store.cache"}
    assert layer_of("logitcache.dump").startswith("stage:")


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, cycles, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
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
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
            elif child not in graph:
                continue
            elif child not in index:
                index[child] = low[child] = counter[0]
                counter[0] += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(cycles)


def test_no_import_cycle_anywhere():
    """Every strongly connected component of the import graph is one module: no two modules import each
    other, directly or through others (imports inside functions count)."""
    assert import_cycles(GRAPH) == []


def test_the_cycle_finder_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e2"}, "e2": {"e"}, "f": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"], ["e", "e2"]]


def test_storage_backends_sit_on_the_protocol_and_nothing_imports_them_but_the_factory():
    """store/location.py (the protocol) imports no backend; a backend imports the protocol, the shared
    remote base and the leaves, never another store module; only the factory (backends/__init__) names
    the backends, so adding one is one file plus its line there."""
    backends = {n for n in MODULES if n.startswith("logitcache.store.backends.")}
    assert {"logitcache.store.backends.local", "logitcache.store.backends.fsspec",
            "logitcache.store.backends.obstore"} <= backends
    assert not GRAPH["logitcache.store.location"] & (backends | {"logitcache.store.backends"})
    allowed = {"logitcache.store.location", "logitcache.store.backends.remote"}
    for name in backends:
        assert {t for t in GRAPH[name] if layer_of(t) != "base"} <= allowed - {name}, (name, GRAPH[name])
    importers = {n for n, imported in GRAPH.items() if imported & backends} - backends
    assert importers == {"logitcache.store.backends"}, importers
