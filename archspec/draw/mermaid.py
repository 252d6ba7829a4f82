"""A `Diagram` as Mermaid flowchart source (GitHub, GitLab and most documentation tools render it).

Labels are quoted strings with `<br/>` line breaks; characters Mermaid would read as syntax are written as its
entity codes (`#quot;`). Frames are `subgraph`s; residual arrows are dotted, side inputs dashed with a label.
"""

from __future__ import annotations

import re

from archspec.draw.picture import Diagram, Edge, Group, Node

STYLES = {
    "io": "fill:#ffffff,stroke:#555555",
    "embed": "fill:#e8f0fe,stroke:#3b6fd4",
    "norm": "fill:#fff4d6,stroke:#c9a227",
    "attn": "fill:#fde2d2,stroke:#d46a3b",
    "mlp": "fill:#dcf2dc,stroke:#3b9a4b",
    "moe": "fill:#cdeccd,stroke:#2f7d3c,stroke-width:2px",
    "position": "fill:#efe3fa,stroke:#8a55c4",
    "head": "fill:#e8f0fe,stroke:#3b6fd4",
    "add": "fill:#ffffff,stroke:#333333",
    "port": "fill:#ffffff,stroke:#999999",
    "vision": "fill:#e0f4f7,stroke:#2b8a9e",
    "note": "fill:#f5f5f5,stroke:#999999",
    "strip": "fill:#f5f5f5,stroke:#666666",
    "changed": "fill:#ffd6d6,stroke:#cc0000,stroke-width:3px",
}

_SHAPES = {"io": ('(["', '"])'), "add": ('(("', '"))'), "port": ('(("', '"))')}


def _id(node_id: str) -> str:
    """A Mermaid-safe identifier (letters, digits, underscores)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", node_id)


def escape(text: str) -> str:
    """Text inside a quoted Mermaid label: quotes and angle brackets as entity codes."""
    return text.replace("&", "#amp;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def _node(node: Node) -> str:
    opening, closing = _SHAPES.get(node.kind, ('["', '"]'))
    lines = [escape(line) for line in node.lines]
    if len(lines) > 1 and node.kind not in ("add", "port", "io"):
        lines[0] = f"<b>{lines[0]}</b>"
    return f"{_id(node.id)}{opening}{'<br/>'.join(lines)}{closing}"


def _edge(edge: Edge) -> str:
    arrow = {"flow": "-->", "residual": "-.->", "side": "-.->"}[edge.kind]
    label = f"|{escape(edge.label)}|" if edge.label else ""
    return f"{_id(edge.source)} {arrow}{label} {_id(edge.target)}"


def _group(group: Group, nodes: dict[str, Node], indent: str) -> list[str]:
    lines = [f'{indent}subgraph {_id(group.id)}["{escape(group.title)}"]']
    lines += [f"{indent}  {_node(nodes[member])}" for member in group.members]
    for inner in group.groups:
        lines += _group(inner, nodes, indent + "  ")
    lines.append(f"{indent}end")
    return lines


def _all_groups(groups: list[Group]) -> list[Group]:
    found: list[Group] = []
    for group in groups:
        found += [group, *_all_groups(group.groups)]
    return found


def to_mermaid(diagram: Diagram) -> str:
    """The flowchart source (top to bottom), ending in a newline."""
    nodes = {node.id: node for node in diagram.nodes}
    grouped = diagram.grouped()
    lines = ["flowchart TB"]
    lines += [f"  {_node(node)}" for node in diagram.nodes if node.id not in grouped]
    for group in diagram.groups:
        lines += _group(group, nodes, "  ")
    lines += [f"  {_edge(edge)}" for edge in diagram.edges]
    used = []
    for kind, style in STYLES.items():
        members = [_id(node.id) for node in diagram.nodes if (node.changed and kind == "changed") or
                   (not node.changed and node.kind == kind)]  # fmt: skip
        if members:
            used.append(f"  classDef {kind} {style}")
            used.append(f"  class {','.join(members)} {kind}")
    lines += used
    for group in _all_groups(diagram.groups):
        if group.changed:
            lines.append(f"  style {_id(group.id)} stroke:#cc0000,stroke-width:3px")
    return "\n".join(lines) + "\n"


def to_markdown(diagram: Diagram, note: str = "") -> str:
    """A Markdown page: a heading, an optional note, and the flowchart in a ```mermaid fence."""
    head = f"# {diagram.title}\n\n" + (f"{note}\n\n" if note else "")
    return f"{head}```mermaid\n{to_mermaid(diagram)}```\n"
