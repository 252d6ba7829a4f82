"""Python literals for generated source: exact (`repr` semantics) and already laid out as `ruff format` would.

Nothing from a spec reaches generated code except through these functions: strings are escaped exactly as
`repr` escapes them (only the choice of quote differs: double unless that needs more escapes, as ruff does),
numbers are `repr`'d, and anything that is not a plain literal is refused.
"""

from __future__ import annotations

import math
from typing import Any

LINE_LENGTH = 120
INDENT = "    "


def py_str(text: str) -> str:
    """A string literal equal to `text`: repr's escapes, ruff's preferred quote."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    body = repr(text)[1:-1]
    raw: list[str] = []  # the escaped body with quote escapes undone: other escapes stay as repr wrote them
    index = 0
    while index < len(body):
        if body[index] == "\\":
            pair = body[index : index + 2]
            raw.append(pair[1] if pair[1] in "'\"" else pair)
            index += 2
        else:
            raw.append(body[index])
            index += 1
    chosen = "'" if text.count('"') > text.count("'") else '"'
    return chosen + "".join("\\" + part if part == chosen else part for part in raw) + chosen


def py_literal(value: Any) -> str:
    """A one-line literal of None, bool, int, float, str, or lists/tuples/dicts of them."""
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return repr(int(value))
    if isinstance(value, float):
        return repr(float(value)) if math.isfinite(value) else f'float("{value!r}")'
    if isinstance(value, str):
        return py_str(value)
    if isinstance(value, tuple):
        items = [py_literal(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py_str(_key(k))}: {py_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot emit a {type(value).__name__} as a literal")


def py_block(value: Any, indent: int = 0, prefix: str = "", suffix: str = "", expand: bool = False) -> str:
    """`prefix + literal + suffix` at `indent` levels, split one item per line (with a trailing comma) when the
    one-line form is longer than the line length, or when `expand` asks for it, as `ruff format` lays it out."""
    pad = INDENT * indent
    inline = py_literal(value)
    fits = len(pad) + len(prefix) + len(inline) + len(suffix) <= LINE_LENGTH
    if (fits and not expand) or not isinstance(value, dict | list) or not value:
        return f"{pad}{prefix}{inline}{suffix}"
    opening, closing = ("{", "}") if isinstance(value, dict) else ("[", "]")
    if isinstance(value, dict):
        items = [py_block(v, indent + 1, f"{py_str(_key(k))}: ", ",") for k, v in value.items()]
    else:
        items = [py_block(v, indent + 1, "", ",") for v in value]
    return f"{pad}{prefix}{opening}\n" + "\n".join(items) + f"\n{pad}{closing}{suffix}"


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"dict keys must be strings, got {type(key).__name__}")
    return key
