"""Cross-field rules of a spec, each reported at the key path a user has to change.

The rules read sections by their `kind` (not by class), so this module needs nothing from `schema.py`, which
calls it from its validator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from archspec.spec.errors import SpecIssue

if TYPE_CHECKING:
    from archspec.spec.schema import Spec

MAX_PARAMETERS = 10**15
"""The most parameters a spec may have: 500x the largest published models (about 2e12), and more than the memory
of any machine holds even at one byte per parameter. The sizes of single fields have their own bounds in
`schema.py` (MAX_WIDTH, MAX_LAYERS, ...)."""


def consistency_issues(spec: Spec) -> list[SpecIssue]:
    """Every rule the types alone cannot express. Runs on a spec whose fields are individually valid."""
    issues: list[SpecIssue] = []

    def problem(path: str, message: str, hint: str = "") -> None:
        issues.append(SpecIssue(tuple(path.split(".")), message, hint))

    attn = spec.attention
    if attn.kind == "mla":
        issues.extend(_latent_attention_issues(spec))
    else:
        if attn.head_dim is None:
            problem(
                "attention.heads",
                f"d_model ({spec.d_model}) is not divisible by heads ({attn.heads})",
                "set attention.head_dim explicitly or change heads",
            )
        if attn.kv_heads is not None and attn.heads % attn.kv_heads:
            problem(
                "attention.kv_heads",
                f"heads ({attn.heads}) must be divisible by kv_heads ({attn.kv_heads})",
                "each key/value head serves a whole group of query heads",
            )
        if attn.window_layers is not None:
            if attn.window is None:
                problem("attention.window_layers", "window_layers is set but attention.window is not", "set window")
            bad = [layer for layer in attn.window_layers if layer >= spec.n_layers]
            if bad:
                problem("attention.window_layers", f"layers {bad} do not exist (n_layers = {spec.n_layers})")

    _token_issues(spec, problem)
    if spec.norm.kind == "rmsnorm" and spec.norm.bias:
        problem("norm.bias", "rmsnorm has no bias", "use kind: layernorm, or drop bias")

    block = spec.block
    if block.residual_from_norm and block.kind != "pre-norm":
        problem("block.residual_from_norm", f"only meaningful for pre-norm blocks, not {block.kind}")
    if block.parallel_norms == 2 and block.kind != "parallel":
        problem("block.parallel_norms", f"only meaningful for parallel blocks, not {block.kind}")

    if spec.position.kind == "rope" and attn.kind == "mha" and attn.head_dim is not None:
        _rope_issues(spec.position, attn.head_dim, "position", problem)
    _modern_issues(spec, problem)
    _structure_issues(spec, problem)
    if spec.vision is not None:
        _vision_issues(spec, problem)
    if spec.moe is not None:
        issues.extend(_moe_issues(spec))
    if not issues:  # sizes are only meaningful once the shape of the model is consistent
        issues.extend(_size_issues(spec))
    return issues


def _rope_issues(position: Any, head_dim: int, path: str, problem: Callable[..., None]) -> None:
    """A RoPE section's own rules (the spec's position, or a layer kind's), reported under `path`."""
    rotary = int(head_dim * position.fraction)
    if rotary == 0 or rotary % 2:
        problem(
            f"{path}.fraction",
            f"head_dim {head_dim} x fraction {position.fraction} gives {rotary} rotary dims; need an even number > 0",
            "rotary dims rotate in pairs",
        )
    scaling = position.scaling
    if getattr(scaling, "kind", None) == "dynamic" and rotary <= 2:
        problem(
            f"{path}.scaling",
            f"dynamic NTK needs more than 2 rotary dims (has {rotary})",
            "its theta formula has the exponent d / (d - 2)",
        )
    if getattr(scaling, "kind", None) == "llama3" and scaling.high_freq_factor <= scaling.low_freq_factor:
        problem(
            f"{path}.scaling.high_freq_factor",
            f"must exceed low_freq_factor ({scaling.low_freq_factor})",
            "the two bound the band that is smoothly interpolated",
        )
    if getattr(scaling, "kind", None) == "longrope":
        _longrope_issues(scaling, rotary, f"{path}.scaling", problem)


def _longrope_issues(scaling: Any, rotary: int, path: str, problem: Callable[..., None]) -> None:
    """LongRoPE divides each of the rotary_dim / 2 frequencies by its own factor: one factor per frequency."""
    for name in ("short_factor", "long_factor"):
        factors = getattr(scaling, name)
        if rotary > 0 and len(factors) != rotary // 2:
            problem(
                f"{path}.{name}",
                f"has {len(factors)} factors; {rotary} rotary dims have {rotary // 2} frequencies",
                "one factor per frequency: rotary_dim / 2 = int(head_dim x fraction) / 2",
            )


def _modern_issues(spec: Spec, problem: Callable[..., None]) -> None:
    """Rules of the options of today's dense families: layer kinds, qk-norm forms, scalars and soft-caps."""
    attn, norm, decoder = spec.attention, spec.norm, spec.structure == "decoder"
    if norm.offset and norm.kind != "rmsnorm":
        problem("norm.offset", "the (1 + w) weight is Gemma's RMSNorm", "use kind: rmsnorm, or drop offset")
    qk_norm = getattr(attn, "qk_norm", None)
    if qk_norm is not None and qk_norm.per_head_weights and (qk_norm.over != "head" or qk_norm.after_rope):
        problem("attention.qk_norm.per_head_weights", "per-head weights are implemented for over: head, before RoPE")
    if getattr(attn, "softcap", None) is not None and spec.position.kind == "alibi":
        problem("attention.softcap", "soft-capped scores with ALiBi are not implemented", "drop one of the two")
    if getattr(attn, "sinks", False) and spec.position.kind == "alibi":
        problem("attention.sinks", "attention sinks with ALiBi are not implemented", "drop one of the two")
    mlp, clamped = spec.mlp, spec.mlp.activation == "clamped-swiglu"
    for name in ("limit", "alpha"):
        if clamped and getattr(mlp, name) is None:
            problem(f"mlp.{name}", "clamped-swiglu needs it", "gpt-oss: limit 7.0, alpha 1.702")
        if not clamped and getattr(mlp, name) is not None:
            problem(f"mlp.{name}", "only clamped-swiglu has it", "drop it")
    moe = spec.moe
    if clamped and (moe is None or moe.shared_experts or not all(spec.is_moe_layer(i) for i in range(spec.n_layers))):
        problem("mlp.activation", "clamped-swiglu is implemented for routed experts in every layer (gpt-oss)")
    if spec.block.residual_scale != 1.0 and spec.block.kind != "pre-norm":
        problem("block.residual_scale", f"implemented for pre-norm blocks, not {spec.block.kind}")
    options = {
        "layers": spec.layers is not None,
        "attention.softcap": getattr(attn, "softcap", None) is not None,
        "attention.sinks": getattr(attn, "sinks", False),
        "embeddings.scale": spec.embeddings.scale is not None,
        "embeddings.logit_scale": spec.embeddings.logit_scale != 1.0,
        "embeddings.logit_softcap": spec.embeddings.logit_softcap is not None,
        "block.kind": spec.block.kind == "output-norm",
    }
    for path, used in options.items():
        if used and not decoder:
            problem(path, f"implemented for structure: decoder, not {spec.structure}")
    layers = spec.layers
    if layers is None:
        return
    if getattr(attn, "window", None) is not None:
        problem("attention.window", "with a layers section, windows are said per kind", "layers.kinds.<kind>.window")
    for index, kind in enumerate(layers.pattern):
        if kind not in layers.kinds:
            problem(f"layers.pattern.{index}", f"unknown kind {kind!r} (kinds: {', '.join(layers.kinds)})")
    for kind, listed in layers.exceptions.items():
        if kind not in layers.kinds:
            problem(f"layers.exceptions.{kind}", f"unknown kind {kind!r} (kinds: {', '.join(layers.kinds)})")
        bad = [layer for layer in listed if layer >= spec.n_layers]
        if bad:
            problem(f"layers.exceptions.{kind}", f"layers {bad} do not exist (n_layers = {spec.n_layers})")
    for name, kind in layers.kinds.items():
        own = kind.position
        if own is None:
            continue
        if spec.position.kind not in ("rope", "none") or attn.kind != "mha":
            problem(
                f"layers.kinds.{name}.position",
                f"per-kind positions combine rope and none, with mha attention (the spec has {spec.position.kind})",
            )
        elif own.kind == "rope":
            if own.block_positions:
                problem(f"layers.kinds.{name}.position.block_positions", "2-D positions belong to structure: glm")
            elif attn.head_dim is not None:
                _rope_issues(own, attn.head_dim, f"layers.kinds.{name}.position", problem)
            if getattr(own.scaling, "kind", None) == "dynamic":
                problem(f"layers.kinds.{name}.position.scaling", "dynamic NTK is for the spec's own position only")


def _token_issues(spec: Spec, problem: Callable[..., None]) -> None:
    """Token ids index the embedding: each must be below vocab_size (generate() would stop at, or pad with, an id
    the model can never produce or read)."""
    tokens = spec.tokens
    for name in ("bos", "pad", "decoder_start"):
        value = getattr(tokens, name)
        if value is not None and value >= spec.vocab_size:
            problem(f"tokens.{name}", f"{value} is not below vocab_size ({spec.vocab_size})")
    eos = [tokens.eos] if isinstance(tokens.eos, int) else tokens.eos or []
    bad = [value for value in eos if value >= spec.vocab_size]
    if bad:
        shown = bad[0] if isinstance(tokens.eos, int) else bad
        problem("tokens.eos", f"{shown} is not below vocab_size ({spec.vocab_size})")


def _size_issues(spec: Spec) -> list[SpecIssue]:
    """A spec whose parameters cannot fit any machine is an error at the key that makes it so.

    The count is a lower bound (the largest matrices of each part: the token embedding, each block's attention
    output and MLP projections, the vision tower's attention), so a refused spec is certainly too large; the exact
    count (`archspec.analysis.param_counts`) is at least as big. Reported at the key of the largest part."""
    d = spec.d_model
    attn = spec.attention
    value_width = attn.heads * (attn.v_dim if attn.kind == "mla" else attn.head_dim or d // attn.heads)
    layers = spec.n_layers + (spec.n_decoder_layers or 0)
    attention = layers * 2 * d * value_width  # the value/output path: v (or MLA's kv_up) and o
    dense_mlp = 2 * d * spec.mlp.d_ff
    moe = spec.moe
    moe_layers = sum(spec.is_moe_layer(index) for index in range(spec.n_layers)) if moe is not None else 0
    experts = moe_layers * moe.experts * 2 * d * (moe.d_ff or spec.mlp.d_ff) if moe is not None else 0
    parts = {
        ("vocab_size",): spec.vocab_size * d,
        ("n_layers",): attention + (layers - moe_layers) * dense_mlp,
        ("moe", "experts"): experts,
    }
    tower = spec.vision.tower if spec.vision is not None else None
    if tower is not None and tower.kind == "vit":
        grid = tower.image_size // tower.patch_size
        parts[("vision", "tower", "depth")] = tower.depth * 4 * tower.width**2 + grid * grid * tower.width
    total = sum(parts.values())
    if total <= MAX_PARAMETERS:
        return []
    path = max(parts, key=lambda key: parts[key])
    return [
        SpecIssue(
            path,
            f"the spec has at least {total:.3g} parameters, more than any machine holds",
            f"archspec builds models of up to {MAX_PARAMETERS:.0e} parameters; the largest published have about 2e12",
        )
    ]


def _latent_attention_issues(spec: Spec) -> list[SpecIssue]:
    issues = []
    position = spec.position
    if position.kind != "rope":
        issues.append(
            SpecIssue(("position",), "mla needs rope positions (its rope_dim part rotates)", "position: rope")
        )
    elif position.fraction != 1.0:
        issues.append(
            SpecIssue(("position", "fraction"), "mla rotates exactly attention.rope_dim dims", "drop fraction")
        )
    if position.kind == "rope" and getattr(position.scaling, "kind", None) == "longrope":
        _longrope_issues(
            position.scaling,
            spec.attention.rope_dim,  # type: ignore[union-attr]
            "position.scaling",
            lambda path, message, hint="": issues.append(SpecIssue(tuple(path.split(".")), message, hint)),
        )
    if spec.attention.rope_dim % 2:  # type: ignore[union-attr]
        issues.append(SpecIssue(("attention", "rope_dim"), "must be even", "rotary dims rotate in pairs"))
    elif (
        position.kind == "rope"
        and getattr(position.scaling, "kind", None) == "dynamic"
        and spec.attention.rope_dim <= 2
    ):  # type: ignore[union-attr]
        issues.append(
            SpecIssue(
                ("position", "scaling"),
                "dynamic NTK needs more than 2 rotary dims (rope_dim is 2)",
                "its theta formula has the exponent d / (d - 2)",
            )
        )
    return issues


def _moe_issues(spec: Spec) -> list[SpecIssue]:
    moe = spec.moe
    assert moe is not None
    router = moe.router
    issues = []

    def problem(path: str, message: str, hint: str = "") -> None:
        issues.append(SpecIssue(tuple(path.split(".")), message, hint))

    if moe.top_k > moe.experts:
        problem("moe.top_k", f"top_k ({moe.top_k}) exceeds experts ({moe.experts})")
    if moe.experts % router.groups:
        problem("moe.router.groups", f"experts ({moe.experts}) must be divisible by groups ({router.groups})")
    elif router.top_groups is not None:
        if router.top_groups > router.groups:
            problem("moe.router.top_groups", f"top_groups ({router.top_groups}) exceeds groups ({router.groups})")
        elif router.top_groups * (moe.experts // router.groups) < moe.top_k:
            problem("moe.router.top_groups", f"the kept groups hold fewer than top_k ({moe.top_k}) experts")
        if router.group_score == "top2-sum" and router.groups > 1 and moe.experts // router.groups < 2:
            problem("moe.router.group_score", "top2-sum needs at least 2 experts per group")
    if router.aux_loss_counts != "selected" and router.aux_loss != "token":
        problem("moe.router.aux_loss_counts", "applies to the token balance loss only", "leave it out")
    if moe.layers is not None and any(layer >= spec.n_layers for layer in moe.layers):
        problem("moe.layers", f"layers beyond n_layers ({spec.n_layers})")
    if moe.dense_layers > spec.n_layers:
        problem("moe.dense_layers", f"exceeds n_layers ({spec.n_layers})")
    if moe.shared_gate and moe.shared_experts == 0:
        problem("moe.shared_gate", "there are no shared experts to gate", "set shared_experts")
    return issues


def _structure_issues(spec: Spec, problem: Callable[..., None]) -> None:
    """Rules of the encoder-decoder (T5) and GLM structures and of the deepnorm block."""
    position, block = spec.position, spec.block
    encoder_decoder = spec.structure == "encoder-decoder"
    if position.kind == "relative-bias" and not encoder_decoder:
        problem("position.kind", "relative-bias is implemented for structure: encoder-decoder only")
    if position.kind == "relative-bias":
        # T5's bucketing: the encoder splits the buckets by direction, then each half into exact and logarithmic
        # buckets; the logarithmic part divides by ln(max_distance / (buckets // 2)) in the decoder
        if position.buckets < 4:
            problem(
                "position.buckets", f"{position.buckets} buckets leave the encoder no exact bucket", "use at least 4"
            )
        elif position.max_distance <= position.buckets // 2:
            problem(
                "position.max_distance",
                f"must exceed buckets // 2 ({position.buckets // 2}), where the logarithmic buckets start",
                "T5 uses buckets: 32, max_distance: 128",
            )
    if encoder_decoder:
        if position.kind != "relative-bias":
            problem("position.kind", f"encoder-decoder supports position kind relative-bias, not {position.kind}")
        if block.kind != "pre-norm" or block.residual_from_norm:
            problem("block", "encoder-decoder blocks are pre-norm (T5's layout)", "use block: pre-norm")
        if getattr(spec.attention, "window", None) is not None:
            problem("attention.window", "sliding windows are not supported in encoder-decoder models")
        if spec.attention.kind != "mha":
            problem("attention.kind", f"encoder-decoder attention is mha, not {spec.attention.kind}")
        if getattr(spec.attention, "inverse_layer_scale", False):
            problem("attention.inverse_layer_scale", "implemented for decoders only (GPT-2's option)")
        if spec.moe is not None:
            problem("moe", "mixture of experts is not implemented for encoder-decoder models")
        if spec.embeddings.norm:
            problem("embeddings.norm", "T5 has no embedding norm; encoder-decoder models do not build one")
        if spec.tokens.decoder_start is None:
            problem("tokens.decoder_start", "encoder-decoder needs a decoder start token", "T5 uses 0 (the pad id)")
    else:
        if spec.n_decoder_layers is not None:
            problem("n_decoder_layers", "only meaningful for structure: encoder-decoder")
        if spec.embeddings.scale_head:
            problem("embeddings.scale_head", "implemented for structure: encoder-decoder only (T5 v1.0)")
    if position.kind == "rope" and position.block_positions:
        if spec.structure != "glm":
            problem("position.block_positions", "2-D positions belong to structure: glm")
        if position.fraction != 1.0 or position.pairing != "half":
            problem(
                "position.block_positions",
                "2-D positions rotate whole heads in half pairing",
                "fraction: 1, pairing: half",
            )
        if position.scaling is not None:
            problem("position.scaling", "2-D positions take no frequency scaling")
        if getattr(spec.attention, "head_dim", None) is not None and spec.attention.head_dim % 4:
            problem(
                "position.block_positions",
                f"head_dim {spec.attention.head_dim} must be divisible by 4",
                "two rotary halves of even width",
            )
    if block.kind != "deepnorm":
        for name in ("alpha", "beta"):
            if getattr(block, name) is not None:
                problem(f"block.{name}", f"only meaningful for deepnorm blocks, not {block.kind}")


def _vision_issues(spec: Spec, problem: Callable[..., None]) -> None:
    """Rules of the `vision` section: a tower that tiles its image, feature layers that exist, a pooling grid that
    divides the tower's, and tokens_per_image equal to what the tower, selection and pooling give."""
    vision = spec.vision
    assert vision is not None
    tower = vision.tower
    if spec.structure != "decoder":
        problem("vision", f"vision is implemented for structure: decoder, not {spec.structure}")
    if vision.image_token >= spec.vocab_size:
        problem("vision.image_token", f"{vision.image_token} is not below vocab_size ({spec.vocab_size})")
    grid: int | None = None
    if tower.kind == "vit":
        if tower.image_size % tower.patch_size:
            problem(
                "vision.tower.patch_size", f"does not divide image_size ({tower.image_size})", "patches tile the image"
            )
        if tower.width % tower.heads:
            problem("vision.tower.heads", f"width ({tower.width}) is not divisible by heads ({tower.heads})")
        bad = [layer for layer in vision.feature_layers if not -(tower.depth + 1) <= layer <= tower.depth]
        if bad:
            problem(
                "vision.feature_layer",
                f"{bad} out of range for a tower of depth {tower.depth}",
                f"hidden states are 0..{tower.depth} (or -{tower.depth + 1}..-1 from the end)",
            )
        if not (tower.class_token and vision.feature_select == "all"):
            grid = tower.image_size // tower.patch_size
    elif tower.kind == "external":
        if vision.feature_layer != -1:
            problem("vision.feature_layer", "an external tower's features are used as given", "drop feature_layer")
        side = round(tower.patches**0.5)
        grid = side if side * side == tower.patches else None
    if vision.projector.kind == "linear" and vision.projector.depth != 1:
        problem("vision.projector.depth", "a linear projector has depth 1", "use kind: mlp for more layers")
    if vision.projector.kind == "mlp" and (vision.projector.depth or 0) < 2:
        problem("vision.projector.depth", "an mlp projector has at least 2 layers", "use kind: linear for one")
    pooling = vision.pooling
    if pooling is not None:
        side = round(pooling.tokens**0.5)
        if grid is None:
            problem(
                "vision.pooling",
                f"pooling needs a square grid of patch tokens; the tower gives {vision.feature_tokens} per image",
                "use feature_select: patches (drop the class token), or an external tower with a square patch count",
            )
        elif side * side != pooling.tokens or side > grid or grid % side:
            problem(
                "vision.pooling.tokens",
                f"{pooling.tokens} is not side^2 for a side dividing the {grid} x {grid} patch grid",
                f"e.g. {(grid // 2) ** 2} for 2 x 2 windows" if grid % 2 == 0 else f"e.g. {grid * grid} (no pooling)",
            )
    expected = pooling.tokens if pooling is not None else vision.feature_tokens
    if vision.tokens_per_image != expected:
        source = f"pooling to {expected}" if pooling is not None else f"the tower's {expected} feature tokens per image"
        problem("vision.tokens_per_image", f"is {vision.tokens_per_image}, but {source}", f"set {expected} or drop it")
