"""Norm invariances: RMSNorm is scale-invariant, LayerNorm is shift-invariant.

RMSNorm normalises in float32 even for float64 input (LLaMA's cast order, see archspec/nn/norms.py), so its
comparisons use float32 tolerances (rtol 1e-5); LayerNorm is torch.nn.LayerNorm in float64.
"""

from __future__ import annotations

import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import nn

from archspec.nn.norms import RMSNorm

from .strategies import seeds

dims = st.integers(1, 16)
positive = st.floats(1e-3, 1e3)


def draw_x(dim: int, seed: int, rows: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, dim, generator=generator, dtype=torch.float64) * 3


@given(dim=dims, c=positive, eps=st.one_of(st.just(0.0), st.floats(1e-8, 1.0)), seed=seeds)
def test_rmsnorm_is_scale_invariant(dim, c, eps, seed):
    """RMSNorm_eps(c x) = RMSNorm_{eps / c^2}(x) exactly in real arithmetic; with eps = 0, RMSNorm(c x) = RMSNorm(x)."""
    x = draw_x(dim, seed)
    assume(bool((x.pow(2).mean(-1) > 1e-6).all()))
    norm, reference = RMSNorm(dim, eps).double(), RMSNorm(dim, eps / c**2).double()
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * draw_x(dim, seed + 1, rows=1)[0])
        reference.weight.copy_(norm.weight)
    torch.testing.assert_close(norm(c * x), reference(x), rtol=1e-5, atol=1e-6)
    if eps == 0.0:
        torch.testing.assert_close(norm(c * x), norm(x), rtol=1e-5, atol=1e-6)


@given(dim=st.integers(2, 16), c=st.floats(-100, 100), eps=st.floats(1e-12, 1e-3), bias=st.booleans(), seed=seeds)
def test_layernorm_is_shift_invariant(dim, c, eps, bias, seed):
    x = draw_x(dim, seed)
    assume(bool((x.std(-1) > 1e-2).all()))
    norm = nn.LayerNorm(dim, eps=eps, bias=bias).double()
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * draw_x(dim, seed + 1, rows=1)[0])
        if bias:
            norm.bias.copy_(0.1 * draw_x(dim, seed + 2, rows=1)[0])
    # x + c loses |c| * 2^-53 absolute per entry; relative to the row's spread that is amplified by 1/std.
    tol = 1e-12 * (1 + abs(c)) / float(x.std(-1).min())
    torch.testing.assert_close(norm(x + c), norm(x), rtol=0, atol=tol)
