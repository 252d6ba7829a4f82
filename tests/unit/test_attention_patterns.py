"""The mask-free attention paths (archspec.nn.attend, archspec.nn.flex) against SDPA with the materialised mask or
bias (built here by plain comparisons of positions, independently of archspec.nn.masks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny import shrink
from torch.nn.attention.flex_attention import and_masks, create_block_mask

import archspec
from archspec.nn.attend import ChunkedScores, ChunkedWindow, MaskedAttention, ToeplitzBias, distance_table
from archspec.nn.flex import (
    FLEX_CPU_SHORTEST,
    FlexPattern,
    alibi_score_mod,
    causal_block_mask,
    full_block_mask,
    relative_bias_score_mod,
)
from archspec.nn.masks import additive_mask, causal, sliding_window
from archspec.nn.positions import Context, RelativePositionBias, alibi_bias, alibi_by_distance, alibi_slopes

# Eager FlexAttention (unfused, materialises the scores) is the reference behaviour these tests check; the
# deprecation is torch's own, raised inside torch.compile's imports.
pytestmark = [
    pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]


def qkv(seq: int, heads: int = 4, kv_heads: int = 2, dim: int = 8, batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, seq, dim, generator=generator)
    k, v = (torch.randn(batch, kv_heads, seq, dim, generator=generator) for _ in range(2))
    return q, k, v


def causal_mask(query_positions, key_positions, window=None):
    """[queries, keys]: key j visible to query i iff j <= i (and i - j < window when set), the reference."""
    distance = query_positions[:, None] - key_positions[None, :]
    allowed = distance >= 0
    return allowed & (distance < window) if window is not None else allowed


def prefix_mask(query_positions, key_positions, prefix_lengths, window=None):
    """[batch, 1, queries, keys]: the causal mask, plus row b's first prefix_lengths[b] keys for every query."""
    in_prefix = key_positions[None, :] < prefix_lengths[:, None]
    return (causal_mask(query_positions, key_positions, window)[None] | in_prefix[:, None, :])[:, None]


def relative_bias(heads, buckets, max_distance, bidirectional):
    return RelativePositionBias(torch.nn.Embedding(buckets, heads), max_distance, bidirectional)


def sdpa(q, k, v, mask, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


@pytest.mark.parametrize(
    "seq, window, chunk",
    [(100, 16, 5), (257, 64, 16), (70, 64, 8), (300, 7, 256), (33, 2, 4), (20, 1, 3), (90, 24, None), (64, 64, 8)],
)
def test_chunked_window_equals_the_masked_softmax_and_its_gradient(seq, window, chunk):
    q, k, v = (t.requires_grad_() for t in qkv(seq))
    positions = torch.arange(seq)

    def grads(out):
        out.square().sum().backward()
        result = [t.grad.clone() for t in (q, k, v)]
        for t in (q, k, v):
            t.grad = None
        return result

    expected = sdpa(q, k, v, causal_mask(positions, positions, window), 0.3)
    expected_grads = grads(expected)
    actual = ChunkedWindow(window, chunk)(q, k, v, 0.3)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads(actual), expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the inference chunk size
        torch.testing.assert_close(ChunkedWindow(window)(q, k, v, 0.3), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [None, 6])
def test_toeplitz_alibi_equals_the_materialised_bias(window):
    seq = 37
    q, k, v = qkv(seq)
    positions = torch.arange(seq)
    slopes = alibi_slopes(4)
    mask = additive_mask(causal_mask(positions, positions, window), alibi_bias(slopes, positions), torch.float32)
    table = distance_table(alibi_by_distance(slopes, seq), causal=True, window=window)
    torch.testing.assert_close(ToeplitzBias(table)(q, k, v, 0.5), sdpa(q, k, v, mask, 0.5), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_toeplitz_relative_bias_equals_the_materialised_bias_and_its_gradient(bidirectional):
    seq = 29
    q, k, v = (t.requires_grad_() for t in qkv(seq, heads=3, kv_heads=3, dim=7))
    relative = relative_bias(3, buckets=12, max_distance=20, bidirectional=bidirectional)
    torch.nn.init.normal_(relative.table.weight)
    positions = torch.arange(seq)

    def grads(out):
        out.square().sum().backward()
        result = [t.grad.clone() for t in (q, k, v, relative.table.weight)]
        for t in (q, k, v, relative.table.weight):
            t.grad = None
        return result

    bias = relative(positions, positions)
    expected = sdpa(
        q, k, v, bias if bidirectional else additive_mask(causal_mask(positions, positions), bias, bias.dtype), 1.0
    )
    expected_grads = grads(expected)
    table = relative.by_distance(seq, seq)
    actual = ToeplitzBias(table if bidirectional else distance_table(table, causal=True))(q, k, v, 1.0)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads(actual), expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("window", [None, 20])
def test_flex_block_mask_and_alibi_equal_sdpa(window):
    seq = 150  # not a multiple of the 32-position blocks: partial last blocks
    q, k, v = qkv(seq)
    positions = torch.arange(seq)
    slopes = alibi_slopes(4)
    pattern = FlexPattern(causal_block_mask(seq, seq, window, q.device, block=32), alibi_score_mod(slopes))
    mask = additive_mask(causal_mask(positions, positions, window), alibi_bias(slopes, positions), torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(pattern(q, k, v, 0.3), sdpa(q, k, v, mask, 0.3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [None, 20])
def test_flex_prefix_block_mask_equals_the_prefix_mask(window):
    """GLM's prefix LM through FlexAttention: per-row prefixes (empty, inside a block, across blocks, the whole
    sequence) give SDPA's result with `prefix_mask`."""
    seq = 150
    q, k, v = qkv(seq, batch=4)
    prefix_lengths = torch.tensor([0, 7, 70, 150])
    positions = torch.arange(seq)
    pattern = FlexPattern(causal_block_mask(seq, seq, window, q.device, block=32, prefix_lengths=prefix_lengths))
    mask = prefix_mask(positions, positions, prefix_lengths, window)
    with torch.no_grad():
        torch.testing.assert_close(pattern(q, k, v, 0.3), sdpa(q, k, v, mask, 0.3), rtol=1e-5, atol=1e-5)


def test_flex_backend_of_a_prefix_lm_gives_the_default_logits():
    model = tiny("chatglm-6b")
    ids = torch.randint(0, 128, (3, 40))
    prefix_lengths = torch.tensor([0, 13, 40])
    with torch.no_grad():
        default = model(ids, prefix_lengths=prefix_lengths).logits
        model.attn_backend = "flex"
        flex = model(ids, prefix_lengths=prefix_lengths).logits
    torch.testing.assert_close(flex, default, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seq", [16, 40, 130])
def test_compiled_flex_on_cpu_is_right_for_sequences_shorter_than_a_block(seq):
    """Inductor's CPU flex kernel gets sequences shorter than the block wrong (NaN or garbage at 40 tokens in
    128-blocks); `flex_block_size` keeps blocks no longer than the sequence (and the models keep sequences under
    FLEX_CPU_SHORTEST off FlexAttention on CPU). Causal with per-row prefixes, and every key."""
    q, k, v = qkv(seq, batch=2)
    positions = torch.arange(seq)
    prefix_lengths = torch.tensor([0, seq // 3])
    causal = FlexPattern(causal_block_mask(seq, seq, None, q.device, prefix_lengths=prefix_lengths))
    full = FlexPattern(full_block_mask(seq, seq, q.device))
    with torch.no_grad():
        compiled = torch.compile(lambda q, k, v: (causal(q, k, v, 0.3), full(q, k, v, 0.3)), fullgraph=True)
        got_causal, got_full = compiled(q, k, v)
        torch.testing.assert_close(
            got_causal, sdpa(q, k, v, prefix_mask(positions, positions, prefix_lengths), 0.3), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(got_full, sdpa(q, k, v, None, 0.3), rtol=1e-5, atol=1e-5)


def test_models_keep_short_sequences_off_flex_on_cpu():
    model = tiny("chatglm-6b")
    model.attn_backend = "flex"

    def attends(seq):
        return model.attention(Context(torch.arange(seq), seq, prefix_lengths=torch.tensor([3])))

    with torch.no_grad():
        short, long = attends(FLEX_CPU_SHORTEST - 1), attends(FLEX_CPU_SHORTEST)
    assert len(short) == len(long) == len(model.layers)
    assert all(isinstance(attend, MaskedAttention) for attend in short)
    positions = torch.arange(FLEX_CPU_SHORTEST - 1)
    assert torch.equal(short[0].mask, prefix_mask(positions, positions, torch.tensor([3])))
    assert all(isinstance(attend, FlexPattern) for attend in long)


def test_flex_relative_bias_equals_sdpa():
    seq = 40
    q, k, v = qkv(seq, heads=3, kv_heads=3)
    relative = relative_bias(3, buckets=32, max_distance=128, bidirectional=True)
    torch.nn.init.normal_(relative.table.weight)
    positions = torch.arange(seq)
    with torch.no_grad():
        score_mod = relative_bias_score_mod(relative.table.weight, True, 32, 128)
        expected = sdpa(q, k, v, relative(positions, positions), 1.0)
        torch.testing.assert_close(FlexPattern(None, score_mod)(q, k, v, 1.0), expected, rtol=1e-5, atol=1e-5)


FALCON_RW_ALIBI = {"kind": "alibi", "scaled": True, "precision": "bfloat16"}


def tiny(name: str, **updates) -> torch.nn.Module:
    spec = shrink(archspec.load_spec(f"specs/{name}.yaml"))
    data = spec.model_dump(mode="json")
    for key, value in updates.items():
        data[key].update(value) if isinstance(data[key], dict) else data.__setitem__(key, value)
    torch.manual_seed(0)
    model = archspec.build(archspec.spec_from_dict(data)).eval()
    for parameter in model.parameters():  # larger weights than the init, so that attention patterns matter
        parameter.data.normal_(0.0, 0.2)
    return model


@pytest.mark.parametrize(
    "name, updates",
    [
        ("mistral-7b", {"attention": {"window": 20}, "context_length": 256}),
        ("bloom-560m", {}),
        ("bloom-560m", {"attention": {"window": 20}}),
        ("bloom-560m", {"attention": {"window": 20}, "position": FALCON_RW_ALIBI}),
        ("t5-small", {}),
        ("gemma-2-9b", {}),
    ],
    ids=["window", "alibi", "alibi-window", "bfloat16-alibi-window", "t5", "softcap-layer-kinds"],
)
def test_model_paths_agree(name, updates):
    """The default inference path (chunked windows, Toeplitz views), the grad-enabled path (windows in chunks of
    up to 256 queries) and attn_backend="flex" give the same logits as the decode-time mask path of the same
    tokens."""
    model = tiny(name, **updates)
    seq = 90
    ids = torch.randint(0, 128, (2, seq))
    kwargs = {"decoder_input_ids": torch.randint(0, 128, (2, 30))} if name.startswith("t5") else {}
    reference = model(ids, **kwargs).logits.detach()  # grad enabled: the training paths
    with torch.no_grad():
        default = model(ids, **kwargs).logits
        model.attn_backend = "flex"
        flex = model(ids, **kwargs).logits
        if not name.startswith("t5"):
            # A cache makes every path a mask: the last position of a prompt fed in two chunks.
            cache = model.new_cache(2, seq)
            model.attn_backend = "sdpa"
            model(ids[:, : seq - 10], cache=cache)
            chunked = model(ids[:, seq - 10 :], cache=cache).logits
            torch.testing.assert_close(chunked, reference[:, seq - 10 :], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(default, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flex, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name, updates",
    [("llama3.1-8b", {}), ("mistral-7b", {"attention": {"window": 12}}), ("bloom-560m", {})],
    ids=["rope", "window", "alibi"],
)
def test_flex_padding_and_documents_equal_the_sdpa_masks(name, updates):
    """attn_backend="flex": a left-padded batch and packed documents go through one FlexAttention block mask built
    from the same predicates as the SDPA masks, with the same logits at every real position."""
    model = tiny(name, **updates)
    seq = 40
    ids = torch.randint(0, 128, (2, seq))
    mask = torch.ones_like(ids)
    mask[1, :9] = 0
    positions = torch.cat((torch.arange(17), torch.arange(seq - 17)))[None].expand(2, -1)
    with torch.no_grad():
        sdpa_padded = model(ids, attention_mask=mask).logits
        sdpa_packed = model(ids, position_ids=positions).logits
        model.attn_backend = "flex"
        flex_padded = model(ids, attention_mask=mask).logits
        flex_packed = model(ids, position_ids=positions).logits
        padded_call = Context(torch.arange(seq), seq, rows=2, key_mask=mask.bool())
        assert all(isinstance(attend, FlexPattern) for attend in model.attention(padded_call))
    real = mask.bool()
    torch.testing.assert_close(flex_padded[real], sdpa_padded[real], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(flex_packed, sdpa_packed, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("window", [None, 6])
def test_soft_capped_chunks_equal_the_scores_written_out(window):
    """ChunkedScores in chunks of 7 queries (the last one short) equals cap * tanh(q.k * scale / cap), masked,
    softmax, times v, written out over the whole [seq, seq] grid; GQA heads read their group's key."""
    seq, cap, scale = 23, 0.7, 0.3
    q, k, v = qkv(seq)
    context = Context(torch.arange(seq), seq, rows=2, dtype=q.dtype)
    pattern = causal if window is None else and_masks(causal, sliding_window(window))
    scores = (q @ k.repeat_interleave(2, dim=1).transpose(-1, -2)) * scale
    positions = torch.arange(seq)
    seen = positions[None, :] <= positions[:, None]
    if window is not None:
        seen &= positions[:, None] - positions[None, :] < window
    capped = (cap * torch.tanh(scores / cap)).masked_fill(~seen, float("-inf"))
    expected = torch.softmax(capped, dim=-1) @ v.repeat_interleave(2, dim=1)
    torch.testing.assert_close(ChunkedScores(pattern, context, cap, chunk=7)(q, k, v, scale), expected)
    torch.testing.assert_close(ChunkedScores(pattern, context, cap)(q, k, v, scale), expected)


@pytest.mark.parametrize("window", [None, 6])
@pytest.mark.parametrize("cap", [None, 0.7])
def test_sinks_in_chunks_equal_an_extra_softmax_column_written_out(window, cap):
    """Sinks: each head's softmax over [scores, sink_h], the sink's share dropped (transformers' gpt-oss eager
    attention, written out over the whole grid); chunks of 7 queries or one, capped scores or not, GQA. The share
    is real: a sink of -inf gives plain attention back, and the outputs differ from it."""
    seq, scale = 23, 0.3
    q, k, v = qkv(seq)
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=q.dtype)
    context = Context(torch.arange(seq), seq, rows=2, dtype=q.dtype)
    pattern = causal if window is None else and_masks(causal, sliding_window(window))
    scores = (q @ k.repeat_interleave(2, dim=1).transpose(-1, -2)) * scale
    if cap is not None:
        scores = cap * torch.tanh(scores / cap)
    positions = torch.arange(seq)
    seen = positions[None, :] <= positions[:, None]
    if window is not None:
        seen &= positions[:, None] - positions[None, :] < window
    scores = scores.masked_fill(~seen, float("-inf"))
    column = sinks.view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
    weights = torch.softmax(torch.cat([scores, column], dim=-1), dim=-1)[..., :-1]
    expected = weights @ v.repeat_interleave(2, dim=1)
    attend = ChunkedScores(pattern, context, cap, chunk=7)
    torch.testing.assert_close(attend(q, k, v, scale, sinks), expected)
    torch.testing.assert_close(ChunkedScores(pattern, context, cap)(q, k, v, scale, sinks), expected)
    plain = attend(q, k, v, scale)
    torch.testing.assert_close(attend(q, k, v, scale, torch.full_like(sinks, float("-inf"))), plain)
    assert (plain - expected).abs().max() > 1e-3


@pytest.mark.parametrize("window", [None, 6])
def test_flex_sinks_from_the_log_sum_exp_equal_the_chunked_scores(window):
    """FlexAttention with sinks (output times sigmoid(lse - sink)) equals ChunkedScores' extra column."""
    seq, scale = 32, 0.3
    q, k, v = qkv(seq)
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=q.dtype)
    context = Context(torch.arange(seq), seq, rows=2, dtype=q.dtype)
    pattern = causal if window is None else and_masks(causal, sliding_window(window))
    block_mask = create_block_mask(pattern, None, None, seq, seq, "cpu", BLOCK_SIZE=16)
    flex = FlexPattern(block_mask)(q, k, v, scale, sinks)
    torch.testing.assert_close(flex, ChunkedScores(pattern, context)(q, k, v, scale, sinks))
