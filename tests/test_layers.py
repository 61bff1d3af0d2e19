"""The house's one dependency direction, read from the source (every import, lazy ones inside functions
too): core (worldgen) <- world_models <- policies <- apps (worldgen.apps, worldgen.kit), and no module
cycle anywhere. See docs/ARCHITECTURE.md."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

PACKAGE_ROOTS = {"worldgen": ROOT / "exts" / "worldgen", "world_models": ROOT, "policies": ROOT}
APPS = ("worldgen.apps", "worldgen.kit")
LAYERS = {"worldgen": 0, "world_models": 1, "policies": 2, "apps": 3}


def layer(module: str) -> str:
    if any(module == a or module.startswith(a + ".") for a in APPS):
        return "apps"
    return module.split(".")[0]


def project_modules() -> dict[str, Path]:
    modules = {}
    for package, root in PACKAGE_ROOTS.items():
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # The nearest enclosing project module of a dotted name (a name imported from a module).
            parts = target.split(".")
            while parts and ".".join(parts) not in known:
                parts.pop()
            if parts and ".".join(parts) != module:
                found.add(".".join(parts))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {m: imports_of(m, p, set(modules)) for m, p in modules.items()}


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "worldgen.manifest" in graph["worldgen.pipeline"]  # from .manifest import ...
    assert "worldgen.envs" in graph["worldgen.pipeline"]  # imported inside a function
    assert "world_models.train" in graph["worldgen.apps.cli"]


def test_imports_point_one_way():
    upward = [
        f"{m} ({layer(m)}) imports {t} ({layer(t)})"
        for m, targets in import_graph().items()
        for t in sorted(targets)
        if LAYERS[layer(t)] > LAYERS[layer(m)]
    ]
    assert upward == []


def test_no_module_cycle():
    graph = import_graph()
    # Tarjan's strongly connected components; any component of more than one module is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []
