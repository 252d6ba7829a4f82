"""Copy components out of `archspec.nn`: the source of exactly the definitions a generated file uses.

Every top-level definition of the component modules (classes, functions, module-level assignments such as
`ACTIVATIONS` or the `Rope` alias) is indexed by name. Starting from the names the generated glue refers to, the
closure of definitions they need is collected with `symtable` (so a parameter that happens to share a name with a
component, like `DecoderLM`'s `alibi_slopes`, is not mistaken for it), and emitted verbatim in library order.

Two edits are made to the copied text, both mechanical:

* `from archspec... import ...` lines are dropped (the names they import are defined in the same file);
* a line marked `# emit-if: FEATURE` starts a branch that only a model with FEATURE can take. With the feature on
  the marker is removed; with it off, the line and the block indented under it are dropped. This is how a LLaMA
  file ends up without ALiBi code and a BLOOM file without RoPE, while the library stays one plain class each.

A third edit is made to the whole selection: custom operators (`torch.library.custom_op("archspec::name")`, such
as the MoE's grouped matmul) are renamed into the file's own namespace. Operator names are global to a process,
so a generated file that kept `archspec::` would replace archspec's registration (or fail to register) when both
are imported; with its own namespace each registers and calls its own copy.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import pkgutil
import re
import symtable
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

FEATURES = frozenset(
    {
        "rope",
        "qk_norm",
        "alibi",
        "window",
        "distance_bias",
        "dynamic_ntk",
        "moe",
        "prefix_lm",
        "block_positions",
        "vision",
    }
)
"""Names allowed in `# emit-if:` markers."""

MARKER = re.compile(r"\s+# emit-if: ([a-z_]+)$")
ARCHSPEC_IMPORT = re.compile(r"^\s*(from archspec[.\s]|import archspec\b)")
OP_NAMESPACE = "archspec"
"""The torch.library namespace of archspec's custom operators; `rename_ops` moves a copy into another one."""
OP_REFERENCE = re.compile(rf"""(?<=["'])({OP_NAMESPACE})(?=::)|(?<=\btorch\.ops\.)({OP_NAMESPACE})\b""")


@dataclass(frozen=True)
class Definition:
    """One top-level definition of a component module: its name, where it lives and its source lines."""

    name: str
    module: str
    order: tuple[int, int]
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Import:
    """One name bound by a non-archspec import: `import module [as alias]` or `from module import name [as alias]`."""

    module: str
    name: str | None = None
    alias: str | None = None

    @property
    def bound(self) -> str:
        return self.alias or self.name or self.module.split(".")[0]

    @property
    def stdlib(self) -> bool:
        return self.module.split(".")[0] in sys.stdlib_module_names


@dataclass(frozen=True)
class Library:
    definitions: dict[str, Definition]
    imports: dict[str, Import]
    registrations: dict[str, list[Definition]]
    """Top-level statements that complete a definition rather than define a name, keyed by what they complete:
    `@grouped_linear.register_fake def _(...)` and `grouped_linear.register_autograd(...)`. They are copied
    whenever that definition is, each at its own place in library order."""


def component_modules() -> list[str]:
    """The modules of `archspec.nn`, each after the archspec.nn modules it imports (ties broken by name)."""
    import archspec.nn

    names = sorted(info.name for info in pkgutil.iter_modules(archspec.nn.__path__) if not info.name.startswith("_"))
    requires = {}
    for name in names:
        tree = ast.parse(inspect.getsource(importlib.import_module(f"archspec.nn.{name}")))
        found = {n.module.rsplit(".", 1)[-1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        requires[name] = sorted(found & set(names) - {name})
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in ordered or name in path:  # a cycle can only come from function-local imports
            return
        for required in requires[name]:
            visit(required, (*path, name))
        ordered.append(name)

    for name in names:
        visit(name, ())
    return ordered


@cache
def library() -> Library:
    """Index every top-level definition and third-party/stdlib import of the component modules."""
    definitions: dict[str, Definition] = {}
    imports: dict[str, Import] = {}
    registrations: dict[str, list[Definition]] = {}
    ambiguous: set[str] = set()
    for rank, short in enumerate(component_modules()):
        module = importlib.import_module(f"archspec.nn.{short}")
        source = inspect.getsource(module)
        lines = source.splitlines()
        for node in ast.parse(source).body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                for found in _imports(node):
                    imports.setdefault(found.bound, found)
                continue
            names = _defined_names(node)
            registered = _registered(node)
            if not names and registered is None:
                continue
            start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            assert node.end_lineno is not None
            if registered is not None:
                label = f"{registered}@{short}:{start}"
                text = tuple(lines[start - 1 : node.end_lineno])
                registrations.setdefault(registered, []).append(Definition(label, short, (rank, start), text))
                continue
            definition = Definition(names[0], short, (rank, start), tuple(lines[start - 1 : node.end_lineno]))
            for name in names:
                if name in definitions and definitions[name] != definition:
                    ambiguous.add(name)
                definitions[name] = definition
    for name in ambiguous:
        definitions.pop(name)  # used by a copied component, it is reported as undefined rather than guessed
    return Library(definitions, imports, registrations)


def specialise(lines: Iterable[str], features: frozenset[str]) -> list[str]:
    """Drop archspec imports and the `# emit-if:` branches of features the model does not have."""
    lines = list(lines)
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if ARCHSPEC_IMPORT.match(line):
            index += 1
            if index < len(lines) and not lines[index].strip() and line.startswith(" "):
                index += 1  # the blank line that separated a local import from the code below it
            continue
        marker = MARKER.search(line)
        if marker is None:
            out.append(line)
            index += 1
            continue
        feature = marker.group(1)
        if feature not in FEATURES:
            raise RuntimeError(f"unknown feature {feature!r} in an emit-if marker: {line.strip()}")
        if feature in features:
            out.append(line[: marker.start()])
            index += 1
            continue
        indent, end = _indent(line), index + 1
        while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
            end += 1
        while end > index + 1 and not lines[end - 1].strip():
            end -= 1  # blank lines after the branch belong to what follows it
        if out and not out[-1].strip() and end < len(lines) and not lines[end].strip():
            end += 1  # a dropped method: keep one blank line between its neighbours, not two
        index = end
    while out and not out[-1].strip():
        out.pop()
    return out


@dataclass(frozen=True)
class Selection:
    """What a generated file needs: the component sources in order, and the import lines."""

    sources: list[tuple[str, str]]  # (module, source)
    imports: str


def rename_ops(source: str, namespace: str) -> str:
    """`source` with its custom operators (`"archspec::op"` names, `torch.ops.archspec.op`) moved to `namespace`."""
    if not namespace.isidentifier():
        raise ValueError(f"operator namespace {namespace!r} is not an identifier")
    return OP_REFERENCE.sub(namespace, source)


def select(glue: str, features: frozenset[str], op_namespace: str = OP_NAMESPACE) -> Selection:
    """The components `glue` uses, transitively, specialised to `features`, and the imports they all need.

    Custom operators are registered under `op_namespace` (see `rename_ops`)."""
    lib = library()
    chosen: dict[str, tuple[Definition, str]] = {}
    needed_imports: set[str] = set()
    own = {name for node in ast.parse(glue).body for name in _defined_names(node)}
    pending = sorted(global_names(glue) - own)
    referrer = {name: "the glue" for name in pending}
    while pending:
        name = pending.pop()
        if name in lib.imports:
            needed_imports.add(name)
            continue
        definition = lib.definitions.get(name)
        if definition is None:
            if not hasattr(builtins, name):
                raise RuntimeError(f"{referrer[name]} uses {name!r}, which archspec.nn neither defines nor imports")
            continue
        if definition.name in chosen:
            continue
        for part in (definition, *lib.registrations.get(definition.name, [])):
            source = rename_ops("\n".join(specialise(part.lines, features)), op_namespace)
            chosen[part.name] = (part, source)
            found = sorted(global_names(source))
            pending.extend(found)
            for used in found:
                referrer.setdefault(used, f"archspec.nn.{part.module}.{part.name}")
    ordered = sorted(chosen.values(), key=lambda item: item[0].order)
    return Selection(
        [(d.module, source) for d, source in ordered], render_imports(lib.imports[n] for n in needed_imports)
    )


def global_names(source: str) -> set[str]:
    """Names that `source` (top-level code) reads from module scope."""
    names: set[str] = set()

    def walk(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            if symbol.is_referenced() and (table.get_type() == "module" or symbol.is_global()):
                names.add(symbol.get_name())
        for child in table.get_children():
            walk(child)

    walk(symtable.symtable(source, "<component>", "exec"))
    return names


def render_imports(imports: Iterable[Import]) -> str:
    """Import lines sorted as isort/ruff would: stdlib, then third party; `import x` before `from x import y`."""
    imports = list(imports)
    groups = []
    for stdlib in (True, False):
        chosen = [i for i in imports if i.stdlib == stdlib]
        plain = sorted({(i.module, i.alias) for i in chosen if i.name is None}, key=lambda m: (m[0].lower(), m[0]))
        lines = [f"import {module}" + (f" as {alias}" if alias else "") for module, alias in plain]
        by_module: dict[str, set[str]] = {}
        for i in chosen:
            if i.name is not None:
                by_module.setdefault(i.module, set()).add(i.name + (f" as {i.alias}" if i.alias else ""))
        for module in sorted(by_module, key=lambda m: (m.lower(), m)):
            lines.append(f"from {module} import {', '.join(sorted(by_module[module], key=_member_order))}")
        if lines:
            groups.append("\n".join(lines))
    return "\n\n".join(groups)


def _member_order(name: str) -> tuple[int, str]:
    """isort's order-by-type: CONSTANTS, then Classes, then functions and modules."""
    bare = name.split(" ")[0]
    kind = 0 if bare.isupper() and len(bare) > 1 else 1 if bare[:1].isupper() else 2
    return kind, bare.lower()


def _imports(node: ast.Import | ast.ImportFrom) -> list[Import]:
    if isinstance(node, ast.Import):
        return [Import(a.name, None, a.asname) for a in node.names if not a.name.startswith("archspec")]
    if node.module is None or node.module.startswith("archspec") or node.level:
        return []
    return [Import(node.module, a.name, a.asname) for a in node.names]


def _registered(node: ast.stmt) -> str | None:
    """`X` when `node` registers something on X: `@X.register_fake` over a function, or `X.register_...(...)`."""
    if isinstance(node, ast.FunctionDef) and node.name == "_" and node.decorator_list:
        target = node.decorator_list[0]
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        target = node.value.func
    else:
        return None
    if isinstance(target, ast.Call):
        target = target.func
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.attr.startswith("register"):
        return target.value.id
    return None


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))
