"""Spec -> modules. The one place that reads a spec and chooses components; components only see numbers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from archspec.nn.activations import ACTIVATIONS
from archspec.nn.attention import Attention
from archspec.nn.blocks import DeepNormBlock, ParallelBlock, PostNormBlock, PreNormBlock
from archspec.nn.encoder_decoder import CrossAttention, CrossAttentionBlock, EncoderDecoderLM, Stack
from archspec.nn.glm import BlockRotaryEmbedding
from archspec.nn.mla import LatentAttention
from archspec.nn.mlp import MLP
from archspec.nn.models import DecoderLM
from archspec.nn.moe import Experts, MoE, Router
from archspec.nn.norms import RMSNorm
from archspec.nn.positions import RelativePositionBias, alibi_slopes
from archspec.nn.rope import (
    RotaryEmbedding,
    linear_scaled_frequencies,
    llama3_scaled_frequencies,
    rope_frequencies,
    yarn_attention_factor,
    yarn_mscale,
    yarn_scaled_frequencies,
)
from archspec.nn.vision import VISION_ACTIVATIONS, PatchEmbedding, PatchPool, Projector, VisionTower
from archspec.nn.vlm import VisionLanguageLM
from archspec.spec.schema import (
    GATED_ACTIVATIONS,
    AlibiSpec,
    DynamicScaling,
    LatentAttentionSpec,
    LearnedPositionSpec,
    LinearScaling,
    Llama3Scaling,
    RelativeBiasSpec,
    RopeSpec,
    Spec,
    ViTSpec,
    YarnScaling,
)


def build(spec: Spec, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DecoderLM:
    """Compile a spec into a module. `device="meta"` allocates nothing (for summaries and parameter counts).

    Parameters are created directly in `dtype`; RoPE frequencies stay float32 whatever the dtype.
    """
    with torch.device(device or "cpu"), _default_dtype(dtype):
        model = _encoder_decoder(spec) if spec.structure == "encoder-decoder" else _decoder(spec)
        if torch.device(device or "cpu").type != "meta":
            init_weights(model)
            if spec.block.kind == "deepnorm":
                deepnorm_init(model, spec.block.beta or 1.0)
    model.spec = spec  # type: ignore[assignment]
    return model


def materialize_buffers(model: DecoderLM, device: torch.device | str) -> None:
    """Recompute the non-learned buffers (RoPE frequencies, ALiBi slopes) of a model built on the meta device
    whose parameters were then assigned real tensors (e.g. by `load_hf_weights`)."""
    spec: Spec = model.spec  # type: ignore[assignment]
    with torch.device(device):
        if getattr(model, "rotary", None) is not None:
            model.rotary = _rotary(spec)
        if getattr(model, "alibi_slopes", None) is not None:
            model.alibi_slopes = alibi_slopes(spec.attention.heads).to(device)


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """GPT-2-style initialisation: N(0, std) for matrices and embeddings, zero biases, unit norm weights."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, Experts | Router):
            for param in module.parameters(recurse=False):
                nn.init.normal_(param, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


# ------------------------------------------------------------------------------------------- wiring
def _decoder(spec: Spec) -> DecoderLM:
    position = spec.position
    model_class, vision = (VisionLanguageLM, _vision(spec)) if spec.vision is not None else (DecoderLM, {})
    return model_class(
        embed=_embedding(spec.vocab_size, spec.d_model),
        layers=[_block(spec, index) for index in range(spec.n_layers)],
        final_norm=nn.Identity() if spec.block.kind in ("post-norm", "deepnorm") else _norm(spec, spec.d_model),
        lm_head=nn.Linear(spec.d_model, spec.vocab_size, bias=False),
        windows=[spec.window_for_layer(index) for index in range(spec.n_layers)],
        context_length=spec.context_length,
        pos_embed=_embedding(spec.context_length, spec.d_model) if isinstance(position, LearnedPositionSpec) else None,
        embed_norm=_norm(spec, spec.d_model) if spec.embeddings.norm else None,
        rotary=_rotary(spec) if isinstance(position, RopeSpec) else None,
        alibi_slopes=alibi_slopes(spec.attention.heads) if isinstance(position, AlibiSpec) else None,
        tied=spec.embeddings.tied,
        **_router_loss_options(spec),
        eos_token_id=spec.tokens.eos,
        pad_token_id=spec.tokens.pad,
        prefix_lm=spec.structure == "glm",
        block_positions=isinstance(position, RopeSpec) and position.block_positions,
        **vision,
    )


def _embedding(rows: int, dim: int) -> nn.Embedding:
    """An embedding without nn.Embedding's own normal_ init: `init_weights` initialises it anyway, and on the meta
    device that init would import torch._dynamo (seconds of `archspec build` for nothing)."""
    return nn.Embedding(rows, dim, _weight=torch.empty(rows, dim))


def _router_loss_options(spec: Spec) -> dict[str, Any]:
    if spec.moe is None:
        return {}
    router = spec.moe.router
    return {"aux_loss": router.aux_loss, "aux_loss_coef": router.aux_loss_coef, "z_loss_coef": router.z_loss_coef}


def _block(spec: Spec, index: int) -> nn.Module:
    attn = _latent_attention(spec) if isinstance(spec.attention, LatentAttentionSpec) else _attention(spec)
    mlp = _moe(spec) if spec.is_moe_layer(index) else _mlp(spec)
    kind = spec.block.kind
    if kind == "deepnorm":
        alpha = spec.block.alpha or 1.0
        return DeepNormBlock(attn, mlp, _norm(spec, spec.d_model), _norm(spec, spec.d_model), alpha)
    if kind == "post-norm":
        return PostNormBlock(attn, mlp, _norm(spec, spec.d_model), _norm(spec, spec.d_model))
    if kind == "parallel":
        second = _norm(spec, spec.d_model) if spec.block.parallel_norms == 2 else None
        return ParallelBlock(attn, mlp, _norm(spec, spec.d_model), second)
    sandwich = kind == "sandwich"
    return PreNormBlock(
        attn,
        mlp,
        attn_norm=_norm(spec, spec.d_model),
        mlp_norm=_norm(spec, spec.d_model),
        attn_out_norm=_norm(spec, spec.d_model) if sandwich else None,
        mlp_out_norm=_norm(spec, spec.d_model) if sandwich else None,
        residual_from_norm=spec.block.residual_from_norm,
    )


def _attention(spec: Spec) -> Attention:
    attn = spec.attention
    bias = (attn.bias.q, attn.bias.k, attn.bias.v, attn.bias.o)
    interleaved = isinstance(spec.position, RopeSpec) and spec.position.pairing == "interleaved"
    return Attention(
        spec.d_model,
        attn.heads,
        spec.kv_heads,
        spec.head_dim,
        bias=bias,
        qk_norm_eps=spec.norm.eps if attn.qk_norm else None,
        scale=attn.scale,
        rope_interleaved=interleaved,
    )


def _latent_attention(spec: Spec) -> LatentAttention:
    attn = spec.attention
    assert isinstance(attn, LatentAttentionSpec) and isinstance(spec.position, RopeSpec)
    scale = attn.scale
    scaling = spec.position.scaling
    if scale is None:  # DeepSeek: the YaRN temperature correction enters the softmax scale squared
        scale = (attn.nope_dim + attn.rope_dim) ** -0.5
        if isinstance(scaling, YarnScaling) and scaling.mscale_all_dim:
            scale *= yarn_mscale(scaling.factor, scaling.mscale_all_dim) ** 2
    return LatentAttention(
        spec.d_model,
        attn.heads,
        attn.q_rank,
        attn.kv_rank,
        attn.nope_dim,
        attn.rope_dim,
        attn.v_dim,
        bias=attn.bias,
        latent_norm_eps=attn.latent_norm_eps,
        scale=scale,
        rope_interleaved=spec.position.pairing == "interleaved",
    )


def _moe(spec: Spec) -> MoE:
    moe = spec.moe
    assert moe is not None and moe.d_ff is not None and moe.shared_d_ff is not None
    router = moe.router
    name = spec.mlp.activation
    activation = ACTIVATIONS[GATED_ACTIVATIONS.get(name, name)]
    gated = name in GATED_ACTIVATIONS
    shared = None
    if moe.shared_experts:
        shared = MLP(spec.d_model, moe.shared_experts * moe.shared_d_ff, activation, gated=gated, bias=False)
    return MoE(
        Router(
            spec.d_model,
            moe.experts,
            moe.top_k,
            scoring=router.scoring,
            renormalize=router.renormalize,
            scale=router.scale,
            groups=router.groups,
            top_groups=router.top_groups or router.groups,
            group_score=router.group_score,
            correction_bias=router.correction_bias,
        ),
        Experts(moe.experts, spec.d_model, moe.d_ff, activation, gated),
        shared=shared,
        shared_gate=nn.Linear(spec.d_model, 1, bias=False) if moe.shared_gate else None,
        jitter=router.jitter,
    )


def _mlp(spec: Spec) -> MLP:
    name = spec.mlp.activation
    gated = name in GATED_ACTIVATIONS
    activation = ACTIVATIONS[GATED_ACTIVATIONS.get(name, name)]
    return MLP(spec.d_model, spec.mlp.d_ff, activation, gated=gated, bias=spec.mlp.bias)


def _norm(spec: Spec, dim: int) -> nn.Module:
    if spec.norm.kind == "rmsnorm":
        return RMSNorm(dim, spec.norm.eps)
    return nn.LayerNorm(dim, eps=spec.norm.eps, bias=bool(spec.norm.bias))


def _rotary(spec: Spec) -> RotaryEmbedding | BlockRotaryEmbedding:
    position = spec.position
    assert isinstance(position, RopeSpec)
    dim, theta, scaling = spec.rotary_dim, position.theta, position.scaling
    if position.block_positions:  # GLM 2-D: two RoPEs of half the width (no scaling, checked by the rules)
        with torch.device("cpu"):
            inv_freq = rope_frequencies(dim // 2, theta)
        return BlockRotaryEmbedding(inv_freq.to(torch.get_default_device()))
    interleaved = position.pairing == "interleaved"
    with torch.device("cpu"):  # frequencies are exact float32 numbers, computed on the CPU then moved
        if isinstance(scaling, LinearScaling):
            inv_freq, factor = linear_scaled_frequencies(dim, theta, scaling.factor), 1.0
        elif isinstance(scaling, Llama3Scaling):
            inv_freq = llama3_scaled_frequencies(
                dim, theta, scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor, scaling.original_context
            )
            factor = 1.0
        elif isinstance(scaling, YarnScaling):
            inv_freq = yarn_scaled_frequencies(
                dim,
                theta,
                scaling.factor,
                scaling.original_context,
                scaling.beta_fast,
                scaling.beta_slow,
                scaling.truncate,
            )
            factor = yarn_attention_factor(
                scaling.factor, scaling.mscale, scaling.mscale_all_dim, scaling.attention_factor
            )
        else:
            inv_freq, factor = rope_frequencies(dim, theta), 1.0
    dynamic = (theta, scaling.factor, spec.context_length) if isinstance(scaling, DynamicScaling) else None
    return RotaryEmbedding(inv_freq.to(torch.get_default_device()), factor, interleaved, dynamic)


@contextmanager
def _default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# ----------------------------------------------------------------------------------- encoder-decoder
def _encoder_decoder(spec: Spec) -> EncoderDecoderLM:
    """T5: a bidirectional encoder and a causal decoder with cross-attention, each with its own relative-bias
    table (computed once per stack), one shared embedding, and optionally the d_model^-0.5 head scale."""
    position = spec.position
    assert isinstance(position, RelativeBiasSpec)  # checked by the spec rules
    assert spec.n_decoder_layers is not None and spec.tokens.decoder_start is not None

    def bias(bidirectional: bool) -> RelativePositionBias:
        return RelativePositionBias(spec.attention.heads, position.buckets, position.max_distance, bidirectional)

    def norm() -> nn.Module:
        return _norm(spec, spec.d_model)

    encoder_layers = [
        PreNormBlock(_attention(spec), _mlp(spec), attn_norm=norm(), mlp_norm=norm()) for _ in range(spec.n_layers)
    ]
    decoder_layers = [
        CrossAttentionBlock(_attention(spec), _cross_attention(spec), _mlp(spec), norm(), norm(), norm())
        for _ in range(spec.n_decoder_layers)
    ]
    return EncoderDecoderLM(
        embed=_embedding(spec.vocab_size, spec.d_model),
        encoder=Stack(encoder_layers, bias(bidirectional=True), norm()),
        decoder=Stack(decoder_layers, bias(bidirectional=False), norm()),
        lm_head=nn.Linear(spec.d_model, spec.vocab_size, bias=False),
        kv_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        decoder_start=spec.tokens.decoder_start,
        head_scale=spec.d_model**-0.5 if spec.embeddings.scale_head else None,
        tied=spec.embeddings.tied,
        eos_token_id=spec.tokens.eos,
        pad_token_id=spec.tokens.pad,
    )


def _cross_attention(spec: Spec) -> CrossAttention:
    attn = spec.attention
    bias = (attn.bias.q, attn.bias.k, attn.bias.v, attn.bias.o)
    return CrossAttention(spec.d_model, attn.heads, spec.kv_heads, spec.head_dim, bias=bias, scale=attn.scale)


# ----------------------------------------------------------------------------------------- deepnorm
def deepnorm_init(model: nn.Module, beta: float) -> None:
    """DeepNet's initialisation (Wang et al. 2022, https://arxiv.org/abs/2203.00555, Algorithm 1): Xavier-normal
    weights, with gain beta for the value and output projections and the MLP, gain 1 for query and key."""
    for layer in model.layers:  # type: ignore[union-attr]
        if not isinstance(layer, DeepNormBlock):
            continue
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                gain = 1.0 if name in ("attn.q", "attn.k") else beta
                nn.init.xavier_normal_(module.weight, gain=gain)


# -------------------------------------------------------------------------------------------- vision
def _vision(spec: Spec) -> dict[str, Any]:
    """The image side of a VisionLanguageLM: tower (None when external), projector, pooling, splice numbers."""
    vision = spec.vision
    assert vision is not None and vision.tower is not None and vision.projector.depth is not None
    tower, tower_module = vision.tower, None
    if isinstance(tower, ViTSpec):
        tower_module = _vision_tower(spec)
    layers_read = len(vision.feature_layers) if isinstance(tower, ViTSpec) else 1
    width = tower.width * layers_read
    pooling = None
    if vision.pooling is not None:
        grid, side = round(vision.feature_tokens**0.5), round(vision.pooling.tokens**0.5)
        pooling = PatchPool(grid, side)
    projector = vision.projector
    return {
        "vision_tower": tower_module,
        "projector": Projector(
            width, spec.d_model, projector.depth, VISION_ACTIVATIONS[projector.activation], bias=projector.bias
        ),
        "pooling": pooling,
        "image_token": vision.image_token,
        "tokens_per_image": vision.tokens_per_image,
        "feature_shape": (vision.feature_tokens, width),
    }


def _vision_tower(spec: Spec) -> VisionTower:
    """A ViT/CLIP tower built from the library's own blocks: pre-norm, MHA with biases, plain MLP, LayerNorm."""
    vision = spec.vision
    assert vision is not None and isinstance(vision.tower, ViTSpec)
    tower = vision.tower
    width, grid = tower.width, tower.image_size // tower.patch_size

    def norm() -> nn.LayerNorm:
        return nn.LayerNorm(width, eps=tower.norm_eps)

    def block() -> PreNormBlock:
        bias = (tower.bias,) * 4
        attn = Attention(width, tower.heads, tower.heads, width // tower.heads, bias=bias)
        mlp = MLP(width, tower.d_ff, VISION_ACTIVATIONS[tower.activation], gated=False, bias=tower.bias)
        return PreNormBlock(attn, mlp, attn_norm=norm(), mlp_norm=norm())

    hidden_states = tower.depth + 1
    return VisionTower(
        PatchEmbedding(tower.channels, width, tower.patch_size, grid, tower.class_token, tower.patch_bias),
        [block() for _ in range(tower.depth)],
        norm() if tower.pre_norm else None,
        norm() if tower.post_norm else None,
        feature_layers=[layer % hidden_states for layer in vision.feature_layers],
        drop_class_token=tower.class_token and vision.feature_select == "patches",
    )
