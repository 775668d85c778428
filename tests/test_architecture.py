"""The layout of ARCHITECTURE.md holds: imports point down the layers, no cycles, one MLflow
boundary, short functions. Read from the source (AST): a second, no servers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast

PACKAGE = Path(__file__).resolve().parent.parent / "mnist_tracker"
MAX_FUNCTION_LINES = 80
BENCH_ONLY = {"lightning", "pytorch_lightning", "torchmetrics"}

# Lowest first: a module may import its own layer and the layers before it, never later ones.
LAYERS = [
    {"__init__", "constants", "errors", "uris", "paths", "lazy", "collector", "sqlite_file"},
    {"models"},
    {"config"},
    {"data"},
    {"training"},
    {"tracking", "serving"},
    {"reporting"},
    {"workflows"},
    {"cli", "__main__"},
]


def _module_files() -> dict[str, Path]:
    return MODULES if "MODULES" in globals() else _modules()


def _modules() -> dict[str, Path]:
    """``mnist_tracker.x.y`` -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(name: str, path: Path) -> set[str]:
    """The package modules ``name`` imports at run time (anywhere but ``if TYPE_CHECKING``)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if _in_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mnist_tracker")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("mnist_tracker"):
                # ``from pkg import submodule`` needs the submodule, not what pkg re-exports.
                subs = {f"{module}.{a.name}" for a in node.names} & set(_module_files())
                found |= subs or {module}
    return found


MODULES = _modules()
GRAPH = {
    name: {m for m in _imports(name, path) if m in MODULES and m != name}
    for name, path in MODULES.items()
}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, members in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md")


def test_imports_point_down_the_layers():
    upward = [
        f"{name} ({LAYERS[_layer(name)]}) imports {dep} ({LAYERS[_layer(dep)]})"
        for name, deps in GRAPH.items()
        for dep in deps
        if _layer(dep) > _layer(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    """Between modules, ``__init__`` re-exports included."""
    edges = GRAPH
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_mlflow_is_reached_through_tracking_only():
    """Only ``tracking/`` (and ``serving.py``, the logged model's own code) imports MLflow
    (others may name its types for type checkers), and
    ``MlflowClient`` is constructed in exactly one place."""
    outside, constructions = [], []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("MlflowClient"):
                constructions.append(f"{name}:{node.lineno}")
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            uses_mlflow = any((n or "").split(".")[0] == "mlflow" for n in names)
            inside = name.startswith(("mnist_tracker.tracking", "mnist_tracker.serving"))
            if uses_mlflow and not inside and not _in_type_checking(node, parents):
                outside.append(f"{name}:{node.lineno}")
    assert not outside, f"MLflow imported outside tracking/: {outside}"
    assert constructions == ["mnist_tracker.tracking.client:" + constructions[0].split(":")[1]]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_function_is_longer_than_80_lines(name):
    tree = ast.parse(MODULES[name].read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{name}: {long}"


def test_nothing_catches_a_bare_value_error():
    """A bug's ValueError must not pass for bad input: handlers name UserError instead."""
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = ast.unparse(node.type)
                if caught == "ValueError" and name.startswith("mnist_tracker.cli"):
                    found.append(f"{name}:{node.lineno}")
    assert not found, found


def test_the_package_never_imports_benchmark_only_extras():
    """Lightning and torchmetrics are the peer benchmark's (the ``bench`` extra), not the
    product's: a user's install does not have them."""
    found = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                )
                if any((n or "").split(".")[0] in BENCH_ONLY for n in names):
                    found.append(f"{name}:{node.lineno}")
    assert not found, found
