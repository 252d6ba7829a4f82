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
        if attn.qk_norm:
            attention += ", qk-norm"
        biased = [name for name in ("q", "k", "v", "o") if getattr(attn.bias, name)]
        if biased:
            attention += f", bias {','.join(biased)}"

    position = spec.position
    if isinstance(position, RopeSpec):
        theta = int(position.theta) if position.theta.is_integer() else position.theta
        where = f"rope theta {theta}"
        if position.fraction < 1:
            where += f", {spec.rotary_dim}/{spec.head_dim} dims"
        if position.pairing == "interleaved":
            where += ", interleaved"
        if position.scaling is not None:
            where += f", {position.scaling.kind} x{position.scaling.factor:g}"
    elif isinstance(position, AlibiSpec):
        where = "alibi"
    elif isinstance(position, LearnedPositionSpec):
        where = f"learned ({spec.context_length})"
    elif position.kind == "relative-bias":
        where = f"relative bias, {position.buckets} buckets, max {position.max_distance}"  # type: ignore[union-attr]
    else:
        where = position.kind

    norm = spec.norm.kind + (" (no bias)" if spec.norm.kind == "layernorm" and not spec.norm.bias else "")
    block = spec.block.kind
    if block == "parallel":
        block += f", {spec.block.parallel_norms} norm{'s' if spec.block.parallel_norms == 2 else ''}"
    if spec.block.residual_from_norm:
        block += ", residual from norm"
    mlp = f"{spec.mlp.activation} {spec.mlp.d_ff}" + (", bias" if spec.mlp.bias else "")
    embeddings = ("tied" if spec.embeddings.tied else "untied") + (", norm" if spec.embeddings.norm else "")
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
