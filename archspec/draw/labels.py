"""The words and numbers of each box, read from the plan's calls (never from the spec).

Each function takes one `Call` of the plan and returns the lines of its box: a title, then the numbers that
define it (`32 heads · 8 kv heads · head_dim 128`, `d_ff 14336`, `8 experts · top 2`). The tests read these
numbers back from the rendered pictures and compare them with the spec's own fields.
"""

from __future__ import annotations

from archspec.plan import Call, Fn, Value

GATED_NAMES = {"silu": "SwiGLU", "gelu": "GeGLU", "gelu-tanh": "GeGLU (tanh)", "relu": "ReGLU"}
"""Gated MLPs by the activation of their gate, as papers name them."""


ACTIVATION_NAMES = {
    "relu": "ReLU",
    "gelu": "GELU",
    "gelu-tanh": "GELU (tanh)",
    "silu": "SiLU",
    "quick-gelu": "quick GELU",
}


def number(value: float) -> str:
    """Integers as they are; other numbers with 4 significant digits (0.07715, 73.32, 1e+06 -> 1000000)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


def activation_name(fn: Value) -> str:
    assert isinstance(fn, Fn)
    return fn.key


def activation_title(fn: Value) -> str:
    """How papers write an activation: `GELU`, `SiLU`, `ReLU`."""
    name = activation_name(fn)
    return ACTIVATION_NAMES.get(name, name)


def norm(call: Call) -> str:
    """`RMSNorm`, `RMSNorm (1 + w)`, `LayerNorm`, `LayerNorm (no bias)`."""
    match call.component:
        case "RMSNorm" | "nn.RMSNorm":
            return "RMSNorm"
        case "OffsetRMSNorm":
            return "RMSNorm (1 + w)"
        case "nn.LayerNorm":
            return "LayerNorm" + ("" if call.get("bias", True) else " (no bias)")
        case "HeadNorm":
            inner = call.positional(0)
            assert isinstance(inner, Call)
            return f"{norm(inner)}, each head's own weight"
        case _:
            return call.component


def _biases(call: Call, names: tuple[str, ...]) -> list[str]:
    found = []
    for name in names:
        linear = call.get(name)
        if isinstance(linear, Call) and linear.get("bias", True):
            found.append(name)
    return found


def attention(call: Call, *, masking: str, window: str | None, extras: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Ordinary or cross attention: kind (MHA/GQA/MQA), heads, kv heads, head_dim, qk-norm, biases, scale, window."""
    heads, kv_heads, head_dim = call["heads"], call["kv_heads"], call["head_dim"]
    assert isinstance(heads, int) and isinstance(kv_heads, int)
    kind = "MHA" if kv_heads == heads else "MQA" if kv_heads == 1 else "GQA"
    title = "Cross-attention" if call.component == "CrossAttention" else "Self-attention"
    lines = [
        f"{title} · {kind} · {masking}",
        f"{heads} heads · {kv_heads} kv head{'s' if kv_heads != 1 else ''} · head_dim {head_dim}",
    ]
    q_norm = call.get("q_norm")
    if isinstance(q_norm, Call):
        where = {"projection": "over the q/k projections", "rotated": "per head, after RoPE"}
        lines.append(f"qk-norm {where.get(str(call.get('qk_norm_at')), 'per head')}: {norm(q_norm)}")
    biased = _biases(call, ("q", "k", "v", "o"))
    if biased:
        lines.append("bias on " + ", ".join(biased))
    if call.get("scale") is not None:
        scale = call["scale"]
        assert isinstance(scale, int | float)
        lines.append(f"scores × {number(scale)}" + (" (unscaled)" if scale == 1 else ""))
    if call.get("sinks"):
        lines.append("a sink logit per head joins each softmax")
    if window:
        lines.append(window)
    return (*lines, *extras)


def latent_attention(call: Call, *, masking: str, extras: tuple[str, ...] = ()) -> tuple[str, ...]:
    """DeepSeek's multi-head latent attention: heads, the q and kv latent ranks, the head dims."""
    heads, kv_rank, nope, rope, v_dim = (call[key] for key in ("heads", "kv_rank", "nope_dim", "rope_dim", "v_dim"))
    assert isinstance(nope, int) and isinstance(rope, int)
    q_down = call.get("q_down")
    q_rank = f"q latent rank {q_down.positional(1)}" if isinstance(q_down, Call) else "full-rank q"
    lines = [
        f"Multi-head latent attention (MLA) · {masking}",
        f"{heads} heads · kv latent rank {kv_rank} · {q_rank}",
        f"head_dim {nope + rope} = {nope} + {rope} rotary · v_dim {v_dim}",
        "kv cache: the latent and the rotary key",
    ]
    scale = call.get("scale")
    if isinstance(scale, Call) and scale.component == "latent_attention_scale":
        lines.append(f"softmax scale with YaRN mscale (factor {number(scale.positional(1))})")  # type: ignore[arg-type]
    return (*lines, *extras)


def mlp(call: Call, title: str = "MLP") -> tuple[str, ...]:
    """A dense MLP: its kind (SwiGLU, GELU, ...), d_model -> d_ff, biases."""
    up = call["up"]
    assert isinstance(up, Call)
    d_model, d_ff = up.positional(0), up.positional(1)
    act = activation_name(call["activation"])
    gated = call.component == "GatedMLP"
    kind = GATED_NAMES.get(act, f"gated {act}") if gated else activation_title(call["activation"])
    lines = [f"{title} · {kind}", f"{d_model} → d_ff {d_ff} → {d_model}"]
    if up.get("bias", True):
        lines.append("with biases")
    return tuple(lines)


def moe(call: Call, shared_count: int | None, router_loss: Call | None) -> tuple[str, ...]:
    """A mixture of experts: experts, top-k, expert width, router scoring and limits, shared experts, aux loss."""
    router, experts = call["router"], call["experts"]
    assert isinstance(router, Call) and isinstance(experts, Call)
    count, d_ff = experts.positional(0), experts.positional(2)
    act = activation_name(experts["activation"])
    kind = GATED_NAMES.get(act, f"gated {act}") if experts["gated"] else activation_title(experts["activation"])
    glu = experts.get("glu")
    if isinstance(glu, Call):  # gpt-oss's clamped SwiGLU
        kind = f"clamped SwiGLU (limit {number(glu['limit'])}, α {number(glu['alpha'])})"  # type: ignore[arg-type]
    biases = " · with biases" if experts.get("bias") else ""
    lines = [f"MoE · {count} experts · top {router['top_k']}", f"each expert: {kind}, d_ff {d_ff}{biases}"]
    route = [activation_name(router["scoring"])]
    if router.get("bias"):
        route.append("logit bias")
    if router.get("correction_bias") is not None:
        route.append("+ selection bias")
    group_limit = router.get("group_limit")
    if isinstance(group_limit, Call):
        route.append(f"{group_limit.positional(0)} groups → best {group_limit.positional(1)}")
    if router["renormalize"]:
        route.append("top-k renormalised")
    if router["scale"] != 1:
        route.append(f"× {number(router['scale'])}")  # type: ignore[arg-type]
    lines.append("router: " + ", ".join(route))
    shared = call.get("shared")
    if isinstance(shared, Call):
        up = shared["up"]
        assert isinstance(up, Call)
        width = up.positional(1)
        gate = ", sigmoid-gated" if call.get("shared_gate") is not None else ""
        many = f"{shared_count} shared experts" if shared_count and shared_count > 1 else "shared expert"
        lines.append(f"+ {many} (always on): d_ff {width}{gate}")
    if call.get("jitter"):
        lines.append(f"router jitter {number(call['jitter'])}")  # type: ignore[arg-type]
    if router_loss is not None and (router_loss["aux_coef"] or router_loss["z_coef"]):
        balance = router_loss["balance"]
        assert isinstance(balance, Call)
        per = "sequence" if balance.component == "SequenceBalancingLoss" else "batch"
        loss = f"balance loss × {number(router_loss['aux_coef'])} ({per})"  # type: ignore[arg-type]
        if router_loss["z_coef"]:
            loss += f", z-loss × {number(router_loss['z_coef'])}"  # type: ignore[arg-type]
        lines.append(loss)
    return tuple(lines)


def rotary(call: Call) -> str:
    """One RoPE: θ, the rotated dims, the pairing and the scaling (from the frequency function the plan names)."""
    freq = call["inv_freq"]
    assert isinstance(freq, Call)
    if call.component == "BlockRotaryEmbedding":
        dim, theta = freq.positional(0), freq.positional(1)
        return f"2-D RoPE (GLM): position + block position, {dim} dims each, θ {number(theta)}"  # type: ignore[arg-type]
    dim, theta = freq.positional(0), freq.positional(1)
    text = f"RoPE θ {number(theta)}, {dim} dims"  # type: ignore[arg-type]
    pairing = call.get("pairing")
    if isinstance(pairing, Call) and pairing.component == "InterleavedPairs":
        text += ", interleaved pairs"
    match freq.component:
        case "llama3_scaled_frequencies":
            text += f"; Llama 3 scaling × {number(freq.positional(2))} from {freq['original_context']}"  # type: ignore[arg-type]
        case "yarn_scaled_frequencies":
            text += f"; YaRN × {number(freq.positional(2))} from {freq['original_context']}"  # type: ignore[arg-type]
        case "linear_scaled_frequencies":
            text += f"; linear scaling × {number(freq.positional(2))}"  # type: ignore[arg-type]
        case "longrope_frequencies":
            text += f"; LongRoPE past {call['original_context']}"
    dynamic = call.get("dynamic_ntk")
    if isinstance(dynamic, tuple):
        text += f"; dynamic NTK × {number(dynamic[1])} past {dynamic[2]}"  # type: ignore[arg-type]
    return text


def linear_shape(call: Call) -> str:
    return f"{call.positional(0)} → {call.positional(1)}"
