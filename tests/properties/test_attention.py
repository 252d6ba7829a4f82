"""Grouped-query attention against multi-head attention, with torch.nn.MultiheadAttention as the reference."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from archspec.nn.attend import ChunkedWindow, MaskedAttention, ToeplitzBias, causal_attention, distance_table
from archspec.nn.attention import Attention
from archspec.nn.masks import additive_mask, causal, causal_pattern, render
from archspec.nn.norms import RMSNorm
from archspec.nn.positions import Context, alibi_bias, alibi_slopes
from archspec.nn.rope import HalfPairs, InterleavedPairs, RotaryEmbedding, rope_frequencies

from .strategies import randomize_, seeds

TOL = dict(rtol=1e-7, atol=1e-9)  # float64 throughout


@st.composite
def gqa_shapes(draw):
    kv_heads = draw(st.integers(1, 4))
    group = draw(st.integers(1, 4))
    head_dim = draw(st.integers(1, 4)) * 2
    return dict(
        d_model=draw(st.integers(1, 12)),
        heads=kv_heads * group,
        kv_heads=kv_heads,
        head_dim=head_dim,
        bias=tuple(draw(st.lists(st.booleans(), min_size=4, max_size=4))),
        qk_norm_eps=draw(st.one_of(st.none(), st.just(1e-6))),
        scale=draw(st.one_of(st.none(), st.floats(0.1, 2.0))),
        rope_interleaved=draw(st.booleans()),
    )


def attention(
    d_model: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    bias: tuple[bool, bool, bool, bool] = (False, False, False, False),
    qk_norm_eps: float | None = None,
    scale: float | None = None,
) -> Attention:
    """An `Attention` with its projections (and per-head RMSNorms of q and k) made as the compiler makes them."""
    q_bias, k_bias, v_bias, o_bias = bias
    norms = {}
    if qk_norm_eps is not None:
        norms = dict(q_norm=RMSNorm(head_dim, qk_norm_eps), k_norm=RMSNorm(head_dim, qk_norm_eps))
    return Attention(
        heads,
        kv_heads,
        head_dim,
        q=nn.Linear(d_model, heads * head_dim, bias=q_bias),
        k=nn.Linear(d_model, kv_heads * head_dim, bias=k_bias),
        v=nn.Linear(d_model, kv_heads * head_dim, bias=v_bias),
        o=nn.Linear(heads * head_dim, d_model, bias=o_bias),
        scale=scale,
        **norms,
    )


def window_mask(seq: int, window: int) -> torch.Tensor:
    """[seq, seq] causal sliding-window mask (True = may attend): query i sees keys i - window + 1 .. i."""
    distance = torch.arange(seq)[:, None] - torch.arange(seq)[None, :]
    return (distance >= 0) & (distance < window)


def inputs(d_model: int, batch: int, seq: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq, d_model, generator=generator, dtype=torch.float64)


def repeat_groups(weight: torch.Tensor, kv_heads: int, group: int) -> torch.Tensor:
    """[kv_heads * head_dim, ...] -> [kv_heads * group * head_dim, ...]: query head h reads kv head h // group."""
    per_head = weight.reshape(kv_heads, -1, *weight.shape[1:])
    return per_head.repeat_interleave(group, dim=0).reshape(-1, *weight.shape[1:])


@given(
    shape=gqa_shapes(),
    batch=st.integers(1, 2),
    seq=st.integers(1, 8),
    mask_kind=st.sampled_from(["causal", "window", "alibi"]),
    window=st.integers(1, 8),
    use_rope=st.booleans(),
    seed=seeds,
)
def test_gqa_equals_mha_with_repeated_kv_weights(shape, batch, seq, mask_kind, window, use_rope, seed):
    """GQA(h, g) == MHA(h) whose K/V projections are each kv group's projection repeated over its query heads.

    g = h is the MHA case (nothing repeated) and g = 1 the MQA case; masks cover SDPA's is_causal fast path, a
    boolean sliding-window mask and an additive ALiBi mask; RoPE and qk-norm are applied before the grouping.
    """
    shape = dict(shape)
    pairing = InterleavedPairs() if shape.pop("rope_interleaved") else HalfPairs()
    group = shape["heads"] // shape["kv_heads"]
    gqa = randomize_(attention(**shape).double(), seed)
    mha = attention(**{**shape, "kv_heads": shape["heads"]}).double()
    state = dict(gqa.state_dict())
    for name in ("k.weight", "k.bias", "v.weight", "v.bias"):
        if name in state:
            state[name] = repeat_groups(state[name], shape["kv_heads"], group)
    mha.load_state_dict(state)

    positions = torch.arange(seq)
    context = Context(positions, seq, rows=batch, dtype=torch.float64)
    if use_rope:
        rotary = RotaryEmbedding(rope_frequencies(shape["head_dim"], 10000.0), pairing)
        context.rope = rotary(context)
    attend = causal_attention
    if mask_kind == "window":
        attend = MaskedAttention(render(causal_pattern(window), context))
    elif mask_kind == "alibi":
        bias = alibi_bias(alibi_slopes(shape["heads"]), positions)
        attend = MaskedAttention(additive_mask(render(causal, context), bias, torch.float64))
    x = inputs(shape["d_model"], batch, seq, seed)
    torch.testing.assert_close(gqa(x, context, attend), mha(x, context, attend), **TOL)


@given(
    heads=st.integers(1, 4),
    head_dim=st.integers(1, 4),
    bias=st.lists(st.booleans(), min_size=4, max_size=4),
    batch=st.integers(1, 2),
    seq=st.integers(1, 8),
    seed=seeds,
)
def test_mha_equals_torch_multihead_attention(heads, head_dim, bias, batch, seq, seed):
    """Attention(kv_heads = heads) == torch.nn.MultiheadAttention with the same weights and a causal mask."""
    d_model = heads * head_dim
    ours = randomize_(attention(d_model, heads, heads, head_dim, bias=tuple(bias)).double(), seed)
    reference = nn.MultiheadAttention(d_model, heads, bias=True, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat((ours.q.weight, ours.k.weight, ours.v.weight)))
        biases = [
            p.bias if p.bias is not None else torch.zeros(d_model, dtype=torch.float64)
            for p in (ours.q, ours.k, ours.v)
        ]
        reference.in_proj_bias.copy_(torch.cat(biases))
        reference.out_proj.weight.copy_(ours.o.weight)
        reference.out_proj.bias.copy_(ours.o.bias if ours.o.bias is not None else torch.zeros(d_model))
    x = inputs(d_model, batch, seq, seed)
    blocked = torch.ones(seq, seq, dtype=torch.bool).triu(1)  # True = may NOT attend, torch's convention
    expected, _ = reference(x, x, x, attn_mask=blocked, need_weights=False)
    context = Context(torch.arange(seq), seq, rows=batch, dtype=torch.float64)
    torch.testing.assert_close(ours(x, context, causal_attention), expected, **TOL)


@given(
    kv_heads=st.integers(1, 3),
    group=st.integers(1, 3),
    head_dim=st.integers(1, 4),
    seq=st.integers(1, 40),
    window=st.integers(1, 24),
    chunk=st.one_of(st.none(), st.integers(1, 12)),
    seed=seeds,
)
def test_mask_free_window_paths_equal_the_masked_softmax_and_its_gradient(
    kv_heads, group, head_dim, seq, window, chunk, seed
):
    """`ChunkedWindow` (chunks over overlapping key spans, any chunk size) and `ToeplitzBias` over a window's
    distance table give the attention of SDPA with the materialised [seq, seq] window mask, and the same
    gradients for q, k and v (float64; GQA included)."""
    generator = torch.Generator().manual_seed(seed)
    heads = kv_heads * group

    def leaf(n_heads: int) -> torch.Tensor:
        return torch.randn(2, n_heads, seq, head_dim, generator=generator, dtype=torch.float64).requires_grad_()

    q, k, v = leaf(heads), leaf(kv_heads), leaf(kv_heads)
    grad_out = torch.randn(2, heads, seq, head_dim, generator=generator, dtype=torch.float64)
    mask = window_mask(seq, window)
    table = torch.zeros(1, 2 * seq - 1, dtype=torch.float64)

    def attention_and_grads(attend) -> list[torch.Tensor]:
        out = attend(q, k, v)
        grads = torch.autograd.grad(out, (q, k, v), grad_out)
        return [out.detach(), *grads]

    expected = attention_and_grads(
        lambda q, k, v: nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=0.7, enable_gqa=group > 1
        )
    )
    paths = {
        "chunked": ChunkedWindow(window, chunk),
        "toeplitz": ToeplitzBias(distance_table(table, True, window), causal=True, window=window, chunk=chunk or 384),
    }
    for name, path in paths.items():
        actual = attention_and_grads(lambda q, k, v, path=path: path(q, k, v, 0.7))
        for got, want in zip(actual, expected, strict=True):
            torch.testing.assert_close(got, want, **TOL, msg=lambda m, name=name: f"{name}: {m}")
