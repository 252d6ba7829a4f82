"""The spec vocabulary: pydantic models that read like one row of an architecture table.

Every field carries a description, so `archspec schema` documents itself. Unknown keys are errors
(`extra="forbid"`). Sections that have a `kind` accept a bare string as shorthand (`norm: rmsnorm`).
Optional numbers that have a natural default derived from other fields (`kv_heads`, `head_dim`, the norm
`bias`) are filled in after validation, so a validated `Spec` is always *resolved*: two specs that build the
same model compare equal field by field, which is what `archspec diff` relies on.

Cross-field rules (heads divisible by kv_heads, even rotary dims, ...) live in `archspec.spec.rules`, which
reports every problem with the key path it belongs to.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from archspec.spec.rules import consistency_issues

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

# Upper bounds of the sizes a spec may ask for: each far above any model published (largest d_model 18432,
# deepest stack 1000 layers (DeepNet), 128 query heads, vocabularies of 262k, contexts of 10M tokens, 256 routed
# experts), and low enough that no tensor's storage size overflows and a meta-device build of the largest
# allowed stack takes seconds. The total parameter count has its own ceiling (`rules.MAX_PARAMETERS`).
MAX_WIDTH = 2**20
"""d_model, MLP and expert widths, head dims, MLA ranks, vision widths."""
MAX_HEADS = 2**14
MAX_LAYERS = 4096
MAX_VOCAB = 2**24
"""Also the bound of every token id."""
MAX_CONTEXT = 2**32
MAX_EXPERTS = 2**16
MAX_IMAGE_SIZE = 2**16


def kind_shorthand(value: Any) -> Any:
    """`"rmsnorm"` -> `{"kind": "rmsnorm"}`: lets a section with a `kind` be written as one word."""
    return {"kind": value} if isinstance(value, str) else value


def bool_for_all_projections(value: Any) -> Any:
    """`bias: true` -> the same flag for q, k, v and o."""
    return {"q": value, "k": value, "v": value, "o": value} if isinstance(value, bool) else value


class Section(BaseModel):
    """Base of every spec section: unknown keys and wrongly typed values are errors."""

    # strict: `d_model: true` or `d_model: "8"` are errors, not 1 and 8 (ints still fill float fields).
    # allow_inf_nan=False: `.inf` and `.nan` are valid YAML floats, never valid sizes, scales or epsilons.
    model_config = ConfigDict(extra="forbid", validate_assignment=False, strict=True, allow_inf_nan=False)


# ----------------------------------------------------------------------------------------------- norms
class NormSpec(Section):
    kind: Literal["rmsnorm", "layernorm"] = Field(
        "rmsnorm", description="rmsnorm: x / rms(x) * w (LLaMA, T5); layernorm: (x - mean) / std * w + b."
    )
    eps: float = Field(1e-5, gt=0, description="Added to the variance before the square root.")
    bias: bool | None = Field(
        None, description="LayerNorm only: learn an additive bias (default true for layernorm, false for rmsnorm)."
    )
    offset: bool = Field(
        False,
        description="rmsnorm only: scale by (1 + w), w stored and initialised as 0 (Gemma), in float32 before the "
        "cast back.",
    )

    @model_validator(mode="after")
    def _default_bias(self) -> NormSpec:
        if self.bias is None:
            self.bias = self.kind == "layernorm"
        return self


# ------------------------------------------------------------------------------------------- attention
class ProjectionBias(Section):
    q: bool = Field(False, description="Bias on the query projection.")
    k: bool = Field(False, description="Bias on the key projection.")
    v: bool = Field(False, description="Bias on the value projection.")
    o: bool = Field(False, description="Bias on the output projection.")


def qk_norm_shorthand(value: Any) -> Any:
    """`qk_norm: true` -> the per-head norm before RoPE (Qwen3); `false` -> none."""
    if value is True:
        return {}
    return None if value is False else value


class QKNormSpec(Section):
    """Norms of the queries and keys (of the spec's norm kind and eps) before the scores."""

    over: Literal["head", "projection"] = Field(
        "head",
        description="head: each head's vector, one weight shared by the heads (Qwen3, Gemma 3); projection: the "
        "whole q (and k) projection output, heads x head_dim (OLMo 2).",
    )
    per_head_weights: bool = Field(
        False, description="head only: each head has its own weight (and bias) (Cohere's [heads, head_dim] norms)."
    )
    after_rope: bool = Field(False, description="Normalise the rotated q and k instead (Hunyuan).")


class AttentionSpec(Section):
    kind: Literal["mha"] = Field(
        "mha", description="Multi-head attention with kv_heads key/value heads (MHA, GQA or MQA)."
    )
    heads: int = Field(gt=0, le=MAX_HEADS, description="Number of query heads.")
    kv_heads: int | None = Field(
        None,
        gt=0,
        le=MAX_HEADS,
        description="Key/value heads: = heads is MHA, 1 is MQA, in between is GQA. Default: heads.",
    )
    head_dim: int | None = Field(
        None,
        gt=0,
        le=MAX_WIDTH,
        description="Width of one head. Default: d_model / heads (Qwen3 and GLM set it explicitly).",
    )
    bias: Annotated[ProjectionBias, BeforeValidator(bool_for_all_projections)] = Field(
        default_factory=ProjectionBias,
        description="Projection biases: one flag for all, or {q, k, v, o} separately (Qwen2: q/k/v only).",
    )
    qk_norm: Annotated[QKNormSpec | None, BeforeValidator(qk_norm_shorthand)] = Field(
        None,
        description="Norms of q and k: true is a per-head norm before RoPE (Qwen3); or {over, per_head_weights, "
        "after_rope}.",
    )
    softcap: float | None = Field(
        None,
        gt=0,
        description="Soft-capping of the scaled scores before the mask: cap * tanh(score / cap) (Gemma 2: 50).",
    )
    window: int | None = Field(
        None,
        gt=0,
        le=MAX_CONTEXT,
        description="Sliding window: a query sees itself and the window-1 keys before it (Mistral).",
    )
    window_layers: list[Annotated[int, Field(ge=0, le=MAX_LAYERS)]] | None = Field(
        None, description="Layers that use the sliding window (default: all layers when window is set)."
    )
    scale: float | None = Field(
        None, gt=0, description="Multiplier of q.k before the softmax. Default: head_dim ** -0.5."
    )
    inverse_layer_scale: bool = Field(
        False,
        description="Layer i (from 0) divides its scale by i + 1 (GPT-2's scale_attn_by_inverse_layer_idx).",
    )
    sinks: bool = Field(
        False,
        description="Attention sinks: a learned logit per head joins each softmax as one more column, then dropped, "
        "so a query may attend to nothing (gpt-oss). The KV cache is unchanged.",
    )


class LatentAttentionSpec(Section):
    """Multi-head Latent Attention (DeepSeek-V2, https://arxiv.org/abs/2405.04434): keys and values are
    up-projected from one compressed latent per token, which is all the KV cache stores (plus one shared RoPE key)."""

    kind: Literal["mla"]
    heads: int = Field(gt=0, le=MAX_HEADS, description="Number of query (and key/value) heads.")
    q_rank: int | None = Field(
        None, gt=0, le=MAX_WIDTH, description="Rank of the query's low-rank projection (none: a plain q)."
    )
    kv_rank: int = Field(
        gt=0, le=MAX_WIDTH, description="Width of the compressed key/value latent (what the cache stores)."
    )
    nope_dim: int = Field(gt=0, le=MAX_WIDTH, description="Per-head query/key dims without RoPE.")
    rope_dim: int = Field(
        gt=0, le=MAX_WIDTH, description="Per-head query/key dims with RoPE (the key part is shared by heads)."
    )
    v_dim: int = Field(gt=0, le=MAX_WIDTH, description="Per-head value dims.")
    bias: bool = Field(False, description="Biases on the down projections and the output projection.")
    latent_norm_eps: float = Field(1e-6, gt=0, description="Epsilon of the RMSNorms on the q and kv latents.")
    scale: float | None = Field(
        None,
        gt=0,
        description="Softmax scale. Default: (nope_dim + rope_dim) ** -0.5, times mscale(factor, mscale_all_dim)^2 "
        "under YaRN scaling with mscale_all_dim (DeepSeek's temperature correction).",
    )


def _attention_kind(value: Any) -> str:
    kind = value.get("kind", "mha") if isinstance(value, dict) else getattr(value, "kind", "mha")
    return kind if isinstance(kind, str) else "mha"


AnyAttention = Annotated[
    Annotated[AttentionSpec, Tag("mha")] | Annotated[LatentAttentionSpec, Tag("mla")],
    Discriminator(
        _attention_kind,
        custom_error_type="attention_kind",
        custom_error_message="unknown attention kind (allowed: 'mha', 'mla')",
    ),
]


# ------------------------------------------------------------------------------------------- positions
class LinearScaling(Section):
    kind: Literal["linear"]
    factor: float = Field(gt=0, description="Positions are divided by this factor (position interpolation).")


class DynamicScaling(Section):
    kind: Literal["dynamic"]
    factor: float = Field(gt=0, description="Dynamic NTK: theta grows once the sequence exceeds context_length.")


class Llama3Scaling(Section):
    kind: Literal["llama3"]
    factor: float = Field(gt=0, description="Interpolation factor for the low-frequency band.")
    low_freq_factor: float = Field(
        1.0, gt=0, description="Wavelengths above original_context/low_freq_factor are scaled."
    )
    high_freq_factor: float = Field(
        4.0, gt=0, description="Wavelengths below original_context/high_freq_factor are kept."
    )
    original_context: int = Field(gt=0, le=MAX_CONTEXT, description="Context length the model was pre-trained with.")


class YarnScaling(Section):
    kind: Literal["yarn"]
    factor: float = Field(gt=0, description="Context extension factor.")
    original_context: int = Field(gt=0, le=MAX_CONTEXT, description="Context length the model was pre-trained with.")
    beta_fast: float = Field(32.0, gt=0, description="Rotations above which dimensions extrapolate.")
    beta_slow: float = Field(1.0, gt=0, description="Rotations below which dimensions interpolate.")
    mscale: float | None = Field(None, description="DeepSeek's attention-temperature numerator (with mscale_all_dim).")
    mscale_all_dim: float | None = Field(None, description="DeepSeek's attention-temperature denominator.")
    attention_factor: float | None = Field(
        None, gt=0, description="Explicit multiplier of cos and sin. Default: 0.1 ln(factor) + 1."
    )
    truncate: bool = Field(True, description="Round the correction range to whole dimensions (the YaRN paper does).")


class LongRopeScaling(Section):
    """LongRoPE (Ding et al. 2024, https://arxiv.org/abs/2402.13753; Phi-3): each frequency divided by its own
    factor, the short ones while a call's keys fit in original_context, the long ones past it."""

    kind: Literal["longrope"]
    short_factor: list[Annotated[float, Field(gt=0)]] = Field(
        min_length=1, description="Per-frequency divisors while the keys fit in original_context (rotary_dim/2)."
    )
    long_factor: list[Annotated[float, Field(gt=0)]] = Field(
        min_length=1, description="Per-frequency divisors once the keys exceed original_context (rotary_dim/2)."
    )
    original_context: int = Field(gt=0, le=MAX_CONTEXT, description="Context length the model was pre-trained with.")
    attention_factor: float | None = Field(
        None,
        gt=0,
        description="Multiplier of cos and sin. Default: sqrt(1 + ln(s) / ln(original_context)) with "
        "s = context_length / original_context (1 when s <= 1).",
    )


RopeScaling = Annotated[
    LinearScaling | DynamicScaling | Llama3Scaling | YarnScaling | LongRopeScaling, Field(discriminator="kind")
]


class RopeSpec(Section):
    kind: Literal["rope"]
    theta: float = Field(10000.0, gt=1, description="Base of the rotary frequencies (> 1: frequencies must fall).")
    fraction: float = Field(
        1.0, gt=0, le=1, description="Fraction of each head's dims that rotate (GPT-NeoX 0.25, GLM 0.5)."
    )
    pairing: Literal["half", "interleaved"] = Field(
        "half",
        description="half: dims (k, k + r/2) rotate together (LLaMA/NeoX); interleaved: (2k, 2k+1) (GPT-J/GLM).",
    )
    scaling: Annotated[RopeScaling | None, BeforeValidator(kind_shorthand)] = Field(
        None, description="Context-extension scaling of the frequencies: linear, dynamic, llama3, yarn or longrope."
    )
    block_positions: bool = Field(
        False,
        description=(
            "2-D positions (GLM, ChatGLM-6B; structure: glm): half of each head's rotary frequencies turn with the "
            "position id, the other half with the block position id (0 in the prefix, 1, 2, ... after it)."
        ),
    )


class AlibiSpec(Section):
    """ALiBi (Press et al. 2022, https://arxiv.org/abs/2108.12409): a per-head linear bias by key position."""

    kind: Literal["alibi"]
    scaled: bool = Field(
        False,
        description="The bias joins q.k before the softmax scale, i.e. is divided by sqrt(head_dim) (Falcon-RW); "
        "false: added to the scaled scores (BLOOM).",
    )
    precision: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="Precision of slope x key position: bfloat16 in Falcon-RW, which was trained so.",
    )


class LearnedPositionSpec(Section):
    kind: Literal["learned"]


class NoPositionSpec(Section):
    kind: Literal["none"]


class RelativeBiasSpec(Section):
    """T5's bucketed relative position bias (Raffel et al. 2020, https://arxiv.org/abs/1910.10683, section 2.1)."""

    kind: Literal["relative-bias"]
    buckets: int = Field(
        32, gt=1, le=MAX_EXPERTS, description="Buckets of relative distance (relative_attention_num_buckets)."
    )
    max_distance: int = Field(
        128,
        gt=1,
        le=MAX_CONTEXT,
        description="Distances beyond this share the last bucket (relative_attention_max_distance).",
    )


PositionSpec = Annotated[
    RopeSpec | AlibiSpec | LearnedPositionSpec | NoPositionSpec | RelativeBiasSpec, Field(discriminator="kind")
]


# ------------------------------------------------------------------------------------------ layer kinds
class LayerKindSpec(Section):
    """What one kind of layer changes: its attention window and its positions."""

    window: int | None = Field(
        None, gt=0, le=MAX_CONTEXT, description="Sliding window of this kind's attention (none: full attention)."
    )
    position: Annotated[
        Annotated[RopeSpec | NoPositionSpec, Field(discriminator="kind")] | None, BeforeValidator(kind_shorthand)
    ] = Field(
        None,
        description="This kind's positions: its own rope settings, or none (NoPE layers). Default: the spec's position.",
    )


class LayerPatternSpec(Section):
    """Layers that differ (Gemma 2/3, OLMo 3, Cohere 2, SmolLM3, EXAONE 4): named kinds, a pattern of kinds that
    repeats over the stack, and exceptions. Layer i is `exceptions`' kind if it lists i, else pattern[i % len]."""

    kinds: dict[Annotated[str, Field(pattern=NAME_PATTERN)], LayerKindSpec] = Field(
        min_length=1, description="The kinds by name, e.g. {sliding: {window: 4096}, full: {}}."
    )
    pattern: list[str] = Field(
        min_length=1,
        max_length=MAX_LAYERS,
        description="Kinds of layers 0, 1, ... repeated to the end (Gemma 3: 5 sliding, 1 full).",
    )
    exceptions: dict[str, list[Annotated[int, Field(ge=0, le=MAX_LAYERS)]]] = Field(
        default_factory=dict, description="Kind -> layers that take it whatever the pattern says."
    )

    def kind_of(self, layer: int) -> str:
        for kind, layers in self.exceptions.items():
            if layer in layers:
                return kind
        return self.pattern[layer % len(self.pattern)]


# ---------------------------------------------------------------------------------------- block, mlp
class BlockSpec(Section):
    kind: Literal["pre-norm", "post-norm", "parallel", "sandwich", "output-norm", "deepnorm"] = Field(
        "pre-norm",
        description=(
            "pre-norm: x + f(norm(x)); post-norm: norm(x + f(x)) (original GPT); parallel: attention and MLP "
            "read the same input and both add to it (GPT-J, NeoX, Falcon); sandwich: pre-norm plus a norm on "
            "each sublayer's output, x + norm'(f(norm(x))) (GLM-4-0414, Gemma 2/3); output-norm: only the norm "
            "on the sublayer's output, x + norm(f(x)) (OLMo 2); deepnorm: norm(alpha * x + f(x)) with the "
            "value/output/MLP weights initialised with gain beta (DeepNet, https://arxiv.org/abs/2203.00555; GLM-130B)."
        ),
    )
    residual_scale: float = Field(
        1.0, gt=0, description="pre-norm only: x + s * f(norm(x)) (Granite's residual_multiplier)."
    )
    parallel_norms: Literal[1, 2] = Field(
        1, description="parallel only: 1 norm shared by attention and MLP (Falcon-7B), or 2 (NeoX, Falcon-40B)."
    )
    residual_from_norm: bool = Field(
        False, description="pre-norm only: the residual branch starts from the normed input (BLOOM option)."
    )
    alpha: float | None = Field(
        None,
        gt=0,
        description="deepnorm only: residual multiplier. Default (2N)^(1/4) for N decoder layers (DeepNet, Table 1).",
    )
    beta: float | None = Field(
        None,
        gt=0,
        description="deepnorm only: init gain of value, output and MLP weights. Default (8N)^(-1/4) (DeepNet).",
    )


Activation = Literal["relu", "gelu", "gelu-tanh", "silu", "swiglu", "geglu", "geglu-tanh", "reglu", "clamped-swiglu"]

GATED_ACTIVATIONS: dict[str, str] = {
    "swiglu": "silu",
    "geglu": "gelu",
    "geglu-tanh": "gelu-tanh",
    "reglu": "relu",
    "clamped-swiglu": "silu",  # its gated unit is ClampedSwiGLU's, not act(gate) * up
}
"""Gated MLP activations and the activation applied to their gate: down(act(gate x) * up x)."""


class MlpSpec(Section):
    activation: Activation = Field(
        description=(
            "relu, gelu (exact erf), gelu-tanh (tanh approximation: GPT-2's gelu_new, BLOOM), silu; gated: "
            "swiglu, geglu, geglu-tanh, reglu; clamped-swiglu (gpt-oss's experts: (clamp(up, -limit, limit) + 1) "
            "* g * sigmoid(alpha g), g = min(gate, limit))."
        )
    )
    d_ff: int = Field(gt=0, le=MAX_WIDTH, description="Hidden width of the MLP (of each of gate and up when gated).")
    bias: bool = Field(False, description="Biases on the MLP projections.")
    limit: float | None = Field(None, gt=0, description="clamped-swiglu: the clamp of gate and up (gpt-oss: 7.0).")
    alpha: float | None = Field(None, gt=0, description="clamped-swiglu: the sigmoid's gain (gpt-oss: 1.702).")


class EmbeddingSpec(Section):
    tied: bool = Field(False, description="The output head reuses the token-embedding matrix.")
    norm: bool = Field(False, description="A norm (of the spec's norm kind) right after the embedding (BLOOM).")
    scale_head: bool = Field(
        False, description="Multiply the final hidden state by d_model^-0.5 before the head (T5 v1.0, tied head)."
    )
    scale: float | Literal["sqrt-d-model"] | None = Field(
        None,
        description="Multiplier of the token embeddings: a number (Granite's embedding_multiplier), or sqrt-d-model: "
        "d_model^0.5 rounded to the activations' dtype first (Gemma).",
    )
    logit_scale: float = Field(
        1.0, gt=0, description="Multiplier of the logits (Cohere's logit_scale; Granite's 1 / logits_scaling)."
    )
    logit_softcap: float | None = Field(
        None, gt=0, description="Soft-capping of the final logits: cap * tanh(logits / cap) (Gemma 2: 30)."
    )


class TokenSpec(Section):
    bos: int | None = Field(None, ge=0, le=MAX_VOCAB, description="Beginning-of-sequence token id.")
    eos: Annotated[int, Field(ge=0, le=MAX_VOCAB)] | list[Annotated[int, Field(ge=0, le=MAX_VOCAB)]] | None = Field(
        None, description="End-of-sequence token id, or several: generate() stops at any of them."
    )
    pad: int | None = Field(
        None, ge=0, le=MAX_VOCAB, description="Padding token id (generate() pads finished rows with it)."
    )
    decoder_start: int | None = Field(
        None, ge=0, le=MAX_VOCAB, description="encoder-decoder: the token the decoder starts from (T5: 0, the pad id)."
    )


# ------------------------------------------------------------------------------------------------- moe
class RouterSpec(Section):
    scoring: Literal["softmax", "sigmoid"] = Field(
        "softmax",
        description="Expert scores from the router logits: softmax (Mixtral, Qwen, DeepSeek-V2) or sigmoid (V3).",
    )
    renormalize: bool = Field(
        True, description="Divide the top-k weights by their sum (Mixtral; Qwen's norm_topk_prob)."
    )
    scale: float = Field(1.0, gt=0, description="Routed scaling factor multiplying the top-k weights (DeepSeek).")
    groups: int = Field(1, gt=0, le=MAX_EXPERTS, description="Group-limited routing: experts form this many groups ...")
    top_groups: int | None = Field(
        None, gt=0, le=MAX_EXPERTS, description="... and a token may only use experts of its best top_groups."
    )
    group_score: Literal["max", "top2-sum"] = Field(
        "max", description="Score of a group: its best expert (DeepSeek-V2) or its best two summed (V3)."
    )
    correction_bias: bool = Field(
        False, description="A learned per-expert bias added to the scores for selection only, not weighting (V3)."
    )
    jitter: float = Field(0.0, ge=0, description="Training only: multiply the MoE input by U(1 - j, 1 + j) (Mixtral).")
    aux_loss: Literal["token", "sequence"] = Field(
        "token", description="Load-balancing loss over all tokens (Switch/Mixtral) or per sequence (DeepSeek-V3)."
    )
    bias: bool = Field(False, description="A learned bias of the router logits (gpt-oss).")
    aux_loss_counts: Literal["selected", "softmax-top-k"] = Field(
        "selected",
        description="token loss only: which choices its expert fractions count: the experts the router selected, or "
        "the top_k of the plain softmax of the logits, which differ when a correction bias or groups shift the "
        "choice (transformers' load_balancing_loss_func for MiniMax-M2 and ERNIE 4.5 MoE).",
    )
    aux_loss_coef: float = Field(0.0, ge=0, description="Weight of the load-balancing loss in the training loss.")
    z_loss_coef: float = Field(
        0.0, ge=0, description="Weight of the router z-loss, mean(logsumexp(logits)^2) (ST-MoE)."
    )


class MoESpec(Section):
    """A mixture of experts that replaces the MLP in its layers. Experts use the spec's MLP activation."""

    experts: int = Field(gt=0, le=MAX_EXPERTS, description="Number of routed experts.")
    top_k: int = Field(gt=0, le=MAX_EXPERTS, description="Experts each token is sent to.")
    d_ff: int | None = Field(None, gt=0, le=MAX_WIDTH, description="Hidden width of each expert. Default: mlp.d_ff.")
    shared_experts: int = Field(
        0, ge=0, le=MAX_EXPERTS, description="Always-on experts (DeepSeek, Qwen-MoE), fused into one MLP."
    )
    shared_d_ff: int | None = Field(None, gt=0, le=MAX_WIDTH, description="Width of each shared expert. Default: d_ff.")
    shared_gate: bool = Field(False, description="Scale the shared experts by sigmoid(linear(x)) (Qwen-MoE).")
    dense_layers: int = Field(
        0, ge=0, le=MAX_LAYERS, description="The first N layers keep the dense MLP (DeepSeek's first_k_dense_replace)."
    )
    layers: list[Annotated[int, Field(ge=0, le=MAX_LAYERS)]] | None = Field(
        None,
        description="Explicit list of MoE layers (overrides dense_layers; Qwen-MoE's sparse step / mlp_only_layers).",
    )
    bias: bool = Field(False, description="Biases on each routed expert's projections (gpt-oss).")
    router: RouterSpec = Field(default_factory=RouterSpec)


# ---------------------------------------------------------------------------------------------- vision
VisionActivation = Literal["relu", "gelu", "gelu-tanh", "quick-gelu", "silu"]


class ViTSpec(Section):
    """A ViT / CLIP-style image encoder (Dosovitskiy et al. 2020, https://arxiv.org/abs/2010.11929; CLIP, Radford et
    al. 2021, https://arxiv.org/abs/2103.00020): square patches embedded by one linear map, an optional class token,
    learned absolute positions, then pre-norm blocks of bidirectional multi-head attention and a plain MLP."""

    kind: Literal["vit"]
    image_size: int = Field(gt=0, le=MAX_IMAGE_SIZE, description="Side of the square input image in pixels.")
    patch_size: int = Field(
        gt=0, le=MAX_IMAGE_SIZE, description="Side of a square patch: the grid has image_size / patch_size per side."
    )
    channels: int = Field(3, gt=0, le=MAX_WIDTH, description="Channels of pixel_values.")
    width: int = Field(gt=0, le=MAX_WIDTH, description="Hidden width of the tower (CLIP's hidden_size).")
    depth: int = Field(gt=0, le=MAX_LAYERS, description="Number of encoder blocks.")
    heads: int = Field(gt=0, le=MAX_HEADS, description="Attention heads; head_dim = width / heads.")
    d_ff: int = Field(gt=0, le=MAX_WIDTH, description="Hidden width of each block's MLP.")
    activation: VisionActivation = Field(
        "quick-gelu", description="MLP activation; quick-gelu is x * sigmoid(1.702 x) (CLIP's quick_gelu)."
    )
    norm_eps: float = Field(1e-5, gt=0, description="Epsilon of the tower's LayerNorms.")
    bias: bool = Field(True, description="Biases on the attention and MLP projections.")
    patch_bias: bool = Field(False, description="Bias on the patch embedding (CLIP has none).")
    class_token: bool = Field(True, description="Prepend a learned class token (CLIP).")
    pre_norm: bool = Field(
        True, description="A LayerNorm on the embeddings before the first block (CLIP's pre_layrnorm)."
    )
    post_norm: bool = Field(
        True,
        description="CLIP's post_layernorm: part of the checkpoint, but it only normalises the pooled class token, "
        "never the patch features a VLM reads.",
    )


class ExternalTowerSpec(Section):
    """A tower the user supplies: call the model with `image_features=[images, patches, width]`, or set
    `model.vision_tower` to a module or callable mapping pixel_values to such features."""

    kind: Literal["external"]
    width: int = Field(gt=0, le=MAX_WIDTH, description="Width of each feature vector the tower returns.")
    patches: int = Field(
        gt=0, le=MAX_CONTEXT, description="Feature vectors per image the tower returns (e.g. 576 for a 24 x 24 grid)."
    )


class ProjectorSpec(Section):
    """Maps tower features to the LM's width: one linear map, or an MLP (LLaVA-1.5: 2 layers with GELU)."""

    kind: Literal["linear", "mlp"] = Field("mlp", description="linear: one linear map; mlp: depth linear maps.")
    depth: int | None = Field(
        None,
        gt=0,
        le=MAX_LAYERS,
        description="Linear layers, with the activation between them. Default: 1 for linear, 2 for mlp.",
    )
    activation: VisionActivation = Field("gelu", description="Activation between the MLP's layers.")
    bias: bool = Field(True, description="Biases on the projector's layers (LLaVA's multimodal_projector_bias).")

    @model_validator(mode="after")
    def _default_depth(self) -> ProjectorSpec:
        if self.depth is None:
            self.depth = 1 if self.kind == "linear" else 2
        return self


class PatchPoolingSpec(Section):
    """Average pooling of each image's square grid of projected tokens to a smaller square grid (e.g. 24 x 24 = 576
    -> 12 x 12 = 144), after the projector, as LLaVA-OneVision pools video frames."""

    kind: Literal["average"] = Field("average", description="Mean over non-overlapping square windows.")
    tokens: int = Field(
        gt=0,
        le=MAX_CONTEXT,
        description="Tokens per image after pooling: a square, side^2, whose side divides the grid's.",
    )


class VisionSpec(Section):
    """Images as tokens (LLaVA, Liu et al. 2023, https://arxiv.org/abs/2304.08485): tower features -> projector ->
    optional pooling, spliced into the text sequence where input_ids hold the image placeholder token."""

    tower: Annotated[ViTSpec | ExternalTowerSpec, Field(discriminator="kind")] = Field(
        description="vit: a built-in ViT/CLIP-style encoder; external: features come from the user."
    )
    feature_layer: int | list[int] = Field(
        -1,
        description="Which hidden state of the tower to read: 0 is the embeddings, k the output of block k, negative "
        "counts from the end (-1 the last block, -2 the one before: LLaVA-1.5). A list concatenates several.",
    )
    feature_select: Literal["patches", "all"] = Field(
        "patches",
        description="patches: drop the class token (LLaVA's vision_feature_select_strategy 'default'); all: keep it ('full').",
    )
    projector: Annotated[ProjectorSpec, BeforeValidator(kind_shorthand)] = Field(default_factory=ProjectorSpec)
    pooling: PatchPoolingSpec | None = Field(
        None, description="Average pooling of each image's tokens to fewer tokens."
    )
    image_token: int = Field(
        ge=0, le=MAX_VOCAB, description="The placeholder token id: each image fills a run of tokens_per_image of them."
    )
    tokens_per_image: int | None = Field(
        None,
        gt=0,
        le=MAX_CONTEXT,
        description="Image tokens per image in the text sequence. Default: what the tower and pooling give.",
    )

    @property
    def feature_tokens(self) -> int:
        """Feature vectors per image that reach the projector."""
        tower = self.tower
        if isinstance(tower, ExternalTowerSpec):
            return tower.patches
        tokens = (tower.image_size // tower.patch_size) ** 2
        return tokens + int(tower.class_token and self.feature_select == "all")

    @property
    def feature_layers(self) -> list[int]:
        return self.feature_layer if isinstance(self.feature_layer, list) else [self.feature_layer]

    @model_validator(mode="after")
    def _default_tokens(self) -> VisionSpec:
        if self.tokens_per_image is None:
            self.tokens_per_image = self.pooling.tokens if self.pooling is not None else self.feature_tokens
        return self


# ------------------------------------------------------------------------------------------------ spec
class Spec(Section):
    """One architecture, exactly. See DESIGN.md section 4 and docs/spec.md for the vocabulary."""

    name: str = Field(pattern=NAME_PATTERN, description="Identifier: letters, digits, '.', '_' and '-'.")
    description: str = Field("", description="One line on what this is and where its numbers come from.")
    structure: Literal["decoder", "encoder-decoder", "glm"] = Field(
        "decoder",
        description=(
            "decoder: a causal decoder-only LM; encoder-decoder: a bidirectional encoder and a causal decoder with "
            "cross-attention (T5); glm: a decoder whose attention is bidirectional over a per-sequence prefix and "
            "causal after it (GLM's blank infilling, ChatGLM)."
        ),
    )
    vocab_size: int = Field(gt=0, le=MAX_VOCAB, description="Rows of the token embedding.")
    d_model: int = Field(gt=0, le=MAX_WIDTH, description="Width of the residual stream.")
    n_layers: int = Field(gt=0, le=MAX_LAYERS, description="Number of blocks (of the encoder, for encoder-decoder).")
    n_decoder_layers: int | None = Field(
        None, gt=0, le=MAX_LAYERS, description="encoder-decoder only: decoder blocks. Default: n_layers."
    )
    context_length: int = Field(
        gt=0, le=MAX_CONTEXT, description="Maximum positions (size of the learned table, RoPE's L_max)."
    )
    attention: AnyAttention = Field(description="mha (MHA/GQA/MQA) or mla (DeepSeek's latent attention).")
    position: Annotated[PositionSpec, BeforeValidator(kind_shorthand)] = Field(
        description="rope, alibi, learned (absolute table) or none."
    )
    norm: Annotated[NormSpec, BeforeValidator(kind_shorthand)] = Field(
        default_factory=NormSpec, description="The norm used everywhere (blocks, final, embedding, qk-norm eps)."
    )
    block: Annotated[BlockSpec, BeforeValidator(kind_shorthand)] = Field(
        default_factory=BlockSpec, description="Residual layout of a block."
    )
    layers: LayerPatternSpec | None = Field(
        None, description="Layers that differ: each layer's window and positions by a repeating pattern of kinds."
    )
    mlp: MlpSpec
    moe: MoESpec | None = Field(None, description="Mixture of experts replacing the MLP in its layers.")
    vision: VisionSpec | None = Field(
        None, description="Images as tokens: a vision tower, a projector and the placeholder splice (LLaVA)."
    )
    embeddings: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    tokens: TokenSpec = Field(default_factory=TokenSpec)

    @model_validator(mode="after")
    def _resolve_and_check(self) -> Spec:
        attn = self.attention
        if isinstance(attn, AttentionSpec):
            if attn.kv_heads is None:
                attn.kv_heads = attn.heads
            if attn.head_dim is None and self.d_model % attn.heads == 0:
                attn.head_dim = self.d_model // attn.heads
        if self.moe is not None:
            if self.moe.d_ff is None:
                self.moe.d_ff = self.mlp.d_ff
            if self.moe.shared_d_ff is None:
                self.moe.shared_d_ff = self.moe.d_ff
            if self.moe.router.top_groups is None:
                self.moe.router.top_groups = self.moe.router.groups
        if self.structure == "encoder-decoder" and self.n_decoder_layers is None:
            self.n_decoder_layers = self.n_layers
        if self.block.kind == "deepnorm":  # DeepNet's decoder-only constants, N = number of layers
            if self.block.alpha is None:
                self.block.alpha = (2 * self.n_layers) ** 0.25
            if self.block.beta is None:
                self.block.beta = (8 * self.n_layers) ** -0.25
        issues = consistency_issues(self)
        if issues:
            text = "; ".join(f"{'.'.join(map(str, i.path))}: {i.message}" for i in issues)
            raise PydanticCustomError("consistency", "{text}", {"text": text, "issues": issues})
        return self

    # Derived numbers the compiler and analysis share, so no one recomputes them differently.
    @property
    def head_dim(self) -> int:
        """Query/key width of one head (MLA: nope + rope dims)."""
        attn = self.attention
        if isinstance(attn, LatentAttentionSpec):
            return attn.nope_dim + attn.rope_dim
        assert attn.head_dim is not None  # filled in by validation
        return attn.head_dim

    @property
    def kv_heads(self) -> int:
        attn = self.attention
        if isinstance(attn, LatentAttentionSpec):
            return attn.heads
        assert attn.kv_heads is not None
        return attn.kv_heads

    @property
    def rotary_dim(self) -> int:
        """Dims of each head that RoPE rotates (0 without RoPE; MLA: its rope_dim)."""
        if not isinstance(self.position, RopeSpec):
            return 0
        if isinstance(self.attention, LatentAttentionSpec):
            return self.attention.rope_dim
        return int(self.head_dim * self.position.fraction)

    def window_for_layer(self, layer: int) -> int | None:
        if self.layers is not None:
            return self.layers.kinds[self.layers.kind_of(layer)].window
        attn = self.attention
        if not isinstance(attn, AttentionSpec) or attn.window is None:
            return None
        if attn.window_layers is not None and layer not in attn.window_layers:
            return None
        return attn.window

    def position_for_layer(
        self, layer: int
    ) -> RopeSpec | AlibiSpec | LearnedPositionSpec | NoPositionSpec | RelativeBiasSpec:
        """The position scheme of layer `layer`: its kind's, or the spec's."""
        if self.layers is not None:
            own = self.layers.kinds[self.layers.kind_of(layer)].position
            if own is not None:
                return own
        return self.position

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer `layer` uses the mixture of experts instead of the dense MLP."""
        if self.moe is None:
            return False
        if self.moe.layers is not None:
            return layer in self.moe.layers
        return layer >= self.moe.dense_layers
