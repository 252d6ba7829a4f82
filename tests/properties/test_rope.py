"""RoPE: attention scores depend only on relative position; rotation preserves norms; both pairings agree.

The tables come from the compiler (`archspec.build(spec).rotary`), so every scaling is exercised as wired for a
spec. cos/sin are computed in float32 (as the reference implementations do) and applied to float64 vectors, so
the tolerance is the float32 angle error: |angle| * 2^-24 per table entry, i.e. about (max position) * 2^-23
relative to |q| |k| (positions stay <= 1024).
"""

from __future__ import annotations

import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import archspec
from archspec.nn.positions import Context
from archspec.nn.rope import HalfPairs, InterleavedPairs, RotaryEmbedding, apply_rotary

from .strategies import STATIC_SCALINGS, seeds, specs

MAX_POSITION = 1024
rope_specs = specs(positions=("rope",), scalings=(*STATIC_SCALINGS, "dynamic"), max_layers=1)
positions = st.integers(0, MAX_POSITION // 2)


def tables(
    spec: archspec.Spec, rotary_positions: torch.Tensor, seq_len: int
) -> tuple[RotaryEmbedding, torch.Tensor, torch.Tensor]:
    # Dynamic NTK recomputes theta from the total length; for one fixed length the table is static, which is
    # the regime this relative-position property is about.
    rotary = archspec.build(spec).rotary
    assert rotary is not None
    # Known bug (test_fuzz.test_dynamic_rope_with_two_rotary_dims_beyond_context): d / (d - 2) with d = 2.
    assume(not (rotary.dynamic_ntk is not None and rotary_dim(rotary) == 2 and seq_len > spec.context_length))
    rope = rotary(Context(rotary_positions, seq_len, dtype=torch.float64))
    return rotary, rope.keywords["cos"], rope.keywords["sin"]  # the call's tables: a partial of apply_rotary


def rotary_dim(rotary: RotaryEmbedding) -> int:
    return 2 * rotary.inv_freq.shape[0]


def vectors(head_dim: int, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 1, count, head_dim, generator=generator, dtype=torch.float64)


def tolerance(scale: float) -> float:
    return 8 * scale * (MAX_POSITION + 2) * 2.0**-24 + 1e-12


@given(spec=rope_specs, m=positions, n=positions, shift=positions, seq_len=st.integers(1, 20000), seed=seeds)
def test_scores_depend_only_on_relative_position(spec, m, n, shift, seq_len, seed):
    rotary, cos, sin = tables(spec, torch.tensor([m, n, m + shift, n + shift]), seq_len)
    q, k = vectors(spec.head_dim, 2, seed).unbind(2)
    rq = apply_rotary(q[:, :, None].expand(1, 1, 4, -1), cos, sin, rotary.pairing)[0, 0]
    rk = apply_rotary(k[:, :, None].expand(1, 1, 4, -1), cos, sin, rotary.pairing)[0, 0]
    before, after = rq[0] @ rk[1], rq[2] @ rk[3]
    scale = max(rotary.attention_factor, 1.0) ** 2 * float(q.norm() * k.norm())
    assert abs(before - after) <= tolerance(scale), (float(before), float(after))


@given(spec=rope_specs, m=positions, seq_len=st.integers(1, 20000), seed=seeds)
def test_rotation_preserves_norms_up_to_attention_factor(spec, m, seq_len, seed):
    """|rope(q)[:r]| = attention_factor * |q[:r]| (attention_factor is 1 except for YaRN); q[r:] passes through."""
    rotary, cos, sin = tables(spec, torch.tensor([m]), seq_len)
    q = vectors(spec.head_dim, 1, seed)
    rotated = apply_rotary(q, cos, sin, rotary.pairing)
    r = spec.rotary_dim
    assert r == rotary_dim(rotary)
    expected = rotary.attention_factor * q[..., :r].norm()
    assert abs(rotated[..., :r].norm() - expected) <= tolerance(float(expected)), (
        float(rotated[..., :r].norm()),
        float(expected),
    )
    assert torch.equal(rotated[..., r:], q[..., r:])


@given(spec=rope_specs, m=st.lists(positions, min_size=1, max_size=4), seed=seeds)
def test_interleaved_pairing_is_half_pairing_with_permuted_dims(spec, m, seed):
    """Both pairings rotate pair k by inv_freq[k]; they differ only in where pair k's two dims sit.

    interleaved pairs (2k, 2k+1), half pairs (k, k + r/2): gathering the even dims then the odd dims maps one
    layout onto the other, so rope_interleaved(x)[perm] == rope_half(x[perm]).
    """
    rotary = archspec.build(spec).rotary
    assert rotary is not None
    r = rotary_dim(rotary)
    half = RotaryEmbedding(rotary.inv_freq, HalfPairs(), rotary.attention_factor)
    inter = RotaryEmbedding(rotary.inv_freq, InterleavedPairs(), rotary.attention_factor)
    context = Context(torch.tensor(m), 1, dtype=torch.float64)
    x = vectors(spec.head_dim, len(m), seed)
    perm = torch.cat((torch.arange(0, r, 2), torch.arange(1, r, 2), torch.arange(r, spec.head_dim)))
    via_inter = inter(context)(x)[..., perm]
    via_half = half(context)(x[..., perm])
    torch.testing.assert_close(via_inter, via_half, rtol=0, atol=1e-12)
