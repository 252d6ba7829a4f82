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
    2 * n_layers * kv_heads * head_dim * bytes(dtype). For a context and batch: bytes per token * context *
    batch, which is what archspec's static cache allocates (`max_len` positions in every layer). What a cache
    needs that keeps only each sliding layer's window (a rolling buffer) is counted too: a layer of window W
    holds min(context, W) positions (NoPE and full layers: all of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from archspec.compiler import plan as plan_of
from archspec.plan import Call, Layers, Value
from archspec.spec.errors import ArchspecError
from archspec.spec.schema import Spec

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


# The plan's leaves that own parameters, and how many each has (their constructors' arguments are numbers).
def _linear(node: Call) -> int:
    d_in, d_out = node.positional(0), node.positional(1)
    return d_in * d_out + d_out * bool(node.get("bias", True))


def _leaf_params(node: Call) -> int:
    """Parameters a call creates itself (not through argument calls)."""
    match node.component:
        case "nn.Linear":
            return _linear(node)
        case "nn.Embedding":
            return node.positional(0) * node.positional(1)
        case "RMSNorm" | "OffsetRMSNorm":
            return node.positional(0)
        case "nn.LayerNorm":
            return node.positional(0) * (1 + bool(node.get("bias", True))) * bool(node.get("elementwise_affine", True))
        case "HeadNorm":
            return node.positional(1) * node.positional(2)
        case "nn.Conv2d":
            c_in, c_out, kernel = node.positional(0), node.positional(1), node["kernel_size"]
            return c_in * c_out * kernel * kernel + c_out * bool(node.get("bias", True))
        case "Experts":
            experts, d, d_ff = node.positional(0), node.positional(1), node.positional(2)
            widths = 2 * d_ff if node["gated"] else d_ff  # gate and up, or up
            biases = experts * (widths + d) * bool(node.get("bias", False))
            return experts * (3 if node["gated"] else 2) * d * d_ff + biases
        case "Router":
            return node["experts"] * (node["d_model"] + bool(node.get("bias", False)))
        case "Attention":  # its own: the sink logits, one per head
            return node["heads"] * bool(node.get("sinks", False))
        case "PatchEmbedding":
            return node["proj"].positional(1) if node["class_token"] else 0  # the class token
        case _:
            return 0


def params_of(value: Value) -> int:
    """Every parameter a plan value creates: its own and its argument calls' (stacks: every layer)."""
    if isinstance(value, Call):
        return _leaf_params(value) + sum(params_of(child) for _, child in value.args)
    if isinstance(value, Layers):
        return sum(params_of(block) * count for block, count in zip(*_kinds(value), strict=True))
    if isinstance(value, tuple):
        return sum(params_of(item) for item in value)
    return 0


def _kinds(layers: Layers) -> tuple[list[Call], list[int]]:
    counts = layers.counts()
    return [layers.kind(name) for name in counts], list(counts.values())


NORMS = ("RMSNorm", "OffsetRMSNorm", "nn.LayerNorm")


def block_params(block: Call) -> LayerParams:
    """One block: its attention(s), its MLP or MoE (and what one token of it uses), its norms."""
    attention = mlp = norms = 0
    mlp_active = 0
    for key, value in block.args:
        if not isinstance(value, Call):
            continue
        if value.component in NORMS:
            norms += params_of(value)
        elif key in ("attn", "cross_attn"):
            attention += params_of(value)
        elif key == "mlp":
            mlp += params_of(value)
            mlp_active += moe_active_params(value) if value.component == "MoE" else params_of(value)
    return LayerParams(attention=attention, mlp=mlp, norms=norms, mlp_active=mlp_active)


def moe_active_params(moe: Call) -> int:
    """An MoE's parameters one token uses: the router, its top_k routed experts, the shared experts and gate."""
    router, experts = moe["router"], moe["experts"]
    always = params_of(moe) - params_of(experts)
    return always + params_of(experts) * router["top_k"] // experts.positional(0)


def model_call(spec: Spec) -> Call:
    """The root call of the spec's plan."""
    return plan_of(spec).model


def param_counts(spec: Spec) -> ParamCounts:
    """Exact parameter counts; equal to `sum(p.numel() for p in archspec.build(spec, device="meta").parameters())`."""
    model = model_call(spec)
    tied = bool(model.get("tied", False))
    head = 0 if tied else params_of(model["lm_head"])
    if model.component == "EncoderDecoderLM":
        encoder, decoder = model["encoder"], model["decoder"]
        blocks = [block_params(b) for b in encoder["layers"].per_layer() + decoder["layers"].per_layer()]
        return ParamCounts(
            token_embedding=params_of(model["embed"]),
            position_embedding=params_of(encoder["position_bias"]) + params_of(decoder["position_bias"]),
            head=head,
            embedding_norm=0,
            layers=tuple(blocks),
            final_norm=params_of(encoder["final_norm"]) + params_of(decoder["final_norm"]),
        )
    vision = sum(params_of(model.get(key)) for key in ("vision_tower", "projector"))
    return ParamCounts(
        token_embedding=params_of(model["embed"]),
        position_embedding=params_of(model.get("pos_embed")),
        head=head,
        embedding_norm=params_of(model.get("embed_norm")),
        layers=tuple(block_params(block) for block in model["layers"].per_layer()),
        vision=vision,
        final_norm=params_of(model["final_norm"]),
    )


# ------------------------------------------------------------------------------------------------ FLOPs
def matmul_weights(value: Value) -> int:
    """Weights of the matrix multiplies one token goes through in a plan value: every nn.Linear (MoE: the router,
    the top_k experts it is sent to, the shared experts). Biases, norms and embedding lookups are not matmuls.
    MLA: every projection including kv_up, which archspec applies once per token of the forward pass (the latent
    is up-projected, not absorbed into q and o)."""
    if isinstance(value, Call):
        if value.component == "nn.Linear":
            return value.positional(0) * value.positional(1)
        if value.component == "Router":
            return value["experts"] * value["d_model"]
        if value.component == "Experts":  # the matrices, not their biases
            experts, d, d_ff = value.positional(0), value.positional(1), value.positional(2)
            return experts * (3 if value["gated"] else 2) * d * d_ff
        if value.component == "MoE":
            experts = value["experts"]
            per_token = matmul_weights(experts) * value["router"]["top_k"] // experts.positional(0)
            return per_token + sum(matmul_weights(child) for key, child in value.args if key != "experts")
        return sum(matmul_weights(child) for _, child in value.args)
    if isinstance(value, tuple):
        return sum(matmul_weights(item) for item in value)
    return 0


def _attention_dims(attn: Call) -> tuple[int, int, int]:
    """(heads, q.k width, value width) of an attention call."""
    if attn.component == "LatentAttention":
        return attn["heads"], attn["nope_dim"] + attn["rope_dim"], attn["v_dim"]
    return attn["heads"], attn["head_dim"], attn["head_dim"]


def layer_windows(model: Call) -> list[int | None]:
    """Each decoder layer's sliding window (None: full causal), as the plan's attention paths hold them."""
    paths = model["attention"]
    windows = paths.get("windows")
    return list(windows) if windows else [None] * paths["layers"]


def attended_keys(context: int, window: int | None, count: AttentionCount = "causal") -> int:
    """(query, key) pairs of one head over a sequence of `context` tokens; see the module docstring."""
    if count == "full":
        return context * context
    if window is None or window >= context:
        return context * (context + 1) // 2
    return window * (window + 1) // 2 + (context - window) * window


def attention_score_value_flops(attn: Call, window: int | None, context: int, count: AttentionCount = "causal") -> int:
    """FLOPs of q.k scores and the weighted sum of values of one attention over a whole sequence."""
    heads, qk_dim, v_dim = _attention_dims(attn)
    return 2 * heads * (qk_dim + v_dim) * attended_keys(context, window, count)


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
    context = check_context(spec, context)
    model = model_call(spec)
    if model.component == "EncoderDecoderLM":
        return _encoder_decoder_flops(model, context, count)
    blocks = model["layers"].per_layer()
    weights = matmul_weights(model["lm_head"]) + sum(matmul_weights(block) for block in blocks)
    windows = layer_windows(model)
    attention = sum(
        attention_score_value_flops(block["attn"], window, context, count)
        for block, window in zip(blocks, windows, strict=True)
    )
    return FlopCounts(context, count, 2 * weights, attention, vision_flops_per_image(model))


def vision_flops_per_image(model: Call) -> int:
    """Forward FLOPs of one image: patch embedding, the tower blocks up to the deepest feature layer read
    (bidirectional attention over all patch tokens and the class token), and the projector over the features it
    reads. External towers count the projector only; pooling (an average) and norms are not matmuls."""
    if model.component != "VisionLanguageLM":
        return 0
    feature_tokens = model["feature_shape"][0]
    flops = 0
    tower = model.get("vision_tower")
    if tower is not None:
        embed = tower["embed"]
        conv = embed["proj"]
        kernel, tokens = conv["kernel_size"], embed["positions"].positional(0)
        patches = tokens - bool(embed["class_token"])
        flops += 2 * patches * conv.positional(0) * kernel * kernel * conv.positional(1)
        blocks = tower["layers"].per_layer()[: max(tower["feature_layers"])]
        for block in blocks:
            flops += 2 * tokens * matmul_weights(block) + attention_score_value_flops(
                block["attn"], None, tokens, "full"
            )
    return flops + 2 * feature_tokens * matmul_weights(model["projector"])


def _encoder_decoder_flops(model: Call, context: int, count: AttentionCount) -> FlopCounts:
    """Encoder-decoder, with `context` source and `context` target tokens; per token means per target token
    (whose forward pass includes encoding one source token). Encoder self-attention is bidirectional (L^2
    pairs), decoder self-attention causal, cross-attention every target token against every source token."""
    encoder, decoder = model["encoder"]["layers"].per_layer(), model["decoder"]["layers"].per_layer()
    weights = sum(matmul_weights(block) for block in encoder + decoder) + matmul_weights(model["lm_head"])
    attention = sum(attention_score_value_flops(block["attn"], None, context, "full") for block in encoder)
    for block in decoder:
        attention += attention_score_value_flops(block["attn"], None, context, count)
        attention += attention_score_value_flops(block["cross_attn"], None, context, "full")
    return FlopCounts(context, count, 2 * weights, attention)


# ------------------------------------------------------------------------------------------------ KV cache
def kv_elements_per_token(attn: Call) -> int:
    """Cached numbers per token of one attention: a key and a value vector per kv head (MLA: the latent and the
    shared rope key)."""
    if attn.component == "LatentAttention":
        return attn["kv_rank"] + attn["rope_dim"]
    return 2 * attn["kv_heads"] * attn["head_dim"]


@dataclass(frozen=True)
class KVCacheFigures:
    dtype: str
    bytes_per_token: int
    context: int
    batch: int
    bytes_windowed: int = 0  # windows capped (see the module docstring)

    @property
    def bytes_total(self) -> int:
        return self.bytes_per_token * self.context * self.batch


def kv_cache(spec: Spec, context: int | None = None, batch: int = 1, dtype: str = "bfloat16") -> KVCacheFigures:
    """KV-cache size per token and for `batch` sequences of `context` positions, in `dtype`."""
    context = check_context(spec, context)
    if batch < 1:
        raise AnalysisError(f"batch must be at least 1, got {batch}")
    name = canonical_dtype(dtype)
    model = model_call(spec)
    if model.component == "EncoderDecoderLM":  # per decoder layer: self-attention K/V + cached cross K/V
        elements = sum(
            kv_elements_per_token(block["attn"]) + kv_elements_per_token(block["cross_attn"])
            for block in model["decoder"]["layers"].per_layer()
        )
        windowed = elements * context
    else:
        layers = model["layers"].per_layer()
        elements = sum(kv_elements_per_token(block["attn"]) for block in layers)
        windowed = sum(
            kv_elements_per_token(block["attn"]) * min(context, window or context)
            for block, window in zip(layers, layer_windows(model), strict=True)
        )
    size = DTYPE_BYTES[name]
    return KVCacheFigures(name, elements * size, context, batch, windowed * size * batch)


def check_context(spec: Spec, context: int | None) -> int:
    if context is None:
        return spec.context_length
    if context < 1:
        raise AnalysisError(f"context must be at least 1, got {context}")
    table = model_call(spec).get("pos_embed")
    if table is not None and context > table.positional(0):
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
