"""The shape of the code: the import graph of ``medpipe/`` (built with ``ast``, function-local imports included) has
no cycles and keeps the layering of ``../shared/DESIGN.md`` (see ``docs/architecture.md``); modules and functions
stay small; public functions and classes have docstrings.

These read the source only (nothing is imported), so they are fast and name every offender at once.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "medpipe"

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 100
# At most three, each with its reason.
ALLOWED_LONG: Dict[str, str] = {}

HEAVY = ("torch", "monai", "ignite", "mlflow", "numpy", "scipy", "skimage", "sklearn", "PIL", "matplotlib")

# importer package -> medpipe packages / modules it must never import (a name matches itself and its submodules)
FORBIDDEN: Dict[str, Tuple[str, ...]] = {
    "medpipe.config": ("medpipe.data", "medpipe.nets", "medpipe.engine", "medpipe.metrics", "medpipe.inference",
                       "medpipe.workflow", "medpipe.tracking", "medpipe.runs", "medpipe.serve", "medpipe.export"),
    "medpipe.registry": ("medpipe.config", "medpipe.data", "medpipe.nets", "medpipe.engine", "medpipe.metrics",
                         "medpipe.inference", "medpipe.workflow", "medpipe.tracking", "medpipe.runs",
                         "medpipe.serve", "medpipe.export"),
    "medpipe.data": ("medpipe.nets", "medpipe.engine", "medpipe.metrics", "medpipe.inference", "medpipe.workflow",
                     "medpipe.tracking", "medpipe.runs", "medpipe.serve", "medpipe.export"),
    "medpipe.nets": ("medpipe.data", "medpipe.engine", "medpipe.inference", "medpipe.workflow", "medpipe.tracking",
                     "medpipe.runs", "medpipe.serve", "medpipe.export"),
    "medpipe.metrics": ("medpipe.data", "medpipe.nets", "medpipe.engine", "medpipe.inference", "medpipe.workflow",
                        "medpipe.tracking", "medpipe.runs", "medpipe.serve", "medpipe.export"),
    "medpipe.inference": ("medpipe.engine", "medpipe.workflow", "medpipe.tracking", "medpipe.runs",
                          "medpipe.serve", "medpipe.export"),
    "medpipe.engine": ("medpipe.workflow", "medpipe.tracking", "medpipe.serve", "medpipe.export"),
    "medpipe.tracking": ("medpipe.data", "medpipe.nets", "medpipe.engine", "medpipe.inference", "medpipe.workflow",
                         "medpipe.serve", "medpipe.export"),
    "medpipe.mlflow_models": ("medpipe.data", "medpipe.nets", "medpipe.engine", "medpipe.inference",
                              "medpipe.workflow", "medpipe.tracking", "medpipe.serve", "medpipe.export"),
    "medpipe.runs": ("medpipe.engine", "medpipe.workflow", "medpipe.serve", "medpipe.export"),
    "medpipe.model_card": ("medpipe.nets", "medpipe.engine", "medpipe.inference", "medpipe.workflow",
                           "medpipe.tracking", "medpipe.serve", "medpipe.export"),
    "medpipe.serve": ("medpipe.engine", "medpipe.workflow", "medpipe.export"),
    "medpipe.export": ("medpipe.engine", "medpipe.workflow", "medpipe.serve"),
    "medpipe.bundle": ("medpipe.engine", "medpipe.workflow", "medpipe.serve", "medpipe.export"),
    "medpipe.bundle_docs": ("medpipe.engine", "medpipe.workflow", "medpipe.serve", "medpipe.export"),
    "medpipe.compare": ("medpipe.data", "medpipe.nets", "medpipe.engine", "medpipe.inference", "medpipe.workflow",
                        "medpipe.serve", "medpipe.export"),
    # the planner uses config, data, nets and engine pieces to time real steps; it never runs a workflow
    "medpipe.plan": ("medpipe.workflow", "medpipe.tracking", "medpipe.runs", "medpipe.serve", "medpipe.export",
                     "medpipe.inference"),
}
# config checks transform names against medpipe's own transforms: a leaf module that imports only MONAI
ALLOWED_EDGES = {("medpipe.config.transforms", "medpipe.data.custom_transforms")}
# command-line modules: imported by nothing
COMMAND_LINE = ("medpipe.run", "medpipe.evaluate", "medpipe.compare", "medpipe.serve.__main__", "medpipe.plan.__main__",
                "medpipe.config.__main__", "medpipe.patches")
# config and registry: no heavy import when the module is loaded
LIGHT = ("medpipe.config", "medpipe.registry", "medpipe.paths", "medpipe.logs")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: Dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES: Dict[str, ast.Module] = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _resolve(importer: str, node: ast.AST) -> List[Tuple[str, List[str]]]:
    """``[(medpipe module imported, [names taken from it])]`` of one import statement."""
    out = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if _within(alias.name, "medpipe"):
                out.append((alias.name, []))
        return out
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:  # relative import
        pkg = importer.split(".")
        if MODULES[importer].name != "__init__.py":
            pkg = pkg[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    if not _within(base, "medpipe"):
        return out
    names = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in MODULES:  # "from medpipe.data import transforms": the submodule
            out.append((sub, []))
        else:
            names.append(alias.name)
    if names:
        out.append((base, names))
    return out


def _imports(name: str, module_level_only: bool = False):
    """Every import statement of a module as ``(node, at module level)``; ``if TYPE_CHECKING:`` blocks skipped."""
    tree = TREES[name]
    found = []

    def visit(node, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.dump(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, top))
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(tree, True)
    return [(n, top) for n, top in found if top or not module_level_only]


def _graph() -> Dict[str, Set[str]]:
    graph: Dict[str, Set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for node, _ in _imports(name):
            for target, _names in _resolve(name, node):
                if target in MODULES and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_graph_sees_function_local_and_relative_imports():
    graph = _graph()
    assert "medpipe.config" in graph["medpipe.workflow.skeleton"]
    # medpipe.run imports the workflow inside main(), after the arguments are checked: still an edge
    assert "medpipe.workflow" in graph["medpipe.run"]
    # a made-up cycle is found
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_layering():
    bad = []
    for importer, targets in _graph().items():
        for prefix, forbidden in FORBIDDEN.items():
            if not _within(importer, prefix):
                continue
            for target in targets:
                if any(_within(target, f) for f in forbidden) and (importer, target) not in ALLOWED_EDGES:
                    bad.append(f"{importer} -> {target}")
        for target in targets:
            if any(_within(target, cli) for cli in COMMAND_LINE) and not importer.startswith(target):
                bad.append(f"{importer} -> {target} (a command-line module)")
    assert bad == [], "imports that break the layering of docs/architecture.md:\n" + "\n".join(sorted(bad))


def test_light_modules_import_nothing_heavy_at_module_level():
    bad = []
    for name in MODULES:
        if not any(_within(name, p) for p in LIGHT):
            continue
        for node, _ in _imports(name, module_level_only=True):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for mod in mods:
                if mod.split(".")[0] in HEAVY:
                    bad.append(f"{name}:{node.lineno} imports {mod}")
    assert bad == []


def test_no_private_name_imported_across_modules():
    bad = []
    for name in MODULES:
        for node, _ in _imports(name):
            for target, names in _resolve(name, node):
                bad += [f"{name}:{node.lineno} imports {target}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
            if isinstance(node, ast.ImportFrom) and node.module:
                tail = node.module.split(".")[-1]
                if tail.startswith("_") and not tail.startswith("__") and _within(node.module, "medpipe"):
                    bad.append(f"{name}:{node.lineno} imports private module {node.module}")
    assert bad == []


def _functions(tree: ast.Module):
    """``(qualified name, node)`` of every function and method, nested ones included."""

    def walk(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield qual, child
                yield from walk(child, qual + ".")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def test_module_and_function_sizes():
    long_modules = [f"{name}: {len(path.read_text().splitlines())} lines" for name, path in MODULES.items()
                    if len(path.read_text().splitlines()) > MAX_MODULE_LINES and name not in ALLOWED_LONG]
    long_functions = []
    for name, tree in TREES.items():
        for qual, node in _functions(tree):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES and f"{name}.{qual}" not in ALLOWED_LONG:
                long_functions.append(f"{name}.{qual}: {n} lines")
    assert len(ALLOWED_LONG) <= 3
    assert long_modules == [], f"modules over {MAX_MODULE_LINES} lines"
    assert long_functions == [], f"functions over {MAX_FUNCTION_LINES} lines"


def _public_definitions(tree: ast.Module):
    """Module-level public functions and classes, and the public methods of public classes."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            yield node.name, node
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not item.name.startswith("_"):
                        decorators = [ast.unparse(d) for d in item.decorator_list]
                        if any(d.endswith(".setter") for d in decorators):
                            continue  # documented on its getter
                        yield f"{node.name}.{item.name}", item


def test_public_functions_and_classes_have_docstrings():
    missing = []
    for name, tree in TREES.items():
        if ast.get_docstring(tree) is None:
            missing.append(f"{name} (module)")
        for qual, node in _public_definitions(tree):
            if not ast.get_docstring(node):
                missing.append(f"{name}.{qual}")
    assert missing == [], "public names without a docstring:\n" + "\n".join(missing)


@pytest.mark.parametrize("rule", sorted(FORBIDDEN))
def test_every_layer_exists(rule):
    # a renamed package would make its rule vacuous
    assert any(_within(name, rule) for name in MODULES), rule
