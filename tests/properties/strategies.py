"""Hypothesis strategies: tiny *valid* specs across the whole vocabulary, their parts, and random weights.

`spec_dicts()` draws a plain dict (as a user would write it, shorthands included) that `archspec.spec_from_dict`
accepts; `specs()` validates it. Keyword arguments narrow the draw for properties that hold only for some
variants (e.g. `positions=("rope",)`, `dynamic_rope=False`). Sizes are tiny so a forward pass takes milliseconds;
every size is drawn, so Hypothesis shrinks a failure to the smallest spec that still fails.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from hypothesis import assume, event
from hypothesis import strategies as st

import archspec

POSITIONS = ("rope", "alibi", "learned", "none")
SCALINGS = ("none", "linear", "dynamic", "llama3", "yarn")
STATIC_SCALINGS = ("none", "linear", "llama3", "yarn")  # a fixed frequency table whatever the sequence length
BLOCKS = ("pre-norm", "post-norm", "parallel", "sandwich", "output-norm", "deepnorm")
ACTIVATIONS = ("relu", "gelu", "gelu-tanh", "silu", "swiglu", "geglu", "geglu-tanh", "reglu")
NORMS = ("rmsnorm", "layernorm")
FAMILIES = ("dense", "moe", "mla", "glm", "t5", "vision")
"""dense: causal decoders of the MHA/GQA/MQA vocabulary; moe: the same with a mixture of experts; mla: DeepSeek's
latent attention (with or without experts); glm: prefix LMs (2-D positions or not); t5: encoder-decoders with
relative-position bias; vision: decoders with a ViT or external tower, projector and placeholder splice."""
DECODERS = ("dense", "moe", "mla", "glm")
"""The families whose models are causal decoders over token ids alone (cache, causality and generate properties)."""

# theta below ~2 is a degenerate RoPE (see the README's findings: theta = 1 breaks YaRN, tiny theta overflows)
thetas = st.one_of(st.just(10000.0), st.floats(2.0, 1e6, allow_nan=False, allow_infinity=False))
factors = st.floats(1.0, 16.0, allow_nan=False, allow_infinity=False)
seeds = st.integers(0, 2**32 - 1)


@st.composite
def rope_scaling(draw: st.DrawFn, kinds: tuple[str, ...] = SCALINGS) -> dict[str, Any] | str | None:
    kind = draw(st.sampled_from(kinds))
    if kind == "none":
        return None
    if kind == "linear":
        return {"kind": "linear", "factor": draw(factors)}
    if kind == "dynamic":
        return {"kind": "dynamic", "factor": draw(factors)}
    if kind == "llama3":
        low = draw(st.floats(0.5, 4.0))
        return {
            "kind": "llama3",
            "factor": draw(factors),
            "low_freq_factor": low,
            "high_freq_factor": low + draw(st.floats(0.25, 8.0)),
            "original_context": draw(st.integers(1, 8192)),
        }
    yarn: dict[str, Any] = {
        "kind": "yarn",
        "factor": draw(factors),
        "original_context": draw(st.integers(1, 8192)),
        "truncate": draw(st.booleans()),
    }
    if draw(st.booleans()):
        yarn["beta_fast"] = draw(st.floats(1.0, 64.0))
        yarn["beta_slow"] = draw(st.floats(0.25, 4.0))
    temperature = draw(st.sampled_from(["default", "explicit", "deepseek"]))
    if temperature == "explicit":
        yarn["attention_factor"] = draw(st.floats(0.5, 2.0))
    elif temperature == "deepseek":
        yarn["mscale"] = draw(st.floats(0.5, 1.5))
        yarn["mscale_all_dim"] = draw(st.floats(0.5, 1.5))
    return yarn


@st.composite
def rope_position(draw: st.DrawFn, head_dim: int, scalings: tuple[str, ...] = SCALINGS) -> dict[str, Any]:
    """RoPE with a rotary width that is even and > 0: `fraction` is drawn as rotary_dim / head_dim."""
    rotary = draw(st.integers(1, head_dim // 2)) * 2
    fraction = rotary / head_dim
    assume(int(head_dim * fraction) == rotary)  # float rounding of the fraction must give back the same width
    position: dict[str, Any] = {
        "kind": "rope",
        "theta": draw(thetas),
        "pairing": draw(st.sampled_from(["half", "interleaved"])),
    }
    if fraction != 1.0 or draw(st.booleans()):
        position["fraction"] = fraction
    scaling = draw(rope_scaling(scalings if rotary > 2 else tuple(k for k in scalings if k != "dynamic")))
    if scaling is not None:  # dynamic NTK needs more than 2 rotary dims (a spec rule)
        position["scaling"] = scaling
    return position


@st.composite
def spec_dicts(
    draw: st.DrawFn,
    *,
    families: tuple[str, ...] = ("dense",),
    positions: tuple[str, ...] = POSITIONS,
    scalings: tuple[str, ...] = SCALINGS,
    blocks: tuple[str, ...] = BLOCKS,
    max_layers: int = 3,
    min_context: int = 1,
    window: bool | None = None,
    windowed_layers: str = "any",
) -> dict[str, Any]:
    """A valid spec as plain data, of one of `families` (see FAMILIES).

    The other options narrow the decoder families (the T5 family has its own positions, block and no window; MLA
    always uses RoPE and no window). window: None draws with or without a sliding window, True always, False
    never. windowed_layers: "any" may restrict the window to some layers, "all" windows every layer. Every family
    but "dense" keeps to 2 layers.
    """
    family = draw(st.sampled_from(families))
    if family == "t5":
        return draw(t5_spec_dicts(min_context=min_context))
    if family == "mla":
        return draw(mla_spec_dicts(scalings=scalings, blocks=blocks, min_context=min_context))
    layers = max_layers if family == "dense" else min(max_layers, 2)
    two_d = family == "glm" and "rope" in positions and draw(st.booleans())
    spec = draw(
        decoder_dicts(
            positions=("rope",) if two_d else positions,
            scalings=scalings,
            blocks=blocks,
            max_layers=layers,
            min_context=min_context,
            window=window,
            windowed_layers=windowed_layers,
            modern=family != "glm",
        )
    )
    if family == "moe":
        spec["moe"] = draw(moe_sections(spec["n_layers"]))
        every_layer = "layers" not in spec["moe"] and not spec["moe"].get("dense_layers")
        if every_layer and not spec["moe"].get("shared_experts") and draw(st.integers(0, 3)) == 0:
            # gpt-oss's clamped SwiGLU experts (every layer routed, no shared experts)
            limit, alpha = draw(st.floats(0.1, 8.0)), draw(st.floats(0.5, 2.0))
            spec["mlp"] |= {"activation": "clamped-swiglu", "limit": limit, "alpha": alpha}
    elif family == "glm":
        spec["structure"] = "glm"
        if two_d:  # ChatGLM-6B: 2-D positions rotate whole heads of a width divisible by 4, half pairing, no scaling
            spec["position"] = {"kind": "rope", "theta": draw(thetas), "block_positions": True}
            spec["attention"]["head_dim"] = 4 * draw(st.integers(1, 2))
    elif family == "vision":
        vision = draw(vision_sections(spec["vocab_size"]))
        spec["vision"] = vision
        spec["context_length"] += image_tokens(vision)  # the image's tokens come on top of the text
    return spec


@st.composite
def decoder_dicts(
    draw: st.DrawFn,
    *,
    positions: tuple[str, ...] = POSITIONS,
    scalings: tuple[str, ...] = SCALINGS,
    blocks: tuple[str, ...] = BLOCKS,
    max_layers: int = 3,
    min_context: int = 1,
    window: bool | None = None,
    windowed_layers: str = "any",
    modern: bool = True,
) -> dict[str, Any]:
    """A dense causal decoder (MHA/GQA/MQA attention, a plain or gated MLP): the "dense" family. `modern`: also
    the options of structure: decoder only (layer kinds, soft-caps, embedding and logit scales, output norms)."""
    heads = draw(st.integers(1, 4))
    kv_heads = draw(st.sampled_from([k for k in range(1, heads + 1) if heads % k == 0]))
    position_kind = draw(st.sampled_from(positions))
    rope = position_kind == "rope"
    explicit_head_dim = draw(st.booleans())
    if explicit_head_dim:
        head_dim = draw(st.integers(2 if rope else 1, 8))
        d_model = draw(st.integers(2, 16))
    else:
        head_dim = draw(st.integers(1, 4)) * 2 if rope else draw(st.integers(1, 6))
        d_model = heads * head_dim
    n_layers = draw(st.integers(1, max_layers))
    norm_kind = draw(st.sampled_from(NORMS))

    attention: dict[str, Any] = {"heads": heads}
    if kv_heads != heads or draw(st.booleans()):
        attention["kv_heads"] = kv_heads
    if explicit_head_dim:
        attention["head_dim"] = head_dim
    bias = draw(st.one_of(st.booleans(), st.fixed_dictionaries({}, optional={k: st.booleans() for k in "qkvo"})))
    if bias is not False:
        attention["bias"] = bias
    if draw(st.booleans()):
        attention["qk_norm"] = draw(qk_norm_sections())
    use_window = draw(st.booleans()) if window is None else window
    if use_window:
        attention["window"] = draw(st.integers(1, 8))
        if windowed_layers == "any" and draw(st.booleans()):
            attention["window_layers"] = draw(st.lists(st.integers(0, n_layers - 1), max_size=n_layers, unique=True))
    if draw(st.booleans()):
        attention["scale"] = draw(st.floats(0.05, 2.0))
    if n_layers > 1 and draw(st.booleans()):
        attention["inverse_layer_scale"] = True
    if modern and position_kind != "alibi" and draw(st.integers(0, 3)) == 0:
        attention["softcap"] = draw(st.floats(0.3, 5.0))
    if modern and position_kind != "alibi" and draw(st.integers(0, 3)) == 0:
        attention["sinks"] = True

    if rope:
        position: dict[str, Any] | str = draw(rope_position(head_dim, scalings))
    elif position_kind == "alibi":
        position = draw(alibi_position())
    else:
        position = draw(st.sampled_from([position_kind, {"kind": position_kind}]))  # shorthand or full

    spec: dict[str, Any] = {
        "name": draw(names),
        "vocab_size": draw(st.integers(2, 40)),
        "d_model": d_model,
        "n_layers": n_layers,
        "context_length": draw(st.integers(max(min_context, 1), max(min_context, 1) + 64)),
        "attention": attention,
        "position": position,
        "norm": draw(norm_sections(norm_kind)),
        "block": draw(block_sections(blocks if modern else tuple(b for b in blocks if b != "output-norm"))),
        "mlp": draw(mlp_sections()),
        "embeddings": {"tied": draw(st.booleans()), "norm": draw(st.booleans())},
    }
    if norm_kind == "rmsnorm" and draw(st.booleans()):
        spec["norm"] = {**({"kind": "rmsnorm"} if spec["norm"] == "rmsnorm" else spec["norm"]), "offset": True}
    if modern:
        spec["embeddings"] |= draw(scalar_sections())
    # layer kinds only where no property narrowed positions or windows (a kind may drop RoPE or add a window)
    if (
        modern
        and positions == POSITIONS
        and window is None
        and not use_window
        and position_kind in ("rope", "none")
        and draw(st.booleans())
    ):
        spec["layers"] = draw(layer_sections(n_layers, head_dim, scalings))
    spec.update(draw(descriptions_and_tokens(spec["vocab_size"])))
    return spec


def qk_norm_sections() -> st.SearchStrategy[Any]:
    """Qwen3's shorthand, or any placement: per head (shared or own weights) or over the projection, before or
    after RoPE."""
    head = st.one_of(
        st.fixed_dictionaries({"over": st.just("head")}, optional={"after_rope": st.booleans()}),
        st.fixed_dictionaries({"per_head_weights": st.just(True)}, optional={"after_rope": st.just(False)}),
    )
    projection = st.fixed_dictionaries({"over": st.just("projection")}, optional={"after_rope": st.just(False)})
    return st.one_of(st.just(True), head, projection)


def scalar_sections() -> st.SearchStrategy[dict[str, Any]]:
    """The embedding scale (a number, or Gemma's rounded sqrt(d_model)), a logit multiplier, a logit soft-cap."""
    return st.fixed_dictionaries(
        {},
        optional={
            "scale": st.one_of(st.just("sqrt-d-model"), st.floats(0.1, 10.0)),
            "logit_scale": st.floats(0.05, 4.0),
            "logit_softcap": st.floats(0.5, 30.0),
        },
    )


@st.composite
def layer_sections(draw: st.DrawFn, n_layers: int, head_dim: int, scalings: tuple[str, ...]) -> dict[str, Any]:
    """Layers that differ: two or three kinds (a window or not, the spec's positions, their own RoPE, or none), a
    pattern of them, sometimes exceptions."""
    names = draw(st.lists(st.sampled_from(["local", "global", "nope"]), min_size=1, max_size=3, unique=True))
    kinds: dict[str, Any] = {}
    for name in names:
        kind: dict[str, Any] = {}
        if draw(st.booleans()):
            kind["window"] = draw(st.integers(1, 8))
        own = draw(st.sampled_from(["spec", "none", "rope"]))
        if own == "none":
            kind["position"] = "none"
        elif own == "rope" and head_dim % 2 == 0:
            kind["position"] = draw(rope_position(head_dim, tuple(s for s in scalings if s != "dynamic")))
        kinds[name] = kind
    section: dict[str, Any] = {
        "kinds": kinds,
        "pattern": draw(st.lists(st.sampled_from(names), min_size=1, max_size=4)),
    }
    if draw(st.booleans()):
        layer = draw(st.integers(0, n_layers - 1))
        section["exceptions"] = {draw(st.sampled_from(names)): [layer]}
    return section


def alibi_position() -> st.SearchStrategy[dict[str, Any] | str]:
    """BLOOM's ALiBi (shorthand or full) or Falcon-RW's: scaled with q.k and/or rounded to bfloat16."""
    full = st.fixed_dictionaries(
        {"kind": st.just("alibi")},
        optional={"scaled": st.booleans(), "precision": st.sampled_from(["float32", "bfloat16"])},
    )
    return st.one_of(st.just("alibi"), full)


names = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,12}\Z")


@st.composite
def norm_sections(draw: st.DrawFn, kind: str) -> dict[str, Any] | str:
    norm: dict[str, Any] = {"kind": kind, "eps": draw(st.sampled_from([1e-5, 1e-6, 1e-12, 0.1]))}
    if kind == "layernorm":
        norm["bias"] = draw(st.booleans())
    if draw(st.booleans()) and (kind == "rmsnorm" or norm["bias"]):
        return kind  # shorthand: default eps (and bias for layernorm)
    return norm


@st.composite
def block_sections(draw: st.DrawFn, kinds: tuple[str, ...] = BLOCKS) -> dict[str, Any] | str:
    kind = draw(st.sampled_from(kinds))
    block: dict[str, Any] = {"kind": kind}
    if kind == "parallel":
        block["parallel_norms"] = draw(st.sampled_from([1, 2]))
    if kind == "pre-norm":
        block["residual_from_norm"] = draw(st.booleans())
        if draw(st.booleans()):
            block["residual_scale"] = draw(st.floats(0.1, 2.0))
    if kind == "deepnorm":  # DeepNet's constants by default, or any positive values
        block.update(
            draw(st.fixed_dictionaries({}, optional={"alpha": st.floats(0.5, 4.0), "beta": st.floats(0.1, 2.0)}))
        )
    if block == {"kind": kind} and draw(st.booleans()):
        return kind
    return block


def mlp_sections(activations: tuple[str, ...] = ACTIVATIONS) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"activation": st.sampled_from(activations), "d_ff": st.integers(1, 16), "bias": st.booleans()}
    )


@st.composite
def descriptions_and_tokens(draw: st.DrawFn, vocab_size: int) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if draw(st.booleans()):
        extra["description"] = draw(st.text(max_size=20))
    if draw(st.booleans()):
        ids = st.integers(0, min(1, vocab_size - 1))
        extra["tokens"] = draw(st.fixed_dictionaries({}, optional={k: ids for k in ("bos", "eos", "pad")}))
    return extra


# ------------------------------------------------------------------------------ beyond the dense vocabulary
@st.composite
def moe_sections(draw: st.DrawFn, n_layers: int) -> dict[str, Any]:
    """A mixture of experts (Mixtral, Qwen-MoE, DeepSeek): any expert count, top-k and grouping the rules allow,
    softmax or sigmoid scores, renormalisation on or off, shared (gated) experts, dense first layers or an explicit
    layer list, and the router's losses and jitter."""
    experts = draw(st.integers(1, 6))
    groups = draw(st.sampled_from([g for g in range(1, experts + 1) if experts % g == 0]))
    per_group = experts // groups
    top_groups = draw(st.integers(1, groups))
    router: dict[str, Any] = {
        "scoring": draw(st.sampled_from(["softmax", "sigmoid"])),
        "renormalize": draw(st.booleans()),
        "groups": groups,
        "top_groups": top_groups,
        "group_score": draw(st.sampled_from(["max", "top2-sum"] if per_group >= 2 or groups == 1 else ["max"])),
        "correction_bias": draw(st.booleans()),
        "aux_loss": draw(st.sampled_from(["token", "sequence"])),
    }
    if router["aux_loss"] == "token":
        router["aux_loss_counts"] = draw(st.sampled_from(["selected", "softmax-top-k"]))
    router["bias"] = draw(st.booleans())
    optional = {
        "scale": st.floats(0.25, 4.0),
        "jitter": st.floats(0.0, 0.5),
        "aux_loss_coef": st.floats(0.0, 1.0),
        "z_loss_coef": st.floats(0.0, 1.0),
    }
    router.update(draw(st.fixed_dictionaries({}, optional=optional)))
    moe: dict[str, Any] = {"experts": experts, "top_k": draw(st.integers(1, top_groups * per_group)), "router": router}
    moe["bias"] = draw(st.booleans())
    if draw(st.booleans()):
        moe["d_ff"] = draw(st.integers(1, 16))
    shared = draw(st.integers(0, 2))
    if shared:
        moe["shared_experts"] = shared
        moe["shared_gate"] = draw(st.booleans())
        if draw(st.booleans()):
            moe["shared_d_ff"] = draw(st.integers(1, 12))
    placement = draw(st.sampled_from(["all", "dense_layers", "layers"]))
    if placement == "dense_layers":
        moe["dense_layers"] = draw(st.integers(0, n_layers))
    elif placement == "layers":
        moe["layers"] = draw(st.lists(st.integers(0, n_layers - 1), unique=True, max_size=n_layers))
    return moe


@st.composite
def mla_spec_dicts(
    draw: st.DrawFn,
    *,
    scalings: tuple[str, ...] = SCALINGS,
    blocks: tuple[str, ...] = BLOCKS,
    min_context: int = 1,
    moe: bool | None = None,
) -> dict[str, Any]:
    """Multi-head latent attention (DeepSeek-V2/V3): q-LoRA on or off, any rope/nope/value widths, RoPE with any
    scaling (YaRN with DeepSeek's mscale included), optionally with a mixture of experts."""
    rope_dim = 2 * draw(st.integers(1, 3))
    attention: dict[str, Any] = {
        "kind": "mla",
        "heads": draw(st.integers(1, 4)),
        "kv_rank": draw(st.integers(1, 12)),
        "nope_dim": draw(st.integers(1, 6)),
        "rope_dim": rope_dim,
        "v_dim": draw(st.integers(1, 6)),
    }
    if draw(st.booleans()):
        attention["q_rank"] = draw(st.integers(1, 12))
    optional = {
        "bias": st.booleans(),
        "latent_norm_eps": st.sampled_from([1e-6, 1e-5, 0.1]),
        "scale": st.floats(0.05, 2.0),
    }
    attention.update(draw(st.fixed_dictionaries({}, optional=optional)))
    position: dict[str, Any] = {
        "kind": "rope",
        "theta": draw(thetas),
        "pairing": draw(st.sampled_from(["half", "interleaved"])),
    }
    scaling = draw(rope_scaling(scalings if rope_dim > 2 else tuple(k for k in scalings if k != "dynamic")))
    if scaling is not None:
        position["scaling"] = scaling
    n_layers = draw(st.integers(1, 2))
    spec: dict[str, Any] = {
        "name": draw(names),
        "vocab_size": draw(st.integers(2, 40)),
        "d_model": draw(st.integers(2, 32)),
        "n_layers": n_layers,
        "context_length": draw(st.integers(max(min_context, 1), max(min_context, 1) + 64)),
        "attention": attention,
        "position": position,
        "norm": draw(norm_sections(draw(st.sampled_from(NORMS)))),
        "block": draw(block_sections(blocks)),
        "mlp": draw(mlp_sections()),
        "embeddings": {"tied": draw(st.booleans()), "norm": draw(st.booleans())},
    }
    if draw(st.booleans()) if moe is None else moe:
        spec["moe"] = draw(moe_sections(n_layers))
    spec.update(draw(descriptions_and_tokens(spec["vocab_size"])))
    return spec


@st.composite
def t5_spec_dicts(draw: st.DrawFn, *, min_context: int = 1) -> dict[str, Any]:
    """A T5-style encoder-decoder: bucketed relative-position bias per stack, pre-norm blocks, cross-attention,
    any MLP, tied (optionally d_model^-0.5-scaled) or untied head, its own decoder depth and start token."""
    heads = draw(st.integers(1, 4))
    kv_heads = draw(st.sampled_from([k for k in range(1, heads + 1) if heads % k == 0]))
    attention: dict[str, Any] = {"heads": heads, "kv_heads": kv_heads}
    if draw(st.booleans()):
        attention["head_dim"] = draw(st.integers(1, 8))
        d_model = draw(st.integers(2, 16))
    else:
        d_model = heads * draw(st.integers(1, 6))
    norm_kind = draw(st.sampled_from(NORMS))
    bias = draw(st.one_of(st.booleans(), st.fixed_dictionaries({}, optional={k: st.booleans() for k in "qkvo"})))
    if bias is not False:
        attention["bias"] = bias
    if norm_kind == "rmsnorm" and draw(st.booleans()):
        attention["qk_norm"] = True
    if draw(st.booleans()):
        attention["scale"] = draw(st.sampled_from([1.0, 0.5]))  # T5 does not scale q.k
    vocab = draw(st.integers(2, 40))
    n_layers = draw(st.integers(1, 2))
    buckets = draw(st.integers(4, 8))  # the encoder needs >= 4 (a spec rule); short sequences reach the log buckets
    spec: dict[str, Any] = {
        "name": draw(names),
        "structure": "encoder-decoder",
        "vocab_size": vocab,
        "d_model": d_model,
        "n_layers": n_layers,
        "context_length": draw(st.integers(max(min_context, 1), max(min_context, 1) + 64)),
        "attention": attention,
        "position": {
            "kind": "relative-bias",
            "buckets": buckets,
            "max_distance": draw(st.integers(buckets // 2 + 1, 16)),
        },
        "norm": draw(norm_sections(norm_kind)),
        "block": "pre-norm",
        "mlp": draw(mlp_sections()),
        "embeddings": {"tied": draw(st.booleans()), "scale_head": draw(st.booleans())},
    }
    if draw(st.booleans()):
        spec["n_decoder_layers"] = draw(st.integers(1, 2))
    extra = draw(descriptions_and_tokens(vocab))
    extra.setdefault("tokens", {})["decoder_start"] = draw(st.integers(0, vocab - 1))
    spec.update(extra)
    return spec


VISION_ACTIVATIONS = ("relu", "gelu", "gelu-tanh", "quick-gelu", "silu")


@st.composite
def vision_sections(draw: st.DrawFn, vocab_size: int) -> dict[str, Any]:
    """Images as tokens (LLaVA): a tiny ViT tower (any options) or an external one, a linear or MLP projector,
    optional average pooling to a square grid that divides the patch grid, the placeholder token id."""
    if draw(st.booleans()):
        patch, grid = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        depth, heads = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        tower: dict[str, Any] = {
            "kind": "vit",
            "image_size": patch * grid,
            "patch_size": patch,
            "width": heads * draw(st.integers(1, 4)),
            "depth": depth,
            "heads": heads,
            "d_ff": draw(st.integers(1, 12)),
        }
        optional = {
            "channels": st.integers(1, 3),
            "activation": st.sampled_from(VISION_ACTIVATIONS),
            "norm_eps": st.sampled_from([1e-5, 1e-6]),
            **{flag: st.booleans() for flag in ("bias", "patch_bias", "class_token", "pre_norm", "post_norm")},
        }
        tower.update(draw(st.fixed_dictionaries({}, optional=optional)))
        layer = st.integers(-(depth + 1), depth)
        vision: dict[str, Any] = {"tower": tower}
        feature_layer = draw(st.one_of(st.none(), layer, st.lists(layer, min_size=1, max_size=2)))
        if feature_layer is not None:
            vision["feature_layer"] = feature_layer
        select = draw(st.sampled_from([None, "patches", "all"]))
        if select is not None:
            vision["feature_select"] = select
        square = not (tower.get("class_token", True) and select == "all")
        side = grid if square else None
    else:
        patches = draw(st.integers(1, 9))
        vision = {"tower": {"kind": "external", "width": draw(st.integers(1, 8)), "patches": patches}}
        root = round(patches**0.5)
        side = root if root * root == patches else None
    kind = draw(st.sampled_from(["linear", "mlp"]))
    projector: dict[str, Any] = {"kind": kind}
    if kind == "mlp" and draw(st.booleans()):
        projector["depth"] = draw(st.integers(2, 3))
    projector.update(
        draw(
            st.fixed_dictionaries(
                {}, optional={"activation": st.sampled_from(VISION_ACTIVATIONS), "bias": st.booleans()}
            )
        )
    )
    vision["projector"] = projector if len(projector) > 1 or draw(st.booleans()) else kind
    if side is not None and draw(st.booleans()):
        pooled = draw(st.sampled_from([s for s in range(1, side + 1) if side % s == 0]))
        vision["pooling"] = {"tokens": pooled * pooled}
    vision["image_token"] = draw(st.integers(0, vocab_size - 1))
    if draw(st.booleans()):
        vision["tokens_per_image"] = image_tokens(vision)
    return vision


def image_tokens(vision: dict[str, Any]) -> int:
    """Tokens one image takes in the text sequence, computed from the plain data of a vision section."""
    if "pooling" in vision:
        return vision["pooling"]["tokens"]
    tower = vision["tower"]
    if tower["kind"] == "external":
        return tower["patches"]
    class_token = tower.get("class_token", True) and vision.get("feature_select") == "all"
    return (tower["image_size"] // tower["patch_size"]) ** 2 + class_token


def family(spec: archspec.Spec) -> str:
    """The family a spec belongs to (see FAMILIES)."""
    if spec.structure == "encoder-decoder":
        return "t5"
    if spec.structure == "glm":
        return "glm"
    if spec.vision is not None:
        return "vision"
    if spec.attention.kind == "mla":
        return "mla"
    return "moe" if spec.moe is not None else "dense"


def _validated(data: dict[str, Any]) -> archspec.Spec:
    spec = archspec.spec_from_dict(data)
    event(f"family: {family(spec)}")  # --hypothesis-show-statistics counts the examples of each family
    return spec


def specs(**options: Any) -> st.SearchStrategy[archspec.Spec]:
    """Validated specs; see `spec_dicts` for the options."""
    return spec_dicts(**options).map(_validated)


# ---------------------------------------------------------------------------------------- model inputs
@st.composite
def model_inputs(
    draw: st.DrawFn, spec: archspec.Spec, batch: int, seq: int, seed: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, dict[str, Any]]:
    """input_ids [batch, seq (+ image tokens)] and the keyword arguments of one forward call that takes the spec's
    whole path: decoder_input_ids (T5), prefix_lengths (GLM), pixel_values or image_features with one image per
    row at a drawn offset (vision; text tokens then avoid the placeholder id). Tensor contents come from `seed`."""
    generator = torch.Generator().manual_seed(seed)
    vision = spec.vision
    if vision is None:
        ids = torch.randint(0, spec.vocab_size, (batch, seq), generator=generator)
    else:  # text ids skip the placeholder: draw from vocab - 1 ids and shift those at or above it
        ids = torch.randint(0, spec.vocab_size - 1, (batch, seq), generator=generator)
        ids = ids + (ids >= vision.image_token).long()
    kwargs: dict[str, Any] = {}
    if spec.structure == "encoder-decoder":
        target = draw(st.integers(1, seq), label="decoder length")
        kwargs["decoder_input_ids"] = torch.randint(0, spec.vocab_size, (batch, target), generator=generator)
    if spec.structure == "glm":
        prefixes = draw(st.lists(st.integers(0, seq), min_size=batch, max_size=batch), label="prefix lengths")
        kwargs["prefix_lengths"] = torch.tensor(prefixes)
    if vision is not None:
        assert vision.tokens_per_image is not None
        offset = draw(st.integers(0, seq), label="image offset")
        run = torch.full((batch, vision.tokens_per_image), vision.image_token)
        ids = torch.cat((ids[:, :offset], run, ids[:, offset:]), dim=1)
        tower = vision.tower
        if tower.kind == "vit":
            shape: tuple[int, ...] = (batch, tower.channels, tower.image_size, tower.image_size)
            kwargs["pixel_values"] = torch.randn(shape, generator=generator, dtype=dtype)
        else:
            kwargs["image_features"] = torch.randn(batch, tower.patches, tower.width, generator=generator, dtype=dtype)
    return ids, kwargs


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Overwrite every parameter with O(1)-scale noise, so no default init (zeros, ones, std 0.02) hides a mistake.

    Matrices get std 1/sqrt(fan_in) (activations stay O(1) through the layers; stacked expert matrices
    [experts, out, in] and patch convolutions [out, in, k, k] likewise), embeddings std 1, norm weights
    1 + N(0, 0.1^2), biases N(0, 0.1^2). DeepSeek-V3's selection bias is a learned buffer: it gets N(0, 0.1^2) too,
    so that it changes which experts are picked.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
            if param.ndim >= 3:
                fan_in = param.shape[-1] if param.ndim == 3 else math.prod(param.shape[1:])
                param.copy_(noise / math.sqrt(fan_in))
            elif param.ndim == 2 and "embed" not in name:
                param.copy_(noise / math.sqrt(param.shape[1]))
            elif param.ndim == 2:
                param.copy_(noise)
            elif name.endswith("weight"):
                param.copy_(1 + 0.1 * noise)
            else:
                param.copy_(0.1 * noise)
        for name, buffer in model.named_buffers():
            if name.endswith("correction_bias"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator, dtype=torch.float64))
    return model


def build64(spec: archspec.Spec, seed: int) -> torch.nn.Module:
    """The spec's model in float64 with random O(1) weights, in eval mode."""
    return randomize_(archspec.build(spec, dtype=torch.float64), seed).eval()


def lm_logits(
    model: torch.nn.Module, ids: torch.Tensor, source: torch.Tensor | None = None, **options: Any
) -> torch.Tensor:
    """Logits over `ids` of a causal LM: a decoder-only model's, or an encoder-decoder's decoder reading the encoding
    of `source`. `options` (cache, prefix_lengths) go to the forward call."""
    if source is not None:
        return model(source, decoder_input_ids=ids, **options).logits
    return model(ids, **options).logits


def token_ids(vocab_size: int, batch: int, seq: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq), generator=generator)


def scaled(default: int) -> int:
    """Examples for a property that is slow per example: `default` under ci/dev, 10x under thorough."""
    return default * 10 if os.environ.get("ARCHSPEC_HYPOTHESIS_PROFILE") == "thorough" else default
