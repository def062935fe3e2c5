"""Layers import downward only: biosim <- bridge <- {protocols, benchmarks} <- the command line (protocols.cli).

``protocols`` (the experiments) and ``benchmarks`` (the benchmark and the GPU check) share a level:
each imports biosim and bridge, neither imports the other; the command line imports both (``biosim
bench`` imports benchmarks when it runs). No circles.

The imports are read from the source (every ``import`` and ``from ... import``, also those inside
functions), not from a running interpreter, so a lazy import cannot hide a violation.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = (("biosim",), ("bridge",), ("protocols", "benchmarks"))
"""Bottom to top: a module may import from its own package and the layers before it, not from another
package of its own layer."""
PACKAGES = tuple(package for layer in LAYERS for package in layer)
RANK = {package: level for level, layer in enumerate(LAYERS) for package in layer}
CLI = "protocols.cli"
"""The command line, above every other module (the packages of the top layer included): none imports it."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Project modules that ``path`` imports (absolute names)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # submodules imported by name
    return {name for name in found if name.split(".")[0] in PACKAGES}


def _project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted(ROOT.joinpath(package).rglob("*.py")) if ROOT.joinpath(package).is_dir() else []:
            modules[_module_name(path)] = path
    return modules


def _graph() -> dict[str, set[str]]:
    modules = _project_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            # the longest project module that the imported name starts with
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _allowed(module: str, target: str) -> bool:
    source, destination = module.split(".")[0], target.split(".")[0]
    if module == CLI or source == destination:
        return True
    return RANK[destination] < RANK[source]


def test_layers_import_downward_only():
    violations = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if not _allowed(module, target)
    ]
    violations += [f"{module} imports the command line" for module, targets in _graph().items() if CLI in targets]
    assert not violations, "imports from a higher layer:\n" + "\n".join(sorted(violations))


def test_no_import_circle():
    graph = _graph()
    # a package's __init__ re-exporting its modules is not a circle of those modules
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_import_reader_sees_relative_and_lazy_imports():
    graph = _graph()
    assert "bridge.eager" in graph["bridge.fast_engine"]  # relative import
    assert "bridge.validation" in graph["protocols.runner"]  # an import inside a function
    assert {"bridge.training", "protocols.runner", "biosim.backends", "benchmarks.bench"} <= graph[CLI]


def test_packages_of_one_layer_do_not_import_each_other():
    """The rule itself: the top layer's packages are siblings, only the command line sees both."""
    assert not _allowed("protocols.runner", "benchmarks.bench")
    assert not _allowed("benchmarks.bench", "protocols.runner")
    assert _allowed("benchmarks.bench", "bridge.fast_engine") and not _allowed("bridge.fast_engine", "benchmarks.bench")
    assert _allowed(CLI, "benchmarks.bench")
