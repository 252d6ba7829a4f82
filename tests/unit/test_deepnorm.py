"""`block: deepnorm` (Wang et al. 2022, DeepNet, https://arxiv.org/abs/2203.00555): x = norm(alpha * x + f(x)),
with alpha = (2N)^(1/4) and the Xavier init gain beta = (8N)^(-1/4) of value, output and MLP weights for a
decoder-only stack of N layers (the paper's Table 1 / Algorithm 1, decoder-only column)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import archspec
from archspec.nn.blocks import DeepNormBlock
from archspec.nn.positions import Context


def spec(block: object, n_layers: int = 2, d_model: int = 32, d_ff: int = 48) -> archspec.Spec:
    return archspec.spec_from_dict(
        dict(name="tiny", vocab_size=50, d_model=d_model, n_layers=n_layers, context_length=32,
             attention={"heads": 4}, position="rope", norm="layernorm", block=block,
             mlp={"activation": "gelu", "d_ff": d_ff})
    )  # fmt: skip


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 200))
def test_alpha_and_beta_follow_the_paper(n_layers):
    block = spec("deepnorm", n_layers).block
    assert math.isclose(block.alpha, (2 * n_layers) ** (1 / 4), rel_tol=1e-12)
    assert math.isclose(block.beta, (8 * n_layers) ** (-1 / 4), rel_tol=1e-12)


def test_explicit_alpha_and_beta_win_and_reach_the_blocks():
    resolved = spec({"kind": "deepnorm", "alpha": 7.0, "beta": 0.25}, n_layers=3)
    assert (resolved.block.alpha, resolved.block.beta) == (7.0, 0.25)
    model = archspec.build(resolved, device="meta")
    assert all(isinstance(layer, DeepNormBlock) and layer.alpha == 7.0 for layer in model.layers)


def test_alpha_only_for_deepnorm():
    with pytest.raises(archspec.SpecError, match="block.alpha"):
        spec({"kind": "post-norm", "alpha": 2.0})


def test_deepnorm_with_alpha_one_is_post_norm():
    torch.manual_seed(0)
    post = archspec.build(spec("post-norm")).eval()
    deep = archspec.build(spec({"kind": "deepnorm", "alpha": 1.0})).eval()
    assert post.state_dict().keys() == deep.state_dict().keys()
    deep.load_state_dict(post.state_dict())
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(deep(ids).logits, post(ids).logits, rtol=0, atol=0)


def test_block_computes_norm_of_alpha_x_plus_sublayer():
    torch.manual_seed(1)
    model = archspec.build(spec("deepnorm", n_layers=4)).eval()
    block = model.layers[0]
    alpha = (2 * 4) ** (1 / 4)
    x = torch.randn(2, 5, 32)
    context = Context(torch.arange(5), 5, rows=2, dtype=x.dtype)
    context.rope = model.rotary(context)
    attend = model.attention(context)[0]  # the attention function the model gives layer 0 for this call
    with torch.no_grad():
        h = block.attn_norm(alpha * x + block.attn(x, context, attend))
        expected = block.mlp_norm(alpha * h + block.mlp(h))
        torch.testing.assert_close(block(x, context, attend), expected)


def test_init_gains():
    """Xavier normal: std = gain * sqrt(2 / (fan_in + fan_out)); gain beta for v, o and the MLP, 1 for q and k."""
    torch.manual_seed(2)
    n_layers = 6
    model = archspec.build(spec("deepnorm", n_layers, d_model=256, d_ff=512))
    beta = (8 * n_layers) ** (-1 / 4)
    for layer in model.layers:
        for name, gain in [("attn.q", 1.0), ("attn.k", 1.0), ("attn.v", beta), ("attn.o", beta),
                           ("mlp.up", beta), ("mlp.down", beta)]:  # fmt: skip
            weight = layer.get_submodule(name).weight
            fan_out, fan_in = weight.shape
            expected = gain * math.sqrt(2 / (fan_in + fan_out))
            assert abs(weight.std().item() / expected - 1) < 0.03, name


def test_deepnorm_has_no_final_norm():
    """Post-norm layouts end in a norm already: like post-norm, the model adds none after the last block."""
    model = archspec.build(spec("deepnorm"), device="meta")
    assert isinstance(model.final_norm, torch.nn.Identity)
