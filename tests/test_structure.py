"""The package's shape: no import cycle between its modules, imports between them at the top of the file, no
module too long to read in one sitting."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "finetune"
MAX_LINES = 450
# The AML entry scripts ship as one file each (copied alone next to a registered model, as a deployment's code
# and as the MLflow pyfunc loader, where the package is not installed), so they cannot be split by concern.
ENTRY_SCRIPTS = {"finetune/serve/score.py", "finetune/serve/ner_score.py"}
MAX_ENTRY_SCRIPT_LINES = 500


def _modules() -> dict:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict, inside_functions: bool = True) -> dict:
    """{imported module: the import statement} for every project module ``name`` imports: every ``import`` and
    ``from`` statement, inside functions too unless ``inside_functions`` is false (``if TYPE_CHECKING:``
    imports name a dependency all the same). Importing ``a.b.c`` runs ``a/b/__init__.py`` first, so a
    module's packages count as imported too (its own packages are already loading)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict = {}
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8")), inside_functions):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            parts = target.split(".")
            for depth in range(1, len(parts) + 1):
                module = ".".join(parts[:depth])
                if module in modules and module != name and not name.startswith(module + "."):
                    found.setdefault(module, node)
    return found


def _import_nodes(tree: ast.Module, inside_functions: bool):
    pending = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif inside_functions or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            pending += list(ast.iter_child_nodes(node))


def _cycles(graph: dict) -> list:
    """Every import cycle of ``graph``: its strongly connected components of more than one module (Tarjan)."""
    index: dict = {}
    low: dict = {}
    stack: list = []
    found = []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for start in sorted(graph):
        if start not in index:
            visit(start)
    return found


def _edges(graph: dict, component: list, modules: dict) -> str:
    return "; ".join(
        f"{source}:{graph[source][target].lineno} imports {target}"
        for source in component
        for target in sorted(graph[source])
        if target in component
    )


def test_no_import_cycle_counting_imports_inside_functions():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + " | ".join(_edges(graph, cycle, modules) for cycle in cycles)


def test_the_cycle_finder_finds_every_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}, "e": {"a"}}) == [["a", "b"], ["c", "d"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_reader_sees_imports_inside_functions_and_packages(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    if True:\n        from finetune.search.runner import run_sweep\n")
    modules = _modules()
    assert set(_imports("finetune.m", source, modules)) == {"finetune.search", "finetune.search.runner"}
    assert set(_imports("finetune.m", source, modules, inside_functions=False)) == set()


def _third_party_at_import(modules: dict) -> dict:
    """{module: the third-party libraries importing it loads}, through the project modules it imports at the top."""
    direct, graph = {}, {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        roots = set()
        for node in _import_nodes(tree, inside_functions=False):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif not node.level:
                roots.add((node.module or "").split(".")[0])
        direct[name] = {root for root in roots if root not in sys.stdlib_module_names | {"finetune", "__future__"}}
        graph[name] = set(_imports(name, path, modules, inside_functions=False))
    loads = {}
    for name in modules:
        seen, pending = set(), [name]
        while pending:
            module = pending.pop()
            if module not in seen:
                seen.add(module)
                pending += graph[module]
        loads[name] = set().union(*(direct[module] for module in seen))
    return loads


def test_project_imports_sit_at_the_top_unless_they_load_a_third_party_library():
    """An import of our own module inside a function hides the dependency graph; it is kept only where importing
    that module loads a third-party library (optuna, numpy...) that the caller must not load at its own import."""
    modules = _modules()
    loads = _third_party_at_import(modules)
    hidden = []
    for name, path in sorted(modules.items()):
        at_top = _imports(name, path, modules, inside_functions=False)
        statements: dict = {}
        for target, node in _imports(name, path, modules).items():
            if target not in at_top:
                statements.setdefault(node, set()).add(target)
        for node, targets in statements.items():
            if not any(loads[target] - loads[name] for target in targets):
                hidden.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {', '.join(sorted(targets))}")
    assert not hidden, "move these imports to the top of their file: " + ", ".join(hidden)


def test_no_module_over_the_line_limit():
    long = {
        str(path.relative_to(PACKAGE.parent)): count
        for path in PACKAGE.rglob("*.py")
        if (count := len(path.read_text(encoding="utf-8").splitlines()))
        > (MAX_ENTRY_SCRIPT_LINES if str(path.relative_to(PACKAGE.parent)) in ENTRY_SCRIPTS else MAX_LINES)
    }
    assert not long, f"split these modules (over {MAX_LINES} lines, entry scripts {MAX_ENTRY_SCRIPT_LINES}): {long}"
