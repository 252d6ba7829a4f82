"""`archspec draw`: the picture of an architecture, drawn from the plan the compiler builds.

```
spec ──compile──▶ Plan ──from_plan──▶ Diagram (plain data) ──to_mermaid──▶ .mmd / .md
                                                            └─to_dot─────▶ .dot ──Graphviz dot──▶ .svg / .png
```
The picture reads the same plan `archspec.build` instantiates, so it cannot drift from the model. Nothing here
imports torch.
"""

from __future__ import annotations

from pathlib import Path

from archspec.compiler import plan as compile_plan
from archspec.draw.dot import to_dot
from archspec.draw.from_plan import from_plan
from archspec.draw.mermaid import to_markdown, to_mermaid
from archspec.draw.picture import Diagram, side_by_side
from archspec.draw.render import DrawError, render
from archspec.spec.schema import Spec

__all__ = [
    "FORMATS",
    "Diagram",
    "DrawError",
    "diagram",
    "diff_diagram",
    "format_of",
    "picture",
    "side_by_side",
    "to_dot",
    "to_markdown",
    "to_mermaid",
]

FORMATS = {
    "mmd": "Mermaid flowchart",
    "md": "Markdown page with a Mermaid flowchart",
    "dot": "Graphviz source",
    "svg": "SVG rendered by Graphviz's dot",
    "png": "PNG rendered by Graphviz's dot",
}
"""Output formats, by file suffix."""


def diagram(spec: Spec) -> Diagram:
    """The picture of `spec`'s model, from its compiled plan."""
    moe = getattr(spec, "moe", None)
    return from_plan(compile_plan(spec), shared_experts=moe.shared_experts if moe is not None else None)


def diff_diagram(first: Spec, second: Spec, titles: tuple[str, str] | None = None) -> Diagram:
    """Both pictures side by side, with the boxes and frames that differ marked."""
    return side_by_side(diagram(first), diagram(second), titles or (first.name, second.name))


def format_of(path: str | Path) -> str:
    """The format a file's suffix asks for; a DrawError listing the known suffixes otherwise."""
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix not in FORMATS:
        known = ", ".join(f".{name} ({what})" for name, what in FORMATS.items())
        raise DrawError(f"{path}: cannot tell the picture's format from the suffix {suffix or '(none)'!r}; use {known}")
    return suffix


def picture(figure: Diagram, fmt: str, *, markdown_note: str = "") -> bytes:
    """`figure` in format `fmt` (a key of FORMATS), as the bytes of the file."""
    match fmt:
        case "mmd":
            return to_mermaid(figure).encode()
        case "md":
            return to_markdown(figure, markdown_note).encode()
        case "dot":
            return to_dot(figure).encode()
        case "svg" | "png":
            return render(to_dot(figure), fmt)
    raise DrawError(f"unknown picture format {fmt!r} (known: {', '.join(FORMATS)})")
