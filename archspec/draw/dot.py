"""A `Diagram` as Graphviz DOT source; `dot` lays it out (no layout is computed here).

Boxes carry HTML-like labels (a bold title, then the numbers); a per-layer strip is a table with one coloured cell
per layer and its legend. Residual arrows are dashed grey, side inputs (positions, encoder states, tied weights)
dashed purple.
"""

from __future__ import annotations

import html
import re

from archspec.draw.picture import Diagram, Edge, Group, Node, Strip

FILL = {
    "io": "#ffffff",
    "embed": "#e8f0fe",
    "norm": "#fff4d6",
    "attn": "#fde2d2",
    "mlp": "#dcf2dc",
    "moe": "#cdeccd",
    "position": "#efe3fa",
    "head": "#e8f0fe",
    "add": "#ffffff",
    "port": "#999999",
    "vision": "#e0f4f7",
    "note": "#f5f5f5",
    "strip": "#ffffff",
}
CELL_COLOURS = ("#8fb8e8", "#f0b27a", "#9ed39e", "#d7a6e8", "#f5d76e", "#a3d9d9", "#e8a0a0", "#c8c8c8")
CELLS_PER_ROW = 32


def _id(node_id: str) -> str:
    return '"' + re.sub(r"[^A-Za-z0-9_.]", "_", node_id) + '"'


def _text(line: str) -> str:
    return html.escape(line, quote=True)


def _label(node: Node) -> str:
    if len(node.lines) == 1:
        return f"<{_text(node.lines[0])}>"
    title, *rest = node.lines
    return "<<B>" + _text(title) + "</B>" + "".join(f"<BR/>{_text(line)}" for line in rest) + ">"


def _strip_label(strip: Strip, title: str) -> str:
    """One cell per layer (its index inside, coloured by kind), rows of CELLS_PER_ROW, then the legend."""
    colour = {key: CELL_COLOURS[index % len(CELL_COLOURS)] for index, (key, _) in enumerate(strip.legend)}
    width = min(CELLS_PER_ROW, len(strip.cells))
    rows = [f'<TR><TD COLSPAN="{width}" BORDER="0"><B>{_text(title)}</B></TD></TR>']
    for start in range(0, len(strip.cells), CELLS_PER_ROW):
        cells = "".join(
            f'<TD BGCOLOR="{colour[key]}" WIDTH="22"><FONT POINT-SIZE="8">{index}<BR/>{key}</FONT></TD>'
            for index, key in enumerate(strip.cells[start : start + CELLS_PER_ROW], start)
        )
        rows.append(f"<TR>{cells}</TR>")
    rows.append(f'<TR><TD COLSPAN="{width}" BORDER="0">{_text(strip.summary)}</TD></TR>')
    for key, text in strip.legend:
        rows.append(
            f'<TR><TD BGCOLOR="{colour[key]}">{key}</TD><TD COLSPAN="{max(1, width - 1)}" BORDER="0" ALIGN="LEFT">'
            f"{_text(text)}</TD></TR>"
        )
    return f'<<TABLE BORDER="0" CELLBORDER="1" CELLSPACING="0" CELLPADDING="2">{"".join(rows)}</TABLE>>'


def _node(node: Node, strip: Strip | None) -> str:
    if strip is not None:
        attrs = f"shape=plain label={_strip_label(strip, node.lines[0])}"
    elif node.kind == "add":
        attrs = f"shape=circle width=0.3 fixedsize=true label={_label(node)}"
    elif node.kind == "port":
        attrs = 'shape=point width=0.08 label=""'
    elif node.kind == "io":
        attrs = f'shape=ellipse style=filled fillcolor="{FILL["io"]}" label={_label(node)}'
    else:
        attrs = f'shape=box style="rounded,filled" fillcolor="{FILL[node.kind]}" label={_label(node)}'
    if node.changed:
        attrs += ' color="#cc0000" penwidth=3 fillcolor="#ffd6d6" style="rounded,filled"'
    return f"{_id(node.id)} [{attrs}];"


def _edge(edge: Edge) -> str:
    attrs = []
    if edge.kind == "flow":
        attrs.append("weight=8")
    elif edge.kind == "residual":
        attrs.append('style=dashed color="#888888"')
    elif edge.kind == "side":
        attrs.append('style=dashed color="#8a55c4" fontcolor="#6a3aa4"')
    if edge.label:
        attrs.append(f"label=<{_text(edge.label)}>")
    suffix = f" [{' '.join(attrs)}]" if attrs else ""
    return f"{_id(edge.source)} -> {_id(edge.target)}{suffix};"


def _group(group: Group, nodes: dict[str, Node], strips: dict[str, Strip], indent: str) -> list[str]:
    colour = ' color="#cc0000" penwidth=3' if group.changed else ' color="#777777"'
    lines = [
        f"{indent}subgraph {_id('cluster_' + group.id)} {{",
        f'{indent}  label=<<B>{_text(group.title)}</B>> labeljust=l style="rounded"{colour};',
    ]
    lines += [f"{indent}  {_node(nodes[member], strips.get(member))}" for member in group.members]
    for inner in group.groups:
        lines += _group(inner, nodes, strips, indent + "  ")
    lines.append(f"{indent}}}")
    return lines


def to_dot(diagram: Diagram) -> str:
    """The graph source, top to bottom, ending in a newline."""
    nodes = {node.id: node for node in diagram.nodes}
    grouped = diagram.grouped()
    lines = [
        "digraph archspec {",
        f'  graph [rankdir=TB fontname="Helvetica" fontsize=12 nodesep=0.35 ranksep=0.3 newrank=true '
        f"label=<<B>{_text(diagram.title)}</B>> labelloc=t fontsize=16];",
        '  node [fontname="Helvetica" fontsize=11];',
        '  edge [fontname="Helvetica" fontsize=9];',
    ]
    lines += [f"  {_node(node, diagram.strips.get(node.id))}" for node in diagram.nodes if node.id not in grouped]
    for group in diagram.groups:
        lines += _group(group, nodes, diagram.strips, "  ")
    lines += [f"  {_edge(edge)}" for edge in diagram.edges]
    for row in diagram.rows:  # one level, in this order: an invisible chain
        lines.append(f"  {{rank=same; {' -> '.join(_id(node_id) for node_id in row)} [style=invis]}}")
    lines.append("}")
    return "\n".join(lines) + "\n"
