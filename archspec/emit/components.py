"""Copy components out of `archspec.nn`: the source of exactly the definitions a generated file uses.

Every top-level definition of the component modules (classes, functions, module-level assignments such as
`ACTIVATIONS` or the `Rope` alias) is indexed by name. Starting from the names the generated glue refers to, the
closure of definitions they need is collected with `symtable` (so a parameter that happens to share a name with a
component, like `DecoderLM`'s `alibi_slopes`, is not mistaken for it), and emitted verbatim in library order.

Two edits are made to the copied text, both mechanical:

* `from archspec... import ...` lines are dropped (the names they import are defined in the same file);
* `# emit-if:` and `# emit-when:` markers are specialised to the plan's features (see `archspec.nn`'s
  docstring). This is how a LLaMA file ends up without ALiBi code and a BLOOM file without RoPE, while the
  library stays one plain class each.

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

from archspec.emit.literals import LINE_LENGTH
from archspec.plan import FEATURES

MARKER = re.compile(r"\s+# emit-(if|when): ([a-z0-9_!,|]+)$")
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


SECTIONS = (
    ("norms and activations", ("activations", "norms")),
    ("positions", ("positions", "rope", "glm")),
    ("attention", ("masks", "attend", "attention", "mla")),
    ("feed-forward", ("mlp", "moe")),
    ("blocks", ("blocks",)),
    ("vision", ("vision",)),
    ("language model", ("models", "vlm", "encoder_decoder")),
    ("generation", ("cache", "generate")),
    ("initialisation", ("init",)),
)
"""The sections of an emitted file and the `archspec.nn` modules each copies from, in reading order: what a reader
meets first (norms, positions), then attention, the MLP or MoE, the block, the model, and decoding last. (`flex`
is archspec's own: never emitted.)"""
READING_ORDER = tuple(module for _, modules in SECTIONS for module in modules)
SECTION_OF = {module: section for section, modules in SECTIONS for module in modules}


def component_modules() -> list[str]:
    """The modules of `archspec.nn` in reading order; every module must have its place."""
    import archspec.nn

    names = {info.name for info in pkgutil.iter_modules(archspec.nn.__path__) if not info.name.startswith("_")}
    missing = names - set(READING_ORDER) - {"flex"}
    if missing:
        raise RuntimeError(f"archspec.nn modules without a place in READING_ORDER: {sorted(missing)}")
    return [name for name in (*READING_ORDER, "flex") if name in names]


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


def holds(expression: str, features: frozenset[str]) -> bool:
    """Whether a marker's expression holds: `a`, `!a`, `a,b` (both), `a|b` (either); `,` binds tighter."""

    def one(term: str) -> bool:
        name = term.removeprefix("!")
        if name not in FEATURES:
            raise RuntimeError(f"unknown feature {name!r} in an emit marker (known: {sorted(FEATURES)})")
        return (name in features) != term.startswith("!")

    return any(all(one(term) for term in alternative.split(",")) for alternative in expression.split("|"))


def specialise(lines: Iterable[str], features: frozenset[str], varying: frozenset[str] = frozenset()) -> list[str]:
    """Drop archspec imports and specialise the `# emit-if:` / `# emit-when:` markers to `features`
    (see `archspec.nn`'s docstring for what each marker means). A `varying` feature holds for some instances of
    a class and not others: its code is kept, and an `emit-when` condition naming it stays a plain `if`."""
    pending = list(lines)
    out: list[str] = []
    index = 0
    while index < len(pending):
        line = pending[index]
        if ARCHSPEC_IMPORT.match(line):
            index += 1
            if index < len(pending) and not pending[index].strip() and line.startswith(" "):
                index += 1  # the blank line that separated a local import from the code below it
            continue
        marker = MARKER.search(line)
        if marker is None:
            if "# emit-" in line:
                raise RuntimeError(f"a malformed emit marker (`# emit-if: EXPR` ends the line): {line.strip()}")
            out.append(line)
            index += 1
            continue
        kind, expression = marker.groups()
        if _last(out).rstrip().endswith("= ("):  # `ruff format` wrapped a long marked assignment
            raise RuntimeError(f"an emit marker inside a wrapped statement (shorten the line): {_last(out).strip()}")
        keep = holds(expression, features | varying)
        if kind == "when" and any(term.removeprefix("!") in varying for term in re.split(r"[,|]", expression)):
            out.append(line[: marker.start()].rstrip())  # decided per instance, at run time
            index += 1
            continue
        if kind == "if":
            if keep:
                out.append(line[: marker.start()].rstrip())
                if out[-1].endswith(","):  # an item of a list laid out one per line only for its marker
                    out.append(_DROPPED)
                index += 1
            else:
                index = _skip(pending, out, index, _region_end(pending, index))
                out.append(_DROPPED)
            continue
        # emit-when: the `if` is the condition; keep its body or its else-body, dedented
        if not line.lstrip().startswith("if ") or not line[: marker.start()].endswith(":"):
            raise RuntimeError(f"emit-when marks a one-line `if ...:` only: {line.strip()}")
        indent = _indent(line)
        body_end = _block_end(pending, index)
        body = pending[index + 1 : body_end]
        end, else_body = body_end, []
        if end < len(pending) and pending[end].strip() == "else:" and _indent(pending[end]) == indent:
            end = _block_end(pending, end)
            else_body = pending[body_end + 1 : end]
        chosen = _dedent(body if keep else else_body, indent)
        if chosen and _ends_block(chosen, indent):  # what follows in this block can no longer run
            unreachable = _block_end(pending, end - 1, indent - 1)
            while unreachable > end and not pending[unreachable - 1].strip():
                unreachable -= 1
            end = unreachable
        pending[index:end] = chosen
    out = _collapsed(out)
    while out and not out[-1].strip():
        out.pop()
    return out


_DROPPED = "\x00"
"""Where a line was dropped or lost its marker: a bracketed list around it may now fit on one line."""


def _collapsed(lines: list[str]) -> list[str]:
    """Bracketed lists (signatures, calls) that lost items or markers to specialisation, joined onto one line when they fit
    (as `ruff format` lays out a list without a trailing comma); the drop markers removed."""
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line is _DROPPED:
            index += 1
            continue
        joined = _join(lines, index) if line.endswith(("(", "[")) else None
        if joined is None:
            out.append(line)
            index += 1
        else:
            text, index = joined
            out.append(text)
    return out


def _join(lines: list[str], start: int) -> tuple[str, int] | None:
    """The one-line form of the bracketed list opened at `start`, and the index after it, when the list lost an
    item, every item is a plain one-line `item,` and the result fits the line length."""
    indent = _indent(lines[start])
    items: list[str] = []
    dropped = False
    index = start + 1
    while index < len(lines):
        line = lines[index]
        if line is _DROPPED:
            dropped = True
        elif _indent(line) == indent and line.strip()[:1] in ")]":
            closing = line.strip()
            break
        elif _indent(line) == indent + 4 and line.endswith(",") and "#" not in line and _balanced(line):
            items.append(line.strip()[:-1])
        else:
            return None
        index += 1
    else:
        return None
    text = lines[start] + ", ".join(items) + closing
    if not dropped or len(text) > LINE_LENGTH:
        return None
    return text, index + 1


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += char in "([{"
        depth -= char in ")]}"
        if depth < 0:
            return False
    return depth == 0


def _region_end(lines: list[str], index: int) -> int:
    """End (exclusive) of the statement at `index` with the block indented under it; a decorator's region runs
    through the decorated definition, a bracketed list's through its closing line."""
    while lines[index].lstrip().startswith("@"):
        index += 1
    if MARKER.sub("", lines[index]).rstrip().endswith(("(", "[")):  # a signature (or call) laid out one item per line
        indent = _indent(lines[index])
        index = next(i for i in range(index + 1, len(lines)) if _indent(lines[i]) <= indent and lines[i].strip())
    end = _block_end(lines, index)
    while end > index + 1 and not lines[end - 1].strip():
        end -= 1  # blank lines after the branch belong to what follows it
    return end


def _last(out: list[str]) -> str:
    """The last line written so far (drop markers aside)."""
    return next((line for line in reversed(out) if line is not _DROPPED), "")


def _skip(lines: list[str], out: list[str], index: int, end: int) -> int:
    if out and not _last(out).strip() and end < len(lines) and not lines[end].strip():
        end += 1  # a dropped method: keep one blank line between its neighbours, not two
    return end


def _block_end(lines: list[str], index: int, indent: int | None = None) -> int:
    """The first line after `index` whose indentation is `indent` or less (default: line `index`'s), blank lines
    excepted."""
    indent = _indent(lines[index]) if indent is None else indent
    end = index + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
        end += 1
    return end


def _dedent(block: list[str], indent: int) -> list[str]:
    """An if-body moved out to the if's own indentation."""
    widths = [_indent(line) for line in block if line.strip()]
    if not widths:
        return []
    shift = min(widths) - indent
    return [line[shift:] if line.strip() else line for line in block]


def _ends_block(block: list[str], indent: int) -> bool:
    """Whether the last statement of `block` at `indent` leaves the block (return or raise)."""
    starts = [line.strip() for line in block if line.strip()[:1] not in ("", ")", "]") and _indent(line) == indent]
    return bool(starts) and (starts[-1] == "return" or starts[-1].startswith(("return ", "raise ")))


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


def select(
    glue: str, features: frozenset[str], varying: frozenset[str] = frozenset(), op_namespace: str = OP_NAMESPACE
) -> Selection:
    """The components `glue` uses, transitively, specialised to `features` (and `varying`, see `specialise`), and
    the imports they all need.

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
            source = rename_ops("\n".join(specialise(part.lines, features, varying)), op_namespace)
            chosen[part.name] = (part, source)
            found = [] if union_members(source) else sorted(global_names(source))
            pending.extend(found)
            for used in found:
                referrer.setdefault(used, f"archspec.nn.{part.module}.{part.name}")
    for name, (part, source) in list(chosen.items()):
        members = union_members(source)
        if members:
            defined = set(chosen) | set(lib.imports) | set(dir(builtins))
            kept = [member for member in members if global_names(member) <= defined]
            if not kept:
                raise RuntimeError(f"the file uses {name!r} but none of its members {members}")
            comment = source.partition("  # ")[2]
            chosen[name] = (part, f"{name} = {' | '.join(kept)}" + (f"  # {comment}" if comment else ""))
            if len(kept) == 1:  # a union of one is that member: the file names it directly
                del chosen[name]
                word = re.compile(rf"(?<![\w.]){re.escape(name)}\b(?!\s*=)")
                chosen = {key: (d, word.sub(kept[0], text)) for key, (d, text) in chosen.items()}
    ordered = sorted(chosen.values(), key=lambda item: item[0].order)
    return Selection(
        [(d.module, source) for d, source in ordered], render_imports(lib.imports[n] for n in needed_imports)
    )


def union_members(source: str) -> list[str] | None:
    """The members of a type alias `Name = A | B | ...` (an open union: a file keeps the members whose names it has
    for other reasons, and needs none of the others), or None for any other definition."""
    body = ast.parse(source).body
    if len(body) != 1 or not isinstance(body[0], ast.Assign) or not isinstance(body[0].value, ast.BinOp):
        return None
    members: list[str] = []
    pending: list[ast.expr] = [body[0].value]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            pending += [node.right, node.left]
        elif isinstance(node, ast.Name | ast.Attribute | ast.Subscript):
            members.append(ast.unparse(node))
        else:
            return None
    return members


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
