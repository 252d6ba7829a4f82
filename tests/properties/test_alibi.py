"""ALiBi at the function level: the bias is a per-row shift, so softmax ignores any common offset; slope formula."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from archspec.nn.masks import additive_mask, causal_pattern, render
from archspec.nn.positions import Context, alibi_bias, alibi_slopes

from .strategies import seeds


def probabilities(scores: torch.Tensor, bias: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    return torch.softmax(scores + additive_mask(allowed, bias, torch.float64), dim=-1)


@given(
    heads=st.integers(1, 16),
    queries=st.integers(1, 8),
    keys=st.integers(1, 12),
    offset=st.integers(-10_000, 10_000),
    window=st.one_of(st.none(), st.integers(1, 12)),
    seed=seeds,
)
def test_common_key_offset_leaves_attention_unchanged(heads, queries, keys, offset, window, seed):
    """softmax(s + slope * (j + c)) = softmax(s + slope * j), and = softmax(s + slope * (j - i)) (the paper's form).

    Slopes are taken in float64 so the bias itself is exact; the masks are the model's causal (and window) masks,
    with queries at the last positions as in a forward pass.
    """
    generator = torch.Generator().manual_seed(seed)
    slopes = alibi_slopes(heads).double()
    query_positions = torch.arange(max(keys - queries, 0), max(keys - queries, 0) + queries)
    key_positions = torch.arange(keys)
    allowed = render(causal_pattern(window), Context(query_positions, keys))[0, 0].clone()  # [queries, keys]
    allowed[:, 0] |= ~allowed.any(-1)  # a query past every key: give it one key so the row is not all -inf
    scores = torch.randn(heads, queries, keys, generator=generator, dtype=torch.float64)
    plain = probabilities(scores, alibi_bias(slopes, key_positions), allowed)
    shifted = probabilities(scores, alibi_bias(slopes, key_positions + offset), allowed)
    relative = slopes[:, None, None] * (key_positions[None, None, :] - query_positions[None, :, None]).double()
    paper = probabilities(scores, relative, allowed)
    torch.testing.assert_close(shifted, plain, rtol=0, atol=1e-9)
    torch.testing.assert_close(paper, plain, rtol=0, atol=1e-9)


@given(heads=st.integers(1, 300))
def test_slopes_follow_the_geometric_formula(heads):
    """With p = 2^floor(log2 n): the first p slopes are b, b^2, .., b^p with b = 2^(-8/p); the other n - p are
    the odd powers b'^1, b'^3, .. of b' = 2^(-4/p), i.e. every other slope of a 2p-head model (Press et al.)."""
    slopes = alibi_slopes(heads).double()
    p = 2 ** math.floor(math.log2(heads))
    assert slopes.shape == (heads,)
    assert bool(((slopes > 0) & (slopes < 1)).all())
    base = 2.0 ** (-8 / p)
    torch.testing.assert_close(slopes[:p], base ** torch.arange(1, p + 1, dtype=torch.float64), rtol=1e-6, atol=0)
    if heads > p:
        extra_base = 2.0 ** (-4 / p)
        odd = torch.arange(1, 2 * (heads - p), 2, dtype=torch.float64)
        torch.testing.assert_close(slopes[p:], extra_base**odd, rtol=1e-6, atol=0)
        torch.testing.assert_close(slopes[p:], alibi_slopes(2 * p).double()[0::2][: heads - p], rtol=0, atol=0)
    assert len(set(slopes.tolist())) == heads, "every head has its own slope"
