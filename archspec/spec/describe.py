"""A spec in words: one short phrase per architectural choice, the row of an architecture comparison table
(`archspec info`'s summary). It describes what the spec says, not what the compiler builds from it."""

from __future__ import annotations

from archspec.spec.schema import AlibiSpec, LatentAttentionSpec, LearnedPositionSpec, RopeSpec, Spec


def describe(spec: Spec) -> dict[str, str]:
    """One short phrase per architectural choice: the row of an architecture table."""
    attn = spec.attention
    if isinstance(attn, LatentAttentionSpec):
        q = f"q rank {attn.q_rank}" if attn.q_rank else "full q"
        attention = f"MLA {attn.heads}q, kv rank {attn.kv_rank}, {q}, dims {attn.nope_dim}+{attn.rope_dim}/{attn.v_dim}"
    else:
        heads, kv = attn.heads, spec.kv_heads
        kind = "MHA" if kv == heads else "MQA" if kv == 1 else "GQA"
        attention = f"{kind} {heads}q/{kv}kv x {spec.head_dim}"
        if attn.window is not None:
            layers = "" if attn.window_layers is None else f" on {len(attn.window_layers)} layers"
            attention += f", window {attn.window}{layers}"
        if attn.qk_norm is not None:
            qk = attn.qk_norm
            where = (
                "projection" if qk.over == "projection" else "per head" + (" weights" if qk.per_head_weights else "")
            )
            attention += f", qk-norm ({where}{', after rope' if qk.after_rope else ''})"
        if attn.scale is not None:
            attention += f", scale {attn.scale:.4g}"
        if attn.softcap is not None:
            attention += f", softcap {attn.softcap:g}"
        biased = [name for name in ("q", "k", "v", "o") if getattr(attn.bias, name)]
        if biased:
            attention += f", bias {','.join(biased)}"

    where = describe_position(spec, spec.position)
    if spec.layers is not None:
        attention += f", layers {describe_pattern(spec)}"
        own = {name: kind.position for name, kind in spec.layers.kinds.items() if kind.position is not None}
        where += "".join(f"; {name}: {describe_position(spec, position)}" for name, position in own.items())

    norm = spec.norm.kind + (" (no bias)" if spec.norm.kind == "layernorm" and not spec.norm.bias else "")
    norm += " (1 + w)" if spec.norm.offset else ""
    block = spec.block.kind
    if block == "parallel":
        block += f", {spec.block.parallel_norms} norm{'s' if spec.block.parallel_norms == 2 else ''}"
    if spec.block.residual_from_norm:
        block += ", residual from norm"
    if spec.block.residual_scale != 1.0:
        block += f", residual x{spec.block.residual_scale:g}"
    mlp = f"{spec.mlp.activation} {spec.mlp.d_ff}" + (", bias" if spec.mlp.bias else "")
    emb = spec.embeddings
    embeddings = ("tied" if emb.tied else "untied") + (", norm" if emb.norm else "")
    if emb.scale is not None:
        embeddings += ", x sqrt(d)" if emb.scale == "sqrt-d-model" else f", x{emb.scale:g}"
    if emb.logit_scale != 1.0:
        embeddings += f", logits x{emb.logit_scale:g}"
    if emb.logit_softcap is not None:
        embeddings += f", logit softcap {emb.logit_softcap:g}"
    return {
        "structure": spec.structure,
        "attention": attention,
        "position": where,
        "norm": norm,
        "block": block,
        "mlp": mlp,
        "moe": _describe_moe(spec),
        "embeddings": embeddings,
    }


def describe_position(spec: Spec, position: object) -> str:
    """One position scheme in words (the spec's, or a layer kind's)."""
    if isinstance(position, RopeSpec):
        theta = int(position.theta) if position.theta.is_integer() else position.theta
        where = f"rope theta {theta}"
        if position.fraction < 1:
            where += f", {int(spec.head_dim * position.fraction)}/{spec.head_dim} dims"
        if position.pairing == "interleaved":
            where += ", interleaved"
        if position.scaling is not None:
            where += f", {describe_scaling(position.scaling)}"
        return where
    if isinstance(position, AlibiSpec):
        return "alibi"
    if isinstance(position, LearnedPositionSpec):
        return f"learned ({spec.context_length})"
    if getattr(position, "kind", None) == "relative-bias":
        return f"relative bias, {position.buckets} buckets, max {position.max_distance}"  # type: ignore[attr-defined]
    return str(getattr(position, "kind", position))


def describe_scaling(scaling: object) -> str:
    """`linear x8`; LongRoPE has no single factor: `longrope from 4096` (its original context)."""
    kind = getattr(scaling, "kind", "")
    if kind == "longrope":
        return f"longrope from {scaling.original_context}"  # type: ignore[attr-defined]
    return f"{kind} x{scaling.factor:g}"  # type: ignore[attr-defined]


def describe_pattern(spec: Spec) -> str:
    """A layers section in words: the repeating pattern as runs of kinds (`5 sliding + full`), the exceptions."""
    layers = spec.layers
    assert layers is not None
    runs: list[list[object]] = []
    for name in layers.pattern:
        if runs and runs[-1][1] == name:
            runs[-1][0] += 1  # type: ignore[operator]
        else:
            runs.append([1, name])
    text = " + ".join(f"{count} {name}" if count != 1 else str(name) for count, name in runs)
    text = f"({text}) repeated" if len(layers.pattern) < spec.n_layers else text
    for name, listed in layers.exceptions.items():
        text += f", {name} at {listed}"
    return text


def _describe_moe(spec: Spec) -> str:
    moe = spec.moe
    if moe is None:
        return "dense"
    router = moe.router
    text = f"{moe.experts} experts top-{moe.top_k} x {moe.d_ff}"
    if moe.shared_experts:
        text += f" + {moe.shared_experts} shared" + (" (gated)" if moe.shared_gate else "")
    text += f", {router.scoring}"
    if router.groups > 1:
        text += f", {router.top_groups}/{router.groups} groups"
    if moe.layers is not None:
        text += f", on {len(moe.layers)} layers"
    elif moe.dense_layers:
        text += f", first {moe.dense_layers} dense"
    return text
