"""The package's wiring rules, checked on its source (issue 16's targets):

- the compiler is the only code that reads the spec's sections: emission, analysis, the parallel plans and the
  builder read the plan (or the built modules), never a spec section class;
- no import cycle anywhere in the package, function-level imports included (a local import is how a cycle hides);
- no private name (`_x`) imported from another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import archspec.spec.schema as schema

PACKAGE = Path(schema.__file__).resolve().parents[1]
ROOT = PACKAGE.parent

SECTION_CLASSES = {
    name
    for name, value in vars(schema).items()
    if isinstance(value, type) and issubclass(value, schema.Section) and value is not schema.Spec
}
READERS_OF_THE_PLAN = ["emit", "analysis", "distributed.py", "builder.py", "plan.py"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _runtime_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node of the module except those under `if TYPE_CHECKING:` (imports for annotations only, which
    never run)."""
    nodes: list[ast.AST] = []
    pending: list[ast.AST] = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            pending.extend(node.orelse)
            continue
        nodes.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return nodes


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement that runs, local ones included; relative imports
    resolved. `import a.b` yields ("a.b", [])."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.append((base, [alias.name for alias in node.names]))
    return found


def dependencies(path: Path) -> set[str]:
    """The archspec modules this file imports (a `from package import submodule` counts as the submodule)."""
    found = set()
    for module, names in imports(path):
        if not module.startswith("archspec"):
            continue
        submodules = [f"{module}.{name}" for name in names if f"{module}.{name}" in MODULES]
        found.update(submodules or [module])
    return found & set(MODULES)


def test_the_graph_is_read_from_real_files() -> None:
    """The walk sees the package (so the assertions below cannot pass on an empty graph)."""
    assert {"archspec.compiler", "archspec.emit.source", "archspec.nn.attention"} <= set(MODULES)
    assert "archspec.plan" in dependencies(MODULES["archspec.compiler"])


def test_no_import_cycle() -> None:
    graph = {module: dependencies(path) - {module} for module, path in MODULES.items()}
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        stack.append(module)
        for dependency in sorted(graph[module]):
            if state.get(dependency) == "open":
                cycle = stack[stack.index(dependency) :] + [dependency]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dependency not in state:
                visit(dependency)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_no_private_name_is_imported_from_another_module() -> None:
    offences = [
        f"{module}: from {source} import {name}"
        for module, path in MODULES.items()
        for source, names in imports(path)
        if source.startswith("archspec")
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not offences, offences


@pytest.mark.parametrize("reader", READERS_OF_THE_PLAN)
def test_only_the_compiler_reads_spec_sections(reader: str) -> None:
    paths = sorted((PACKAGE / reader).rglob("*.py")) if (PACKAGE / reader).is_dir() else [PACKAGE / reader]
    offences = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.id}"
        for path in paths
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Name) and node.id in SECTION_CLASSES
    ] + [
        f"{path.relative_to(ROOT)}: imports {name}"
        for path in paths
        for _, names in imports(path)
        for name in names
        if name in SECTION_CLASSES
    ]
    assert not offences, offences
