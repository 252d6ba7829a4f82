"""Exact figures of a spec, from the spec alone: parameters, FLOPs per token, KV-cache bytes.

Nothing here allocates weights or imports torch; every number is a closed-form count over the spec's fields,
cross-checked in the tests against a meta-device build (`numel`), `torch.utils.flop_counter.FlopCounterMode`
and the tensors of `model.new_cache(...)`.

Conventions (the ones people quote, stated exactly so the numbers can be checked):

Parameters
    Every learned tensor once: a tied output head shares the token embedding and adds nothing. Norm weights and
    biases, qk-norm weights (counted under attention) and projection biases are included. *Active per token* is
    what one token's forward pass touches in the sense MoE papers use it: every parameter except the routed
    experts the token is not sent to (embedding tables count in full). For dense specs it equals the total.

FLOPs (multiply and add = 2 FLOPs)
    forward per sequence of length L  =  L * matmul  +  attention(L)

    matmul     = 2 * (weights of every matrix multiply a token goes through): q, k, v, o, the MLP projections
                 and the LM head (also when tied: the head multiply still runs). Embedding lookups, biases,
                 norms, activations, RoPE, softmax and masks are not counted (they are not matrix multiplies
                 and are O(d) per token, not O(d^2)).
    attention  = sum over layers of 2 * heads * (qk_dim + v_dim) * K, i.e. 4 * heads * head_dim * K for
                 ordinary attention: one multiply-add per key for the q.k score and one for the weighted value.
                 K counts (query, key) pairs over the sequence:
                   causal  (the default): the keys a query may see. Query i (0-based) sees min(i + 1, window)
                           keys, so K = L (L + 1) / 2 without a window and W (W + 1) / 2 + (L - W) W with a
                           window W < L. This is the work an attention kernel that skips masked blocks does.
                   full:   K = L * L for every layer, window or not: every query against every key of the
                           sequence. It is what `FlopCounterMode` counts for `scaled_dot_product_attention`
                           (its SDPA formula ignores `is_causal` and masks) and what the math kernel executes.
    FLOPs per token = forward per sequence / L (the average over positions 0 .. L-1 of a full forward pass).
    Training per token = 3 x forward (the backward pass costs twice the forward: gradients with respect to
    activations and to weights).

KV cache
    bytes per token = bytes(dtype) * sum over layers of (key width + value width); for ordinary attention
    2 * n_layers * kv_heads * head_dim * bytes(dtype). Sliding-window layers are counted in full, because
    archspec's static cache holds `max_len` positions in every layer (a rolling buffer could cap them at the
    window). For a context and batch: bytes per token * context * batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from archspec.spec.errors import ArchspecError
from archspec.spec.schema import GATED_ACTIVATIONS, LatentAttentionSpec, LearnedPositionSpec, Spec

AttentionCount = Literal["causal", "full"]


class AnalysisError(ArchspecError):
    """A bad request to the analysis (unknown dtype, context that does not fit the spec, ...)."""


# ------------------------------------------------------------------------------------------------ dtypes
DTYPE_BYTES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "int8": 1,
}
"""Bytes per element of the dtypes a KV cache is kept in; names as in `torch` (`torch.bfloat16`)."""

DTYPE_ALIASES: dict[str, str] = {
    "fp64": "float64",
    "double": "float64",
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "fp8": "float8_e4m3fn",
    "float8": "float8_e4m3fn",
    "e4m3": "float8_e4m3fn",
    "e5m2": "float8_e5m2",
}


def canonical_dtype(name: str) -> str:
    """`"bf16"` -> `"bfloat16"`; raises AnalysisError naming the known dtypes."""
    key = name.strip().lower().removeprefix("torch.")
    key = DTYPE_ALIASES.get(key, key)
    if key not in DTYPE_BYTES:
        known = ", ".join([*DTYPE_BYTES, *DTYPE_ALIASES])
        raise AnalysisError(f"unknown dtype {name!r} (known: {known})")
    return key


def dtype_bytes(name: str) -> int:
    return DTYPE_BYTES[canonical_dtype(name)]


# ------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class LayerParams:
    """Parameters of one block. `mlp_active` is the part of `mlp` one token uses (all of it when dense)."""

    attention: int
    mlp: int
    norms: int
    mlp_active: int

    @property
    def total(self) -> int:
        return self.attention + self.mlp + self.norms

    @property
    def active(self) -> int:
        return self.attention + self.mlp_active + self.norms


@dataclass(frozen=True)
class ParamCounts:
    """Parameters by place. `head` is 0 when the output head is tied to the token embedding."""

    token_embedding: int
    position_embedding: int
    head: int
    embedding_norm: int
    layers: tuple[LayerParams, ...]
    final_norm: int
    vision: int = 0  # the vision tower and projector of a vision-language model

    @property
    def embeddings(self) -> int:
        """Token and learned-position tables and an untied head: the vocabulary/position-sized matrices."""
        return self.token_embedding + self.position_embedding + self.head

    @property
    def layers_total(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def total(self) -> int:
        return self.embeddings + self.embedding_norm + self.layers_total + self.final_norm + self.vision

    @property
    def non_embedding(self) -> int:
        return self.total - self.embeddings

    @property
    def active(self) -> int:
        """Parameters one token's forward pass uses (= total for dense specs)."""
        inactive = sum(layer.total - layer.active for layer in self.layers)
        return self.total - inactive


def norm_params(spec: Spec, dim: int) -> int:
    """A norm over `dim` features: a weight, plus a bias for LayerNorm with bias."""
    return dim * (2 if spec.norm.kind == "layernorm" and spec.norm.bias else 1)


def latent_attention_params(attn: LatentAttentionSpec, d: int) -> int:
    """MLA: q (plain, or down + latent norm + up), kv down (latent + shared rope key), latent norm, kv up, o."""
    heads, qk = attn.heads, attn.nope_dim + attn.rope_dim
    if attn.q_rank is None:
        count = d * heads * qk
    else:
        count = d * attn.q_rank + attn.bias * attn.q_rank + attn.q_rank + attn.q_rank * heads * qk
    down = attn.kv_rank + attn.rope_dim
    count += d * down + attn.bias * down + attn.kv_rank + attn.kv_rank * heads * (attn.nope_dim + attn.v_dim)
    return count + heads * attn.v_dim * d + attn.bias * d


def attention_params(spec: Spec, layer: int) -> int:
    """q, k, v, o projections with their biases, plus per-head qk-norm weights."""
    if isinstance(spec.attention, LatentAttentionSpec):
        return latent_attention_params(spec.attention, spec.d_model)
    attn, d = spec.attention, spec.d_model
    q_width, kv_width = attn.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    count = d * q_width + 2 * d * kv_width + q_width * d
    count += q_width * attn.bias.q + kv_width * attn.bias.k + kv_width * attn.bias.v + d * attn.bias.o
    if attn.qk_norm:
        count += 2 * spec.head_dim  # RMSNorm weights of q and k, shared by the heads
    return count


def moe_params(spec: Spec) -> tuple[int, int]:
    """(total, active per token) of one MoE layer: router, routed experts (top_k of them active), shared
    experts and their gate. Expert projections have no biases."""
    moe, d = spec.moe, spec.d_model
    assert moe is not None and moe.d_ff is not None and moe.shared_d_ff is not None
    projections = 3 if spec.mlp.activation in GATED_ACTIVATIONS else 2
    expert = projections * d * moe.d_ff
    always = moe.experts * d + projections * d * moe.shared_experts * moe.shared_d_ff + d * moe.shared_gate
    return always + moe.experts * expert, always + moe.top_k * expert


def mlp_params(spec: Spec, layer: int) -> tuple[int, int]:
    """(total, active per token) of a layer's MLP. Gated MLPs have gate, up and down; plain ones up and down."""
    if spec.is_moe_layer(layer):
        return moe_params(spec)
    d, ff = spec.d_model, spec.mlp.d_ff
    gated = spec.mlp.activation in GATED_ACTIVATIONS
    projections = 3 if gated else 2
    count = projections * d * ff
    if spec.mlp.bias:
        count += (projections - 1) * ff + d
    return count, count


def block_norms(spec: Spec) -> int:
    """Norms per block: 2 for pre/post-norm, 4 for sandwich, 1 or 2 for parallel."""
    kind = spec.block.kind
    if kind == "parallel":
        return spec.block.parallel_norms
    return 4 if kind == "sandwich" else 2


def decoder_layer_params(spec: Spec) -> LayerParams:
    """A decoder block of an encoder-decoder: self-attention, cross-attention, MLP and three norms. qk_norm
    applies to self-attention only: the compiler's cross-attention has no q/k norms."""
    mlp_total, mlp_active = mlp_params(spec, 0)
    qk_norm = 2 * spec.head_dim if getattr(spec.attention, "qk_norm", False) else 0
    return LayerParams(
        attention=2 * attention_params(spec, 0) - qk_norm,
        mlp=mlp_total,
        norms=3 * norm_params(spec, spec.d_model),
        mlp_active=mlp_active,
    )


def layer_params(spec: Spec, layer: int) -> LayerParams:
    mlp_total, mlp_active = mlp_params(spec, layer)
    return LayerParams(
        attention=attention_params(spec, layer),
        mlp=mlp_total,
        norms=block_norms(spec) * norm_params(spec, spec.d_model),
        mlp_active=mlp_active,
    )


ANALYSED_FIELDS = frozenset(
    {
        "name",
        "description",
        "structure",
        "vocab_size",
        "d_model",
        "n_layers",
        "context_length",
        "attention",
        "position",
        "norm",
        "block",
        "mlp",
        "embeddings",
        "tokens",
        "vision",
        "moe",
        "n_decoder_layers",
    }
)
"""Top-level spec fields the formulas here account for. A spec that sets any other field away from its default
(a section added to the schema later, e.g. `moe`) is refused rather than given wrong numbers."""


def check_supported(spec: Spec) -> None:
    """Raise AnalysisError for specs whose figures these formulas would get wrong."""
    if spec.structure not in ("decoder", "encoder-decoder", "glm"):  # glm: a decoder (causal-count FLOPs)
        raise AnalysisError(f"{spec.name}: analysis of structure {spec.structure!r} is not implemented yet")
    if spec.attention.kind not in ("mha", "mla"):
        raise AnalysisError(f"{spec.name}: analysis of attention kind {spec.attention.kind!r} is not implemented yet")
    for name, info in type(spec).model_fields.items():
        if name not in ANALYSED_FIELDS and getattr(spec, name) != info.get_default(call_default_factory=True):
            raise AnalysisError(f"{spec.name}: analysis of the {name!r} section is not implemented yet")


def vision_params(spec: Spec) -> int:
    """The vision section's parameters: a ViT tower (patch embedding, class token, position table, blocks of
    attention + MLP + two LayerNorms, pre/post norms) and the projector. External towers and pooling own none.
    The figures per token below are the text model's: image tokens also cost the tower once per image
    (`vision_flops_per_image`)."""
    vision = spec.vision
    if vision is None:
        return 0
    from archspec.spec.schema import ViTSpec

    tower, count = vision.tower, 0
    width = tower.width
    if isinstance(tower, ViTSpec):
        grid, w = tower.image_size // tower.patch_size, tower.width
        count += tower.channels * tower.patch_size**2 * w + w * tower.patch_bias
        count += w * tower.class_token + (grid * grid + tower.class_token) * w
        count += 2 * w * (tower.pre_norm + tower.post_norm)
        block = 4 * w * w + 2 * w * tower.d_ff + 2 * 2 * w + (5 * w + tower.d_ff) * tower.bias
        count += tower.depth * block
        width = w * len(vision.feature_layers)
    dims = [width] + [spec.d_model] * (vision.projector.depth or 1)
    return count + sum(a * b + b * vision.projector.bias for a, b in zip(dims[:-1], dims[1:], strict=True))


def param_counts(spec: Spec) -> ParamCounts:
    """Exact parameter counts; equal to `sum(p.numel() for p in archspec.build(spec, device="meta").parameters())`."""
    check_supported(spec)
    d = spec.d_model
    if spec.structure == "encoder-decoder":
        return _encoder_decoder_params(spec)
    return ParamCounts(
        token_embedding=spec.vocab_size * d,
        position_embedding=spec.context_length * d if isinstance(spec.position, LearnedPositionSpec) else 0,
        head=0 if spec.embeddings.tied else spec.vocab_size * d,
        embedding_norm=norm_params(spec, d) if spec.embeddings.norm else 0,
        layers=tuple(layer_params(spec, index) for index in range(spec.n_layers)),
        vision=vision_params(spec),
        final_norm=0 if spec.block.kind in ("post-norm", "deepnorm") else norm_params(spec, d),
    )


def _encoder_decoder_params(spec: Spec) -> ParamCounts:
    """T5: one shared embedding, encoder blocks then decoder blocks (in `layers`), a relative-bias table of
    buckets x heads per stack (counted as the position embedding) and a final norm per stack."""
    d, position = spec.d_model, spec.position
    buckets = getattr(position, "buckets", 0)
    decoder_layers = spec.n_decoder_layers or spec.n_layers
    return ParamCounts(
        token_embedding=spec.vocab_size * d,
        position_embedding=2 * buckets * spec.attention.heads,
        head=0 if spec.embeddings.tied else spec.vocab_size * d,
        embedding_norm=0,
        layers=tuple(layer_params(spec, i) for i in range(spec.n_layers))
        + tuple(decoder_layer_params(spec) for _ in range(decoder_layers)),
        final_norm=2 * norm_params(spec, d),
    )


# ------------------------------------------------------------------------------------------------ FLOPs
def attention_matmul_weights(spec: Spec, layer: int) -> int:
    """Weights of the q, k, v and o projections (what a token multiplies by in attention).

    MLA: every projection including kv_up, which archspec applies once per token of the forward pass (the
    latent is up-projected, not absorbed into q and o); latent-norm weights are not matmuls.
    """
    attn = spec.attention
    if isinstance(attn, LatentAttentionSpec):
        norms = attn.kv_rank + (attn.q_rank or 0)
        biases = attn.bias * ((attn.q_rank or 0) + attn.kv_rank + attn.rope_dim + spec.d_model)
        return latent_attention_params(attn, spec.d_model) - norms - biases
    q_width, kv_width = spec.attention.heads * spec.head_dim, spec.kv_heads * spec.head_dim
    return spec.d_model * (2 * q_width + 2 * kv_width)


def mlp_matmul_weights(spec: Spec, layer: int) -> int:
    """Weights of the MLP projections one token goes through (MoE: router, its top_k experts, shared ones)."""
    if spec.is_moe_layer(layer):
        return moe_params(spec)[1]
    projections = 3 if spec.mlp.activation in GATED_ACTIVATIONS else 2
    return projections * spec.d_model * spec.mlp.d_ff


def head_matmul_weights(spec: Spec) -> int:
    return spec.vocab_size * spec.d_model


def attended_keys(context: int, window: int | None, count: AttentionCount = "causal") -> int:
    """(query, key) pairs of one head over a sequence of `context` tokens; see the module docstring."""
    if count == "full":
        return context * context
    if window is None or window >= context:
        return context * (context + 1) // 2
    return window * (window + 1) // 2 + (context - window) * window


def attention_score_value_flops(spec: Spec, layer: int, context: int, count: AttentionCount = "causal") -> int:
    """FLOPs of q.k scores and the weighted sum of values of one layer over a whole sequence."""
    attn = spec.attention
    qk_dim, v_dim = spec.head_dim, attn.v_dim if isinstance(attn, LatentAttentionSpec) else spec.head_dim
    pairs = attended_keys(context, spec.window_for_layer(layer), count)
    return 2 * spec.attention.heads * (qk_dim + v_dim) * pairs


@dataclass(frozen=True)
class FlopCounts:
    """Forward FLOPs of one sequence of `context` tokens, split into matmul and attention score/value terms."""

    context: int
    count: AttentionCount
    matmul_per_token: int
    attention_per_sequence: int
    vision_per_image: int = 0  # tower + projector for one image (not in the per-token figures)

    @property
    def forward_per_sequence(self) -> int:
        return self.matmul_per_token * self.context + self.attention_per_sequence

    @property
    def attention_per_token(self) -> float:
        return self.attention_per_sequence / self.context

    @property
    def forward_per_token(self) -> float:
        return self.forward_per_sequence / self.context

    @property
    def train_per_token(self) -> float:
        return 3 * self.forward_per_token


def flop_counts(spec: Spec, context: int | None = None, count: AttentionCount = "causal") -> FlopCounts:
    """Forward FLOPs at `context` (default: the spec's context length). `count`: "causal" or "full" keys."""
    check_supported(spec)
    context = check_context(spec, context)
    if spec.structure == "encoder-decoder":
        return _encoder_decoder_flops(spec, context, count)
    matmul_weights = head_matmul_weights(spec) + sum(
        attention_matmul_weights(spec, i) + mlp_matmul_weights(spec, i) for i in range(spec.n_layers)
    )
    attention = sum(attention_score_value_flops(spec, i, context, count) for i in range(spec.n_layers))
    return FlopCounts(context, count, 2 * matmul_weights, attention, vision_flops_per_image(spec))


def vision_flops_per_image(spec: Spec) -> int:
    """Forward FLOPs of one image: patch embedding, the tower blocks up to the deepest feature layer read
    (bidirectional attention over all patch tokens and the class token), and the projector over the features it
    reads. External towers count the projector only; pooling (an average) and norms are not matmuls."""
    vision = spec.vision
    if vision is None:
        return 0
    from archspec.spec.schema import ViTSpec

    tower, flops = vision.tower, 0
    if isinstance(tower, ViTSpec):
        w, patches = tower.width, (tower.image_size // tower.patch_size) ** 2
        tokens = patches + tower.class_token
        blocks_run = max(layer % (tower.depth + 1) for layer in vision.feature_layers)
        flops += 2 * patches * tower.channels * tower.patch_size**2 * w
        per_block = 2 * tokens * (4 * w * w + 2 * w * tower.d_ff) + 2 * 2 * w * tokens * tokens
        flops += blocks_run * per_block
        width = w * len(vision.feature_layers)
    else:
        width = tower.width
    dims = [width] + [spec.d_model] * (vision.projector.depth or 1)
    return flops + 2 * vision.feature_tokens * sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))


def _encoder_decoder_flops(spec: Spec, context: int, count: AttentionCount) -> FlopCounts:
    """Encoder-decoder, with `context` source and `context` target tokens; per token means per target token
    (whose forward pass includes encoding one source token). Encoder self-attention is bidirectional (L^2
    pairs), decoder self-attention causal, cross-attention every target token against every source token."""
    decoder_layers = spec.n_decoder_layers or spec.n_layers
    attention = attention_matmul_weights(spec, 0)
    mlp = mlp_matmul_weights(spec, 0)
    matmul = spec.n_layers * (attention + mlp) + decoder_layers * (2 * attention + mlp) + head_matmul_weights(spec)
    per_pair = 2 * spec.attention.heads * 2 * spec.head_dim
    pairs = spec.n_layers * context * context + decoder_layers * (
        attended_keys(context, None, count) + context * context
    )
    return FlopCounts(context, count, 2 * matmul, per_pair * pairs)


# ------------------------------------------------------------------------------------------------ KV cache
def kv_elements_per_token(spec: Spec, layer: int) -> int:
    """Cached numbers per token of one layer: a key and a value vector per kv head (MLA: the latent and the
    shared rope key)."""
    attn = spec.attention
    if isinstance(attn, LatentAttentionSpec):
        return attn.kv_rank + attn.rope_dim
    return 2 * spec.kv_heads * spec.head_dim


@dataclass(frozen=True)
class KVCacheFigures:
    dtype: str
    bytes_per_token: int
    context: int
    batch: int

    @property
    def bytes_total(self) -> int:
        return self.bytes_per_token * self.context * self.batch


def kv_cache(spec: Spec, context: int | None = None, batch: int = 1, dtype: str = "bfloat16") -> KVCacheFigures:
    """KV-cache size per token and for `batch` sequences of `context` positions, in `dtype`."""
    check_supported(spec)
    context = check_context(spec, context)
    if batch < 1:
        raise AnalysisError(f"batch must be at least 1, got {batch}")
    name = canonical_dtype(dtype)
    if spec.structure == "encoder-decoder":  # per decoder layer: self-attention K/V + cached cross K/V
        elements = 2 * (spec.n_decoder_layers or spec.n_layers) * kv_elements_per_token(spec, 0)
    else:
        elements = sum(kv_elements_per_token(spec, i) for i in range(spec.n_layers))
    return KVCacheFigures(name, elements * DTYPE_BYTES[name], context, batch)


def check_context(spec: Spec, context: int | None) -> int:
    if context is None:
        return spec.context_length
    if context < 1:
        raise AnalysisError(f"context must be at least 1, got {context}")
    if isinstance(spec.position, LearnedPositionSpec) and context > spec.context_length:
        raise AnalysisError(
            f"{spec.name}: context {context} exceeds its learned position table ({spec.context_length} positions)"
        )
    return context


# ------------------------------------------------------------------------------------------------ all of it
@dataclass(frozen=True)
class Analysis:
    """Everything `archspec info` reports about one spec."""

    spec: Spec
    params: ParamCounts
    flops: FlopCounts
    kv: KVCacheFigures


def analyse(
    spec: Spec,
    context: int | None = None,
    batch: int = 1,
    dtype: str = "bfloat16",
    count: AttentionCount = "causal",
) -> Analysis:
    """Parameters, FLOPs at `context` (default: the spec's context length) and the KV cache for `batch`."""
    return Analysis(spec, param_counts(spec), flop_counts(spec, context, count), kv_cache(spec, context, batch, dtype))
