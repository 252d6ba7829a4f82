"""A `Diagram` from the compiler's `Plan`: every box, arrow and number is read from the plan's calls.

The compiler decided everything already (which residual layout, which norm, which position scheme, which layers
differ); this module only walks its decisions. A block's residual layout is its component (`PreNormBlock`,
`ParallelBlock`, ...), a layer's window and positions are the plan's per-layer tuples (`AttentionPaths.windows`,
`LayerRotary.of_layer`), and the kinds of blocks are `Layers.kinds` with `Layers.pattern` saying which layer has
which.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from archspec.draw import labels
from archspec.draw.picture import Diagram, Edge, EdgeKind, Group, Node, NodeKind, Strip
from archspec.plan import Call, Layers, Plan, Value

LAYOUTS = {
    "PreNormBlock": "pre-norm",
    "PostNormBlock": "post-norm",
    "DeepNormBlock": "DeepNorm (post-norm, residual × α)",
    "ParallelBlock": "parallel attention + MLP",
    "SandwichBlock": "sandwich (norms before and after each sublayer)",
    "CrossAttentionBlock": "pre-norm, self- then cross-attention",
}
"""Residual layouts, by the block component the compiler chose."""


def from_plan(plan: Plan, *, shared_experts: int | None = None) -> Diagram:
    """The picture of `plan`'s model. `shared_experts`: how many shared experts the MoE's one shared MLP stands
    for (a number the spec states; the plan holds their combined width only)."""
    return _Drawer(plan, shared_experts).draw()


@dataclass(frozen=True)
class _Stack:
    """What the blocks of one stack share: how attention masks, each layer's window, the position nodes that feed
    attention, and (decoders of an encoder-decoder) where cross-attention reads from."""

    name: str
    masking: str
    windows: tuple[int | None, ...] | None
    positions: tuple[tuple[str, str], ...]  # (node id, edge label)
    cross_from: str | None = None
    extras: tuple[str, ...] = ()


class _Drawer:
    def __init__(self, plan: Plan, shared_experts: int | None) -> None:
        self.plan, self.shared_experts = plan, shared_experts
        self.diagram = Diagram(plan.name)
        self.frames: list[Group] = []
        root = plan.model
        loss = root.get("router_loss")
        self.router_loss = loss if isinstance(loss, Call) else None

    # --------------------------------------------------------------------------------------- primitives
    def node(self, node_id: str, lines: tuple[str, ...] | str, kind: NodeKind) -> str:
        self.diagram.nodes.append(Node(node_id, (lines,) if isinstance(lines, str) else lines, kind))
        if self.frames:
            self.frames[-1].members.append(node_id)
        return node_id

    def edge(self, source: str, target: str, label: str = "", kind: EdgeKind = "flow") -> None:
        self.diagram.edges.append(Edge(source, target, label, kind))

    @contextmanager
    def frame(self, frame_id: str, title: str) -> Iterator[None]:
        group = Group(frame_id, title)
        (self.frames[-1].groups if self.frames else self.diagram.groups).append(group)
        self.frames.append(group)
        try:
            yield
        finally:
            self.frames.pop()

    # -------------------------------------------------------------------------------------------- model
    def draw(self) -> Diagram:
        root = self.plan.model
        if root.component == "EncoderDecoderLM":
            self.encoder_decoder(root)
        else:
            self.decoder(root)
        return self.diagram

    def decoder(self, root: Call) -> None:
        x = self.node("tokens", "input ids", "io")
        x = self.embedding(root, x)
        if root.component == "VisionLanguageLM":
            x = self.vision(root, x)
        pos_embed = root.get("pos_embed")
        if isinstance(pos_embed, Call):
            learned = self.node("position", ("Learned positions", labels_table(pos_embed)), "position")
            add = self.node("pos_add", "+", "add")
            self.edge(x, add)
            self.edge(learned, add, "position i", "side")
            x = add
        embed_norm = root.get("embed_norm")
        if isinstance(embed_norm, Call):
            x = self.follow(x, self.node("embed_norm", ("Embedding norm", labels.norm(embed_norm)), "norm"))
        paths = root["attention"]
        assert isinstance(paths, Call)
        masking = "causal, bidirectional over the prefix (GLM)" if root.get("prefix_lm") else "causal"
        stack = _Stack("dec", masking, _windows(paths), self.positions(root, paths), extras=_path_notes(paths))
        layers = root["layers"]
        assert isinstance(layers, Layers)
        x = self.stack(layers, stack, x, "Decoder block")
        self.strip(layers, paths, root.get("layer_rotary"))
        x = self.final_norm(root, x, "final_norm")
        self.head(root, x)

    def embedding(self, root: Call, x: str) -> str:
        embed = root["embed"]
        assert isinstance(embed, Call)
        lines = ["Token embedding", labels_table(embed)]
        scale = root.get("embed_scale")
        if isinstance(scale, int | float):
            d_model = embed.positional(1)
            assert isinstance(d_model, int)
            root_d = " = √d_model" if math.isclose(scale, math.sqrt(d_model)) else ""
            lines.append(f"× {labels.number(scale)}{root_d}")
        return self.follow(x, self.node("embed", tuple(lines), "embed"))

    def follow(self, previous: str, node_id: str, label: str = "") -> str:
        self.edge(previous, node_id, label)
        return node_id

    def final_norm(self, owner: Call, x: str, node_id: str, title: str = "Final norm") -> str:
        final = owner["final_norm"]
        assert isinstance(final, Call)
        if final.component == "nn.Identity":  # post-norm layouts end on a norm already
            return x
        return self.follow(x, self.node(node_id, (title, labels.norm(final)), "norm"))

    def head(self, root: Call, x: str) -> None:
        head = root["lm_head"]
        assert isinstance(head, Call)
        lines = ["LM head", f"d_model {labels.linear_shape(head)} vocab"]
        if root.get("head_scale") is not None:
            lines.insert(1, f"input × {labels.number(root['head_scale'])} (d_model^-0.5)")  # type: ignore[arg-type]
        lines.append("tied: the token embedding's weight" if root.get("tied") else "own weight (untied)")
        if root.get("logit_scale") is not None:
            lines.append(f"logits × {labels.number(root['logit_scale'])}")  # type: ignore[arg-type]
        if root.get("logit_softcap") is not None:
            lines.append(f"logits soft-capped at {labels.number(root['logit_softcap'])}")  # type: ignore[arg-type]
        x = self.follow(x, self.node("head", tuple(lines), "head"))
        self.follow(x, self.node("logits", "logits", "io"))

    # ----------------------------------------------------------------------------------------- positions
    def positions(self, root: Call, paths: Call) -> tuple[tuple[str, str], ...]:
        """The position node(s) that act inside attention, with the label of their arrow into it."""
        rotary, per_layer, alibi = root.get("rotary"), root.get("layer_rotary"), paths.get("alibi")
        if isinstance(rotary, Call):
            return ((self.node("position", ("Positions", labels.rotary(rotary)), "position"), "rotates q, k"),)
        if isinstance(per_layer, Call):
            rotaries = per_layer["rotaries"]
            assert isinstance(rotaries, tuple)
            lines = ["Positions, per layer (see the strip)"]
            lines += [labels.rotary(item) for item in rotaries if isinstance(item, Call)]
            if None in per_layer["of_layer"]:  # type: ignore[operator]
                lines.append("NoPE layers: no positions")
            return ((self.node("position", tuple(lines), "position"), "rotates q, k"),)
        if isinstance(alibi, Call):
            lines = ["Positions: ALiBi", "a linear bias by distance, one slope per head"]
            if alibi.get("divisor") is not None:
                lines.append(f"slopes ÷ {labels.number(alibi['divisor'])} (√head_dim)")  # type: ignore[arg-type]
            if alibi.get("bfloat16"):
                lines.append("slope × distance rounded to bfloat16")
            return ((self.node("position", tuple(lines), "position"), "bias on scores"),)
        if root.get("pos_embed") is not None:
            return ()
        lines = ("Positions: none", "only the causal mask orders tokens")
        return ((self.node("position", lines, "position"), "no position signal"),)

    # -------------------------------------------------------------------------------------------- blocks
    def stack(self, layers: Layers, stack: _Stack, x: str, noun: str) -> str:
        """Every kind of block in its frame, `× count`; kinds that follow each other in runs are chained, kinds
        that interleave are drawn side by side between the same two points (the strip tells which layer is which)."""
        counts = layers.counts()
        runs = _runs(layers.pattern)
        chained = len(runs) == len(counts)
        exits = []
        for kind, block in layers.kinds:
            layer_ids = [index for index, name in enumerate(layers.pattern) if name == kind]
            where = ""
            if len(counts) > 1:
                first, last = layer_ids[0], layer_ids[-1]
                where = f" · layers {first}–{last}" if chained else " · layers in the strip"
                where += f" · {_block_kind(block)}"
            title = f"{noun} × {counts[kind]}{where} · {_layout(block)}"
            prefix = f"{stack.name}.{kind}"
            windows = None if stack.windows is None else tuple(stack.windows[i] for i in layer_ids)
            entry = "" if chained else f"layers {_index_list(layer_ids)}"
            with self.frame(prefix, title):
                out = self.block(block, prefix, x, stack, windows, len(layers.pattern), entry)
            if chained:
                x = out
            else:
                exits.append(out)
        if chained:
            return x
        lines = (f"{len(layers.pattern)} layers in order,", "each through its own kind's block (see the strip)")
        merge = self.node(f"{stack.name}.merge", lines, "note")
        for out in exits:
            self.edge(out, merge)
        return merge

    def block(
        self,
        block: Call,
        p: str,
        x: str,
        stack: _Stack,
        windows: tuple[int | None, ...] | None,
        total: int,
        entry: str = "",
    ) -> str:
        """The nodes of one block in reading order, its residual arrows as the component wires them; returns the
        node its output leaves from."""
        sandwich = block.component == "SandwichBlock"

        def norm(slot: str) -> str | None:
            call = block[slot]
            assert isinstance(call, Call)
            if call.component == "nn.Identity":
                return None
            title = {"attn_out_norm": "Attention output norm", "mlp_out_norm": "MLP output norm"}.get(slot)
            lines = (title, labels.norm(call)) if sandwich and title else (labels.norm(call),)
            return self.node(f"{p}.{slot}", lines, "norm")

        def attn() -> str:
            return self.attention(block["attn"], f"{p}.attn", stack, windows, total)  # type: ignore[arg-type]

        def mlp() -> str:
            return self.mlp(block["mlp"], f"{p}.mlp")  # type: ignore[arg-type]

        def add(name: str, sublayer: str, residual: str, label: str = "", skip: str = "") -> str:
            node = self.node(f"{p}.{name}", "+", "add")
            self.edge(sublayer, node, label)
            self.edge(residual, node, skip, "residual")
            return node

        def chain(*ids: str | None) -> str:
            present = [node_id for node_id in ids if node_id is not None]
            for source, target in zip(present, present[1:], strict=False):
                self.edge(source, target)
            return present[-1]

        h = self.node(f"{p}.in", "h", "port")
        self.edge(x, h, entry)
        scale = block.get("residual_scale")
        scaled = f"× {labels.number(scale)}" if isinstance(scale, int | float) else ""
        match block.component:
            case "PreNormBlock":
                from_norm = bool(block.get("residual_from_norm"))
                n1 = norm("attn_norm")
                a = chain(h, n1, attn())
                add1 = add("add1", a, n1 if from_norm and n1 else h, scaled, "from the norm" if from_norm else "")
                n2 = norm("mlp_norm")
                m = chain(add1, n2, mlp())
                return add("add2", m, n2 if from_norm and n2 else add1, scaled, "from the norm" if from_norm else "")
            case "PostNormBlock" | "DeepNormBlock":
                alpha = block.get("alpha")
                skip = f"× α = {labels.number(alpha)}" if isinstance(alpha, int | float) else ""
                add1 = add("add1", chain(h, attn()), h, skip=skip)
                n1 = chain(add1, norm("attn_norm"))
                add2 = add("add2", chain(n1, mlp()), n1, skip=skip)
                return chain(add2, norm("mlp_norm"))
            case "ParallelBlock":
                n1 = norm("attn_norm")
                a = chain(h, n1, attn())
                if block.get("mlp_norm") is not None:
                    m = chain(h, norm("mlp_norm"), mlp())
                else:
                    m = mlp()
                    self.edge(n1 or h, m, "the same normed input")
                total_add = add("add", a, h)
                self.edge(m, total_add)
                return total_add
            case "SandwichBlock":
                add1 = add("add1", chain(h, norm("attn_norm"), attn(), norm("attn_out_norm")), h)
                return add("add2", chain(add1, norm("mlp_norm"), mlp(), norm("mlp_out_norm")), add1)
            case "CrossAttentionBlock":
                add1 = add("add1", chain(h, norm("attn_norm"), attn()), h)
                cross_stack = _Stack(stack.name, "over all encoder states", None, ())
                n2 = norm("cross_norm")
                cross = self.attention(block["cross_attn"], f"{p}.cross_attn", cross_stack, None, total)  # type: ignore[arg-type]
                chain(add1, n2, cross)
                if stack.cross_from:
                    self.edge(stack.cross_from, cross, "keys, values", "side")
                add2 = add("add2", cross, add1)
                return add("add3", chain(add2, norm("mlp_norm"), mlp()), add2)
        raise ValueError(f"no drawing for block component {block.component}")

    def attention(
        self, call: Call, node_id: str, stack: _Stack, windows: tuple[int | None, ...] | None, total: int
    ) -> str:
        if call.component == "LatentAttention":
            lines = labels.latent_attention(call, masking=stack.masking, extras=stack.extras)
        else:
            lines = labels.attention(
                call, masking=stack.masking, window=_window_text(windows, total), extras=stack.extras
            )
        self.node(node_id, lines, "attn")
        for position, label in stack.positions:
            self.edge(position, node_id, label, "side")
        return node_id

    def mlp(self, call: Call, node_id: str) -> str:
        if call.component == "MoE":
            return self.node(node_id, labels.moe(call, self.shared_experts, self.router_loss), "moe")
        return self.node(node_id, labels.mlp(call), "mlp")

    # -------------------------------------------------------------------------------------------- strip
    def strip(self, layers: Layers, paths: Call, per_layer: Value) -> None:
        """The per-layer strip, when layers differ in their block kind, window or positions."""
        count = len(layers.pattern)
        columns: list[tuple[str, ...]] = []
        if len(layers.kinds) > 1:
            described = {kind: _block_kind(block) for kind, block in layers.kinds}
            if len(set(described.values())) < len(described):
                described = {kind: f"{kind}: {text}" for kind, text in described.items()}
            columns.append(tuple(described[name] for name in layers.pattern))
        windows = _windows(paths)
        if windows is not None and len(set(windows)) > 1:
            columns.append(tuple("full attention" if w is None else f"window {w}" for w in windows))
        if isinstance(per_layer, Call):
            rotaries = per_layer["rotaries"]
            assert isinstance(rotaries, tuple)
            of_layer = per_layer["of_layer"]
            assert isinstance(of_layer, tuple)
            many = len(rotaries) > 1
            columns.append(
                tuple(
                    "NoPE" if index is None else (labels.rotary(rotaries[index]) if many else "RoPE")  # type: ignore[arg-type,index]
                    for index in of_layer
                )
            )
        if not columns:
            return
        kinds = [" · ".join(column[index] for column in columns) for index in range(count)]
        keys: dict[str, str] = {}
        for text in kinds:
            keys.setdefault(text, chr(ord("A") + len(keys)))
        cells = tuple(keys[text] for text in kinds)
        legend = tuple((key, text) for text, key in keys.items())
        summary = _pattern_words(cells)
        lines = [f"Layers differ: {count} layers", summary, *(f"{key}: {text}" for key, text in legend)]
        node = self.node("strip", tuple(lines), "strip")
        self.diagram.strips[node] = Strip(cells, legend, summary)

    # ------------------------------------------------------------------------------------------- vision
    def vision(self, root: Call, x: str) -> str:
        """Images: the tower (or external features), pooling, projector; spliced in at the image token."""
        tower, projector, pooling = root.get("vision_tower"), root["projector"], root.get("pooling")
        assert isinstance(projector, Call)
        images = self.node("images", "images", "io")
        feature_tokens, width = root["feature_shape"]  # type: ignore[misc]
        if isinstance(tower, Call):
            with self.frame("vision", "Vision tower (ViT)"):
                features = self.tower(tower, images)
        else:
            features = self.node(
                "vision.external",
                ("External vision tower", f"{feature_tokens} tokens × width {width} per image"),
                "vision",
            )
            self.edge(images, features)
        if isinstance(pooling, Call):
            grid, side = pooling.positional(0), pooling.positional(1)
            lines = ("Average pooling", f"{grid}×{grid} → {side}×{side} tokens per image")
            features = self.follow(features, self.node("pooling", lines, "vision"))
        linears = projector["layers"]
        assert isinstance(linears, tuple)
        act = labels.activation_title(projector["activation"])
        shapes = f" → {act} → ".join(labels.linear_shape(linear) for linear in linears if isinstance(linear, Call))
        features = self.follow(features, self.node("projector", ("Projector", shapes), "vision"))
        splice = self.node(
            "splice", ("Splice", f"{root['tokens_per_image']} image tokens at token id {root['image_token']}"), "vision"
        )
        self.edge(x, splice)
        self.edge(features, splice, "image tokens", "side")
        return splice

    def tower(self, tower: Call, images: str) -> str:
        embed = tower["embed"]
        assert isinstance(embed, Call)
        proj, positions = embed["proj"], embed["positions"]
        assert isinstance(proj, Call) and isinstance(positions, Call)
        rows, patch = positions.positional(0), proj["kernel_size"]
        assert isinstance(rows, int) and isinstance(patch, int)
        grid = math.isqrt(rows - bool(embed["class_token"]))
        lines = [
            "Patch embedding",
            f"{grid}×{grid} patches of {patch}×{patch} pixels ({grid * patch}×{grid * patch} images)",
            f"{proj.positional(0)} → {proj.positional(1)} channels, {rows} learned positions"
            + (" incl. a class token" if embed["class_token"] else ""),
        ]
        x = self.follow(images, self.node("vision.embed", tuple(lines), "vision"))
        pre = tower.get("pre_norm")
        if isinstance(pre, Call):
            x = self.follow(x, self.node("vision.pre_norm", ("Pre-norm", labels.norm(pre)), "norm"))
        layers = tower["layers"]
        assert isinstance(layers, Layers)
        stack = _Stack("vision", "bidirectional", None, ())
        x = self.stack(layers, stack, x, "ViT block")
        chosen = tower["feature_layers"]
        assert isinstance(chosen, tuple)
        states = ", ".join(str(index) for index in chosen)
        lines = [f"Features: hidden state {states}", f"(0: the embeddings, {len(layers.pattern)}: the last block)"]
        if tower.get("drop_class_token"):
            lines.append("patch tokens only (class token dropped)")
        return self.follow(x, self.node("vision.features", tuple(lines), "note"))

    # ----------------------------------------------------------------------------------- encoder-decoder
    def encoder_decoder(self, root: Call) -> None:
        encoder, decoder = root["encoder"], root["decoder"]
        assert isinstance(encoder, Call) and isinstance(decoder, Call)
        embed = self.embedding(root, self.node("tokens", "input ids", "io"))
        enc_out = self.encoder_stack(encoder, "enc", "Encoder", "bidirectional", embed, None)
        dec_inputs = self.node("dec_tokens", f"decoder input ids (start: {root['decoder_start']})", "io")
        table = root["embed"]
        assert isinstance(table, Call)
        dec_embed = self.node("dec_embed", ("Token embedding", f"the same {labels_table(table)} table"), "embed")
        self.edge(dec_inputs, dec_embed)
        dec_out = self.encoder_stack(decoder, "dec", "Decoder", "causal", dec_embed, enc_out)
        self.diagram.rows.append(("tokens", "dec_tokens"))
        self.head(root, dec_out)

    def encoder_stack(self, stack_call: Call, name: str, title: str, masking: str, x: str, cross: str | None) -> str:
        bias = stack_call["position_bias"]
        assert isinstance(bias, Call)
        table = bias["table"]
        assert isinstance(table, Call)
        lines = (
            f"{title} positions: relative bias",
            f"{table.positional(0)} buckets · max distance {bias['max_distance']} · "
            f"{'both directions' if bias['bidirectional'] else 'past only'}",
            f"one bias per head ({table.positional(1)}), shared by the stack's layers",
        )
        position = self.node(f"{name}.position", lines, "position")
        layers = stack_call["layers"]
        assert isinstance(layers, Layers)
        stack = _Stack(name, masking, None, ((position, "bias on scores"),), cross_from=cross)
        x = self.stack(layers, stack, x, f"{title} block")
        return self.final_norm(stack_call, x, f"{name}.final_norm", f"{title} final norm")


# ------------------------------------------------------------------------------------------------ helpers
def labels_table(call: Call) -> str:
    """An embedding table's shape: rows × width."""
    return f"{call.positional(0)} × {call.positional(1)}"


def _windows(paths: Call) -> tuple[int | None, ...] | None:
    windows = paths.get("windows")
    return windows if isinstance(windows, tuple) else None  # type: ignore[return-value]


def _path_notes(paths: Call) -> tuple[str, ...]:
    """What the attention paths add to every layer's scores: a soft-cap, GPT-2's inverse layer scale."""
    notes = []
    if paths.get("softcap") is not None:
        notes.append(f"scores soft-capped at {labels.number(paths['softcap'])}")  # type: ignore[arg-type]
    if paths.component == "LayerScaledPaths":
        notes.append("scores ÷ (layer index + 1)")
    return tuple(notes)


def _window_text(windows: tuple[int | None, ...] | None, total: int) -> str | None:
    """`window 4096` (every layer of the block), `window 4096 in 21 of 42 layers (strip); full in the rest`."""
    if windows is None or all(window is None for window in windows):
        return None
    sizes = sorted({window for window in windows if window is not None})
    text = "sliding window " + " / ".join(str(size) for size in sizes)
    windowed = sum(window is not None for window in windows)
    if windowed == len(windows) == total:
        return text + ", every layer"
    return text + f" in {windowed} of {total} layers (strip); full attention in the others"


def _layout(block: Call) -> str:
    layout = LAYOUTS.get(block.component, block.component)
    if block.component == "ParallelBlock":
        layout += ", two norms" if block.get("mlp_norm") is not None else ", one shared norm"
    if block.component == "SandwichBlock" and _identity(block.get("attn_norm")):
        layout = "output norms (a norm after each sublayer, none before)"
    if block.get("residual_from_norm"):
        layout += ", residual from the normed input"
    if block.get("residual_scale") is not None:
        layout += f", sublayer outputs × {labels.number(block['residual_scale'])}"  # type: ignore[arg-type]
    return layout


def _identity(value: Value) -> bool:
    return isinstance(value, Call) and value.component == "nn.Identity"


def _block_kind(block: Call) -> str:
    """What tells a kind of block apart at a glance: its MLP (dense or MoE)."""
    mlp = block.get("mlp")
    return "MoE" if isinstance(mlp, Call) and mlp.component == "MoE" else "dense MLP"


def _index_list(indices: list[int]) -> str:
    """`0, 2, 4` (up to 8), else `0, 2, 4, …, 46` (the strip has them all)."""
    if len(indices) <= 8:
        return ", ".join(map(str, indices))
    return ", ".join(map(str, indices[:3])) + f", …, {indices[-1]}"


def _runs(pattern: tuple[str, ...]) -> list[tuple[str, int]]:
    runs: list[tuple[str, int]] = []
    for name in pattern:
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1] + 1)
        else:
            runs.append((name, 1))
    return runs


def _pattern_words(cells: tuple[str, ...]) -> str:
    """`(5 × A, 1 × B) × 10, then 2 × A` for a repeating pattern; `0–2 A, 3–60 B` otherwise."""
    count = len(cells)
    for period in range(1, count // 2 + 1):
        if all(cells[index] == cells[index % period] for index in range(count)):
            repeats, rest = divmod(count, period)
            unit = ", ".join(f"{n} × {key}" for key, n in _runs(cells[:period]))
            text = f"({unit}) × {repeats}" if len(_runs(cells[:period])) > 1 else f"{repeats * period} × {cells[0]}"
            if rest:
                text += ", then " + ", ".join(f"{n} × {key}" for key, n in _runs(cells[:rest]))
            return "layers: " + text
    parts, start = [], 0
    for key, n in _runs(cells):
        end = start + n - 1
        parts.append(f"{start}–{end} {key}" if n > 1 else f"{start} {key}")
        start = end + 1
    return "layers " + ", ".join(parts)
