"""Spec -> modules. The one place that reads a spec and chooses components; components only see numbers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from archspec.nn.activations import ACTIVATIONS
from archspec.nn.attention import Attention
from archspec.nn.blocks import ParallelBlock, PostNormBlock, PreNormBlock
from archspec.nn.mlp import MLP
from archspec.nn.models import DecoderLM
from archspec.nn.norms import RMSNorm
from archspec.nn.positions import alibi_slopes
from archspec.nn.rope import (
    RotaryEmbedding,
    linear_scaled_frequencies,
    llama3_scaled_frequencies,
    rope_frequencies,
    yarn_attention_factor,
    yarn_scaled_frequencies,
)
from archspec.spec.schema import (
    GATED_ACTIVATIONS,
    AlibiSpec,
    DynamicScaling,
    LearnedPositionSpec,
    LinearScaling,
    Llama3Scaling,
    RopeSpec,
    Spec,
    YarnScaling,
)


def build(spec: Spec, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> DecoderLM:
    """Compile a spec into a module. `device="meta"` allocates nothing (for summaries and parameter counts).

    Parameters are created directly in `dtype`; RoPE frequencies stay float32 whatever the dtype.
    """
    with torch.device(device or "cpu"), _default_dtype(dtype):
        model = _decoder(spec)
        if torch.device(device or "cpu").type != "meta":
            init_weights(model)
    model.spec = spec  # type: ignore[assignment]
    return model


def materialize_buffers(model: DecoderLM, device: torch.device | str) -> None:
    """Recompute the non-learned buffers (RoPE frequencies, ALiBi slopes) of a model built on the meta device
    whose parameters were then assigned real tensors (e.g. by `load_hf_weights`)."""
    spec: Spec = model.spec  # type: ignore[assignment]
    with torch.device(device):
        if model.rotary is not None:
            model.rotary = _rotary(spec)
        if model.alibi_slopes is not None:
            model.alibi_slopes = alibi_slopes(spec.attention.heads).to(device)


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """GPT-2-style initialisation: N(0, std) for matrices and embeddings, zero biases, unit norm weights."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


# ------------------------------------------------------------------------------------------- wiring
def _decoder(spec: Spec) -> DecoderLM:
    position = spec.position
    return DecoderLM(
        embed=nn.Embedding(spec.vocab_size, spec.d_model),
        layers=[_block(spec, index) for index in range(spec.n_layers)],
        final_norm=nn.Identity() if spec.block.kind == "post-norm" else _norm(spec, spec.d_model),
        lm_head=nn.Linear(spec.d_model, spec.vocab_size, bias=False),
        windows=[spec.window_for_layer(index) for index in range(spec.n_layers)],
        kv_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        context_length=spec.context_length,
        pos_embed=nn.Embedding(spec.context_length, spec.d_model) if isinstance(position, LearnedPositionSpec) else None,
        embed_norm=_norm(spec, spec.d_model) if spec.embeddings.norm else None,
        rotary=_rotary(spec) if isinstance(position, RopeSpec) else None,
        alibi_slopes=alibi_slopes(spec.attention.heads) if isinstance(position, AlibiSpec) else None,
        tied=spec.embeddings.tied,
    )


def _block(spec: Spec, index: int) -> nn.Module:
    attn, mlp = _attention(spec), _mlp(spec)
    kind = spec.block.kind
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


def _mlp(spec: Spec) -> MLP:
    name = spec.mlp.activation
    gated = name in GATED_ACTIVATIONS
    activation = ACTIVATIONS[GATED_ACTIVATIONS.get(name, name)]
    return MLP(spec.d_model, spec.mlp.d_ff, activation, gated=gated, bias=spec.mlp.bias)


def _norm(spec: Spec, dim: int) -> nn.Module:
    if spec.norm.kind == "rmsnorm":
        return RMSNorm(dim, spec.norm.eps)
    return nn.LayerNorm(dim, eps=spec.norm.eps, bias=bool(spec.norm.bias))


def _rotary(spec: Spec) -> RotaryEmbedding:
    position = spec.position
    assert isinstance(position, RopeSpec)
    dim, theta, scaling = spec.rotary_dim, position.theta, position.scaling
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
                dim, theta, scaling.factor, scaling.original_context, scaling.beta_fast, scaling.beta_slow, scaling.truncate
            )
            factor = yarn_attention_factor(scaling.factor, scaling.mscale, scaling.mscale_all_dim, scaling.attention_factor)
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
