"""KV cache: incremental decoding equals the full forward pass; cached generate equals full-recompute generate.

Every causal family: dense, MoE and MLA decoders (MLA caches the compressed latent), GLM prefix LMs (the first chunk
holds every row's prefix, which attends both ways; generate makes the prompt the prefix) and T5's decoder (its
self-attention cache and the cross-attention keys/values projected once).

Dynamic NTK RoPE is included only while the total length stays within context_length (its table is then the
plain one). Beyond it, by design, theta depends on the *current* total length, so keys cached earlier were rotated
with a different theta than a full forward pass would use: cache and no-cache legitimately differ there (as in
transformers). `min_context` keeps every drawn length within context_length.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from .strategies import DECODERS, build64, lm_logits, seeds, specs, token_ids

MAX_SEQ = 12
CLOSE = dict(rtol=1e-5, atol=1e-6)  # float64 model; masks vs is_causal paths and RMSNorm's float32 rounding


@st.composite
def chunkings(draw, total: int) -> list[int]:
    """Any split of `total` positions into a prompt and following chunks (single steps included)."""
    cuts = draw(st.lists(st.integers(1, total - 1), unique=True)) if total > 1 else []
    bounds = [0, *sorted(cuts), total]
    return [b - a for a, b in zip(bounds, bounds[1:], strict=False)]


@given(spec=specs(families=(*DECODERS, "t5"), min_context=MAX_SEQ + 4), data=st.data(), seed=seeds)
def test_incremental_decoding_equals_full_forward(spec, data, seed):
    seq = data.draw(st.integers(1, MAX_SEQ), label="seq")
    chunks = data.draw(chunkings(seq), label="chunks")
    slack = data.draw(st.integers(0, 4), label="unused cache slots")
    batch = data.draw(st.integers(1, 2), label="batch")
    model = build64(spec, seed)
    ids = token_ids(spec.vocab_size, batch, seq, seed)
    options, source = {}, None
    if spec.structure == "glm":
        prefixes = data.draw(st.lists(st.integers(0, chunks[0]), min_size=batch, max_size=batch), label="prefixes")
        options["prefix_lengths"] = torch.tensor(prefixes)
    if spec.structure == "encoder-decoder":
        source = token_ids(spec.vocab_size, batch, data.draw(st.integers(1, MAX_SEQ), label="source length"), seed + 1)
    with torch.no_grad():
        full = lm_logits(model, ids, source, **options)
        cache = model.new_cache(batch, seq + slack)
        start = 0
        for size in chunks:
            step = lm_logits(model, ids[:, start : start + size], source, cache=cache, **options)
            torch.testing.assert_close(
                step, full[:, start : start + size], **CLOSE, msg=lambda m, s=start: f"chunk at {s}: {m}"
            )
            start += size
        assert cache.length == seq


@given(spec=specs(families=(*DECODERS, "t5"), min_context=MAX_SEQ), data=st.data(), seed=seeds)
def test_generate_with_cache_equals_without(spec, data, seed):
    prompt = data.draw(st.integers(1, MAX_SEQ // 2), label="prompt")
    new = data.draw(st.integers(0, MAX_SEQ - prompt), label="new tokens")
    eos = data.draw(st.one_of(st.none(), st.integers(0, spec.vocab_size - 1)), label="eos")
    model = build64(spec, seed)
    ids = token_ids(spec.vocab_size, 2, prompt, seed)
    cached = model.generate(ids, new, eos_token_id=eos)
    recomputed = model.generate(ids, new, eos_token_id=eos, use_cache=False)
    start = 1 if spec.structure == "encoder-decoder" else prompt  # T5 returns the decoder's tokens from its start
    generated = cached.shape[1] - start
    assert generated == 0 if new == 0 else 1 <= generated <= new  # fewer when every row met eos
    assert torch.equal(cached, recomputed), (cached, recomputed)
