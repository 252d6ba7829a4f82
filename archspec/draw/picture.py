"""The picture of a model as plain data: boxes, arrows, nested frames and a per-layer strip.

Nothing here knows about a spec or a plan, nor about an output format: `archspec.draw.from_plan` fills a
`Diagram` from the compiler's plan, and the writers (`mermaid`, `dot`) print one. A node's `id` is its role in the
model (`block.attn`, `head`), so two diagrams can be compared box by box (`side_by_side`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

NodeKind = Literal[
    "io", "embed", "norm", "attn", "mlp", "moe", "position", "head", "add", "port", "vision", "note", "strip"
]
EdgeKind = Literal["flow", "residual", "side"]


@dataclass(frozen=True)
class Node:
    """One box. `lines[0]` is its title, the rest its numbers; `changed` marks a box that differs in a diff."""

    id: str
    lines: tuple[str, ...]
    kind: NodeKind
    changed: bool = False


@dataclass(frozen=True)
class Edge:
    """An arrow: `flow` carries the hidden state, `residual` the skip path, `side` an input from the side (a
    position scheme into attention, encoder states into cross-attention, image tokens into the sequence)."""

    source: str
    target: str
    label: str = ""
    kind: EdgeKind = "flow"


@dataclass
class Group:
    """A frame around nodes (a block repeated `× N`, a vision tower, one model of a diff); frames nest."""

    id: str
    title: str
    members: list[str] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    changed: bool = False


@dataclass(frozen=True)
class Strip:
    """The kind of every layer, when layers differ: `cells[i]` is a key of `legend` (key -> what it means), and
    `summary` the pattern in words ("(5 × A, 1 × B) × 10, then 2 × A")."""

    cells: tuple[str, ...]
    legend: tuple[tuple[str, str], ...]
    summary: str


@dataclass
class Diagram:
    """A whole picture: its title, nodes, arrows, top-level frames and, keyed by node id, the per-layer strips."""

    title: str
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    strips: dict[str, Strip] = field(default_factory=dict)
    rows: list[tuple[str, ...]] = field(default_factory=list)  # nodes to keep on one level, left to right

    def node(self, node_id: str) -> Node:
        return next(node for node in self.nodes if node.id == node_id)

    def grouped(self) -> set[str]:
        """Ids of the nodes inside some frame."""
        found: set[str] = set()

        def collect(group: Group) -> None:
            found.update(group.members)
            for inner in group.groups:
                collect(inner)

        for group in self.groups:
            collect(group)
        return found


def _prefixed(group: Group, prefix: str) -> Group:
    return Group(
        prefix + group.id,
        group.title,
        [prefix + member for member in group.members],
        [_prefixed(inner, prefix) for inner in group.groups],
        group.changed,
    )


def side_by_side(first: Diagram, second: Diagram, titles: tuple[str, str]) -> Diagram:
    """Both diagrams in one picture, each in its own frame; a box whose text differs from the box of the same role
    in the other diagram (or that the other lacks) is marked `changed`, and so is a frame whose title differs."""
    combined = Diagram(f"{titles[0]} vs {titles[1]} (red: what differs)")
    for prefix, own, other, title in (("a_", first, second, titles[0]), ("b_", second, first, titles[1])):
        theirs = {node.id: node for node in other.nodes}
        for node in own.nodes:
            twin = theirs.get(node.id)
            differs = twin is None or twin.lines != node.lines or own.strips.get(node.id) != other.strips.get(node.id)
            combined.nodes.append(replace(node, id=prefix + node.id, changed=differs and node.kind != "port"))
        combined.edges += [
            replace(edge, source=prefix + edge.source, target=prefix + edge.target) for edge in own.edges
        ]
        combined.strips |= {prefix + key: strip for key, strip in own.strips.items()}
        combined.rows += [tuple(prefix + node_id for node_id in row) for row in own.rows]
        their_titles = _titles(other.groups)
        frames = [_prefixed(group, prefix) for group in own.groups]
        for group, original in zip(_all(frames), _all(own.groups), strict=True):
            group.changed = their_titles.get(original.id) != original.title
        loose = [prefix + node.id for node in own.nodes if node.id not in own.grouped()]
        combined.groups.append(Group(f"{prefix}model", title, loose, frames))
    return combined


def _all(groups: list[Group]) -> list[Group]:
    """Every frame, nested ones included, depth first."""
    found: list[Group] = []
    for group in groups:
        found.append(group)
        found += _all(group.groups)
    return found


def _titles(groups: list[Group]) -> dict[str, str]:
    return {group.id: group.title for group in _all(groups)}
