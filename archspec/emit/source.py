"""`emit_source(spec)`: one stand-alone Python file (torch + stdlib only) with the same model as `build(spec)`.

The file is the compiler's plan printed (`archspec.plan`): the components the plan calls, copied from
`archspec.nn` and specialised to the plan's features (`components.py`), then the plan's calls as Python, one
factory per kind of block and the model class, through the Jinja template `templates/file.py.j2`. Nothing here
reads the spec's sections: the plan says what to print, and the spec itself only appears as its YAML in the
header. `build` instantiates the same calls in the same order, so both give the same state-dict names, the same
numbers, and from the same seed the same initial weights.

Safety: the spec is re-validated first (a `Spec` can be mutated without validation), identifiers are derived from
the validated name by `module_name` / `class_name`, and every value reaches the source through `literals.py`.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import keyword
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from archspec.compiler import plan as plan_of
from archspec.emit.components import SECTION_OF, global_names, library, rename_ops, select
from archspec.emit.literals import LINE_LENGTH, py_literal, py_str
from archspec.plan import Call, Fn, Layers, Plan, Value
from archspec.spec.schema import NAME_PATTERN, Spec
from archspec.spec.writer import spec_to_yaml

TEMPLATES = Path(__file__).parent / "templates"
RESERVED_MODULES = frozenset({"torch", "archspec"}) | frozenset(sys.stdlib_module_names)
TORCH_COMPONENTS = {
    "nn.Linear",
    "nn.Embedding",
    "nn.LayerNorm",
    "nn.RMSNorm",
    "nn.Identity",
    "nn.Conv2d",
    "torch.zeros",
}


# -------------------------------------------------------------------------------------------- names
def _checked_name(name: str) -> str:
    if not isinstance(name, str) or re.fullmatch(NAME_PATTERN, name) is None:
        raise ValueError(f"spec name {name!r} is not a valid name (letters, digits, '.', '_' and '-', starting alnum)")
    return name


def module_name(name: str) -> str:
    """The file name (without .py) for a spec name: `llama3-8b` -> `llama3_8b`; `torch` -> `torch_model`."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", _checked_name(name))
    if ident[0].isdigit():
        ident = "_" + ident
    if keyword.iskeyword(ident) or keyword.issoftkeyword(ident) or ident in RESERVED_MODULES:
        ident += "_model"
    assert ident.isidentifier()
    return ident


def class_name(name: str) -> str:
    """The model class for a spec name: `llama3-8b` -> `Llama3_8b`, `qwen2.5-7b` -> `Qwen2_5_7b`, `gpt2` -> `Gpt2`.

    Parts are capitalised and joined, with `_` between two digits; a name that would collide with anything the
    generated file defines (`MLP`, `Model`, ...) gets a `Model` suffix.
    """
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", _checked_name(name)) if p]
    ident = ""
    for part in parts:
        joiner = "_" if ident and ident[-1].isdigit() and part[0].isdigit() else ""
        ident += joiner + part[0].upper() + part[1:]
    if not ident or not ident[0].isalpha():
        ident = "Model_" + ident
    if keyword.iskeyword(ident) or ident in _file_names():
        ident += "Model"
    assert ident.isidentifier()
    return ident


@cache
def _file_names() -> frozenset[str]:
    lib = library()
    return frozenset(lib.definitions) | frozenset(lib.imports) | {"Model"}


def op_namespace(name: str) -> str:
    """The torch.library namespace of a generated file's custom operators: `mixtral-8x7b` -> `mixtral_8x7b_ops`.

    Operator names are global to a process; the file's own namespace lets it be imported next to archspec (whose
    operators are `archspec::...`) and next to other generated files."""
    return f"{module_name(name)}_ops"


# ---------------------------------------------------------------------------------------- the file
def emit_source(spec: Spec) -> str:
    """The stand-alone source of `spec`'s model. Deterministic: the same spec gives the same bytes."""
    spec = _revalidated(spec)
    plan = plan_of(spec)
    namespace = op_namespace(spec.name)
    signatures: dict[str, Signature] = {}
    glue, selection = "", None
    for _ in range(3):  # printing drops arguments the specialised signatures lack: print, select, until stable
        printed = Printer(plan, class_name(spec.name), signatures).file_glue()
        selection = select(printed, plan.features, plan.varying, op_namespace=namespace)
        signatures = _signatures(selection.sources)
        if printed == glue:
            break
        glue = printed
    assert selection is not None
    leftover = [source for _, source in selection.sources if rename_ops(source, "x") != source]
    if leftover:  # every custom op must have moved to the file's namespace (see components.rename_ops)
        raise RuntimeError(f"archspec operator references left in the copied components: {leftover[0][:200]}")
    modules: list[tuple[str, list[str]]] = []
    aliases = [source for _, source in selection.sources if _type_alias(source)]
    for module, source in selection.sources:
        if source in aliases:
            continue
        if not modules or modules[-1][0] != SECTION_OF[module]:
            modules.append((SECTION_OF[module], []))
        modules[-1][1].append(source)
    text = (
        _environment()
        .get_template("file.py.j2")
        .render(
            name=spec.name,
            class_name=class_name(spec.name),
            module=module_name(spec.name),
            spec_yaml=_docstring_text(spec_to_yaml(spec)).rstrip("\n"),
            usage=_usage(plan),
            imports=selection.imports,
            aliases="\n".join(aliases),
            components=[(module, "\n\n\n".join(sources)) for module, sources in modules],
            glue=glue.rstrip("\n"),
        )
    )
    ast.parse(text)  # a template bug must never produce a file that does not parse
    return text


def _type_alias(source: str) -> bool:
    """Whether `source` is a one-line alias of imported types (`AttentionFn = Callable[...]`): the file states those
    together after its imports."""
    body = ast.parse(source).body
    one_line = len(body) == 1 and isinstance(body[0], ast.Assign) and "\n" not in source.strip()
    return one_line and all(name in library().imports or hasattr(builtins, name) for name in global_names(source))


def _usage(plan: Plan) -> list[str]:
    """The docstring's usage lines for the model's kind."""
    match plan.model.component:
        case "EncoderDecoderLM":
            return [
                "logits = model(input_ids, decoder_input_ids=decoder_input_ids).logits",
                "tokens = model.generate(input_ids, max_new_tokens=20)  # the decoder's tokens",
            ]
        case "VisionLanguageLM":
            return [
                "logits = model(input_ids, pixel_values=images).logits  # image placeholders in input_ids",
                "tokens = model.generate(input_ids, max_new_tokens=20, pixel_values=images)",
            ]
        case _:
            return [
                "logits = model(input_ids).logits",
                "loss = model(input_ids, labels=input_ids).loss",
                "tokens = model.generate(input_ids, max_new_tokens=20)",
            ]


def _docstring_text(text: str) -> str:
    """Text safe inside a non-raw triple-quoted docstring."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


@cache
def _environment() -> Any:
    import jinja2  # imported here so `archspec` itself stays quick to import

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # the output is Python; every value is made safe by literals.py before it gets here
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _revalidated(spec: Spec) -> Spec:
    """Validate again from plain data: fields assigned after validation are checked like a fresh spec."""
    from archspec.spec.loader import spec_from_dict

    if not isinstance(spec, Spec):
        raise TypeError(f"emit_source expects an archspec.Spec, got {type(spec).__name__}")
    _checked_name(spec.name)
    return spec_from_dict(spec.model_dump(exclude_none=True, warnings=False), source=f"<spec {spec.name!r}>")


# --------------------------------------------------------------------------------- the plan, printed
@dataclass(frozen=True)
class Signature:
    """What a specialised component accepts: its parameter names and the defaults that can be read as literals;
    a class whose `__init__` passes `**kwargs` to its base (`bases`) accepts the base's too."""

    names: frozenset[str]
    defaults: dict[str, Any]
    bases: tuple[str, ...] = ()


_NO_DEFAULT = object()


def _signatures(sources: list[tuple[str, str]]) -> dict[str, Signature]:
    """The constructor (or function) signature of every copied class and function, as specialised."""
    found: dict[str, Signature] = {}
    for _, source in sources:
        for node in ast.parse(source).body:
            function = node
            if isinstance(node, ast.ClassDef):
                function = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                if function is None:
                    continue
            if not isinstance(function, ast.FunctionDef):
                continue
            arguments = function.args
            params = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
            names = frozenset(a.arg for a in params) - {"self"}
            defaults: dict[str, Any] = {}
            positional = [*arguments.posonlyargs, *arguments.args]
            for arg, default in zip(
                positional[len(positional) - len(arguments.defaults) :], arguments.defaults, strict=True
            ):
                defaults[arg.arg] = _literal(default)
            for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True):
                if default is not None:
                    defaults[arg.arg] = _literal(default)
            bases = ()
            if isinstance(node, ast.ClassDef) and arguments.kwarg is not None:
                bases = tuple(base.id for base in node.bases if isinstance(base, ast.Name))
            found[node.name] = Signature(names, defaults, bases)
    for name, signature in list(found.items()):  # fold in the bases' parameters
        names, defaults = set(signature.names), dict(signature.defaults)
        pending = list(signature.bases)
        while pending:
            base = found.get(pending.pop())
            if base is not None:
                names |= base.names
                defaults = {**base.defaults, **defaults}
                pending.extend(base.bases)
        found[name] = Signature(frozenset(names), defaults)
    return found


def _literal(node: ast.expr) -> Any:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return _NO_DEFAULT
    return tuple(value) if isinstance(value, list) else value


def _torch_defaults(component: str) -> dict[str, Any]:
    """Keyword defaults of the torch modules plans call (to leave them out, as a person would)."""
    from archspec.builder import registry

    defaults = {}
    try:
        parameters = inspect.signature(registry()[component]).parameters
    except ValueError:  # a builtin without a signature (torch.zeros): everything given is printed
        return defaults
    for name, parameter in parameters.items():
        if parameter.default is not inspect.Parameter.empty:
            defaults[name] = parameter.default
    return defaults


class Printer:
    """The plan as Python: `make_<kind>()` factories for the blocks of every stack, then the model class."""

    def __init__(self, plan: Plan, model_class: str, signatures: dict[str, Signature]) -> None:
        self.plan, self.model_class, self.signatures = plan, model_class, signatures
        self.factories: dict[str, str] = {}  # kind name -> factory source, in the order they are first needed

    def file_glue(self) -> str:
        model = self.plan.model
        body = self.arguments(model, indent=3)
        std = "" if self.plan.init_std == 0.02 else f", std={py_literal(self.plan.init_std)}"
        init = f"        init_weights(self{std})"
        if self.plan.deepnorm_beta is not None:
            init += f"\n        deepnorm_init(self, beta={py_literal(self.plan.deepnorm_beta)})"
        doc = f"The {self.plan.name} model, starting from the weights archspec builds it with."
        model_source = (
            f"class {self.model_class}({model.component}):\n"
            f'    """{doc}"""\n\n'
            "    def __init__(self) -> None:\n"
            f"        super().__init__(\n{body}\n        )\n"
            f"{init}\n\n\n"
            f"Model = {self.model_class}  # this file's model under a fixed name\n"
        )
        return "\n\n".join([*self.factories.values(), model_source])

    # ----------------------------------------------------------------------------------------- values
    def arguments(self, node: Call, indent: int) -> str:
        """One `name=value,` line per argument the component's emitted signature takes and that is not its
        default."""
        lines = []
        for key, value in self.kept(node):
            prefix = f"{key}=" if key else ""
            lines.append("    " * indent + prefix + self.value(value, indent, len(prefix) + 1) + ",")
        return "\n".join(lines)

    def kept(self, node: Call) -> list[tuple[str | None, Value]]:
        if node.component in TORCH_COMPONENTS:
            defaults = _torch_defaults(node.component)
            return [(k, v) for k, v in node.args if k is None or defaults.get(k, _NO_DEFAULT) != v]
        signature = self.signatures.get(node.component)
        if signature is None:  # not selected yet: print everything, the next round knows the signature
            return list(node.args)
        kept = []
        for key, value in node.args:
            if key is not None and (key not in signature.names or signature.defaults.get(key, _NO_DEFAULT) == value):
                continue  # a default, or an option the specialised component has built in
            kept.append((key, value))
        return kept

    def value(self, value: Value, indent: int, taken: int = 0) -> str:
        """`value` as source starting at `indent` levels after `taken` characters, exploded one item per line
        (trailing commas, as ruff keeps them) when it does not fit on the line."""
        inline = self.inline(value)
        if "\n" not in inline and len("    " * indent) + taken + len(inline) + 1 <= LINE_LENGTH:
            return inline
        if isinstance(value, Call):
            name = _callee(value.component)
            return f"{name}(\n{self.arguments(value, indent + 1)}\n{'    ' * indent})"
        if isinstance(value, tuple) and value and all(isinstance(item, Call) for item in value):
            items = "\n".join("    " * (indent + 1) + self.value(item, indent + 1) + "," for item in value)
            return f"[\n{items}\n{'    ' * indent}]"
        return inline

    def inline(self, value: Value) -> str:
        if isinstance(value, Call):
            inner = ", ".join((f"{k}=" if k else "") + self.inline(v) for k, v in self.kept(value))
            return f"{_callee(value.component)}({inner})"
        if isinstance(value, Fn):
            return _table_entry(value.table, value.key)
        if isinstance(value, Layers):
            return self.stack(value)
        if isinstance(value, tuple):
            if value and all(isinstance(item, Call) for item in value):
                return "[" + ", ".join(self.inline(item) for item in value) + "]"
            return _runs(value)
        return py_literal(value)

    def stack(self, layers: Layers) -> str:
        """The layers as factory calls: `[make_block() for _ in range(32)]`, runs of kinds concatenated."""
        for kind, block in layers.kinds:
            self.factory(kind, block, layers.counts()[kind])
        runs: list[tuple[str, int]] = []
        for kind in layers.pattern:
            if runs and runs[-1][0] == kind:
                runs[-1] = (kind, runs[-1][1] + 1)
            else:
                runs.append((kind, 1))
        if len(runs) > 3 and len(layers.kinds) == 2:  # scattered: name the layers of the rarer kind
            counts = layers.counts()
            rare, common = sorted(counts, key=lambda kind: counts[kind])
            where = tuple(index for index, kind in enumerate(layers.pattern) if kind == rare)
            return (
                f"[{_factory(rare)}() if index in {py_literal(where)} else {_factory(common)}() "
                f"for index in range({len(layers.pattern)})]"
            )
        parts = [
            f"[{_factory(kind)}() for _ in range({count})]" if count > 1 else f"[{_factory(kind)}()]"
            for kind, count in runs
        ]
        return " + ".join(parts)

    def factory(self, kind: str, block: Call, count: int) -> None:
        """`def make_<kind>() -> nn.Module: return <block>` for a kind of block (printed once)."""
        if kind in self.factories:
            return
        self.factories[kind] = ""  # placeholder keeps the order in which kinds are met
        noun = f"block of kind {kind!r}" if kind not in ("block", "vision", "encoder", "decoder") else "block"
        where = {"vision": "the vision tower", "encoder": "the encoder", "decoder": "the decoder"}.get(
            kind, "the model"
        )
        body = self.value(block, 1, len("    return "))
        self.factories[kind] = (
            f"def {_factory(kind)}() -> nn.Module:\n"
            f'    """One {block.component} {noun}; {where} stacks {count} of them."""\n'
            f"    return {body}\n"
        )


def _factory(kind: str) -> str:
    return "make_block" if kind == "block" else f"make_{kind}_block"


def _callee(component: str) -> str:
    return component


def _runs(values: tuple[Any, ...]) -> str:
    """A tuple literal, with runs of one value written as `(value,) * n` when that is shorter."""
    literal = py_literal(values)
    runs: list[tuple[Any, int]] = []
    for value in values:
        if runs and runs[-1][0] == value and type(runs[-1][0]) is type(value):
            runs[-1] = (value, runs[-1][1] + 1)
        else:
            runs.append((value, 1))
    if len(runs) == len(values):
        return literal
    compressed = " + ".join(
        f"({py_literal(value)},) * {count}" if count > 1 else f"({py_literal(value)},)" for value, count in runs
    )
    return compressed if len(compressed) < len(literal) else literal


@cache
def _table_entries(table: str) -> dict[str, str]:
    """Source of each entry of a dict of functions in `archspec.nn` (`"gelu-tanh"` -> `partial(F.gelu, ...)`).

    An unpacked table (`{**ACTIVATIONS, "quick-gelu": quick_gelu}`) contributes its own entries."""
    definition = library().definitions[table]
    text = "\n".join(definition.lines)
    (node,) = ast.parse(text).body
    assert isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict)
    sources = {}
    for key, value in zip(node.value.keys, node.value.values, strict=True):
        if key is None:  # **OTHER
            assert isinstance(value, ast.Name)
            sources.update(_table_entries(value.id))
            continue
        assert isinstance(key, ast.Constant) and isinstance(key.value, str)
        segment = ast.get_source_segment(text, value)
        assert segment is not None
        sources[key.value] = segment
    return sources


def _table_entry(table: str, key: str) -> str:
    try:
        return _table_entries(table)[key]
    except KeyError:
        raise NotImplementedError(f"{key!r} is not in archspec.nn's {table}") from None


__all__ = ["class_name", "emit_source", "module_name", "op_namespace", "py_str"]
