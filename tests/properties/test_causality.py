"""Causality and sliding windows, on whole models of every layout, position kind and norm, and every causal
family: dense, MoE and MLA decoders, GLM prefix LMs (a token after every row's prefix never changes earlier
outputs, whatever the prefixes) and T5's decoder (a decoder token never changes earlier decoder outputs, whatever
the encoder input).

Models are float64 with O(1) random weights (strategies.randomize_), so a leak would show at O(1e-3) or more;
tolerances are float64-level for paths that compute the same numbers, and 1e-6 where two different attention
paths (SDPA's is_causal fast path vs an explicit mask) are compared, since RMSNorm rounds through float32.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from .strategies import DECODERS, build64, lm_logits, seeds, specs, token_ids

MAX_SEQ = 12
EXACT = dict(rtol=0, atol=1e-12)
CLOSE = dict(rtol=1e-5, atol=1e-6)


def changed_at(ids: torch.Tensor, t: int, vocab: int, delta: int) -> torch.Tensor:
    other = ids.clone()
    other[:, t] = (other[:, t] + delta) % vocab  # delta in [1, vocab): always a different token
    return other


@given(spec=specs(families=(*DECODERS, "t5"), min_context=MAX_SEQ), data=st.data(), seed=seeds)
def test_changing_a_token_never_changes_earlier_outputs(spec, data, seed):
    seq = data.draw(st.integers(1, MAX_SEQ), label="seq")
    t = data.draw(st.integers(0, seq - 1), label="t")
    delta = data.draw(st.integers(1, spec.vocab_size - 1), label="delta")
    model = build64(spec, seed)
    ids = token_ids(spec.vocab_size, 2, seq, seed)
    options, source = {}, None
    if spec.structure == "glm":  # bidirectional within each row's prefix: t must come after it
        prefixes = data.draw(st.lists(st.integers(0, t), min_size=2, max_size=2), label="prefixes")
        options["prefix_lengths"] = torch.tensor(prefixes)
    if spec.structure == "encoder-decoder":  # ids are the decoder's; the encoder reads a fixed source
        source = token_ids(spec.vocab_size, 2, data.draw(st.integers(1, MAX_SEQ), label="source length"), seed + 1)
    with torch.no_grad():
        before = lm_logits(model, ids, source, **options)
        after = lm_logits(model, changed_at(ids, t, spec.vocab_size, delta), source, **options)
    torch.testing.assert_close(after[:, :t], before[:, :t], **EXACT)


@given(
    spec=specs(families=("dense", "moe"), min_context=MAX_SEQ + 8, window=True, windowed_layers="all"),
    data=st.data(),
    seed=seeds,
)
def test_sliding_window_receptive_field(spec, data, seed):
    """With every layer windowed (w = window), output i reads tokens i - L(w - 1) .. i after L layers.

    One layer sees its own position and the w - 1 before it; stacking L layers composes those reaches, so a
    token t can only influence positions t .. t + L(w - 1). (It is *not* true that tokens more than w back are
    invisible once L > 1.) Positions beyond that, and before t, must not change.
    """
    seq = data.draw(st.integers(2, MAX_SEQ + 8), label="seq")
    t = data.draw(st.integers(0, seq - 1), label="t")
    delta = data.draw(st.integers(1, spec.vocab_size - 1), label="delta")
    reach = spec.n_layers * (spec.attention.window - 1)
    model = build64(spec, seed)
    ids = token_ids(spec.vocab_size, 1, seq, seed)
    with torch.no_grad():
        before = model(ids).logits
        after = model(changed_at(ids, t, spec.vocab_size, delta)).logits
    torch.testing.assert_close(after[:, :t], before[:, :t], **EXACT)
    torch.testing.assert_close(after[:, t + reach + 1 :], before[:, t + reach + 1 :], **EXACT)


@given(spec=specs(families=("dense", "moe"), min_context=MAX_SEQ, window=True), data=st.data(), seed=seeds)
def test_window_at_least_the_sequence_is_full_causal_attention(spec, data, seed):
    seq = data.draw(st.integers(1, spec.attention.window), label="seq")
    windowed = build64(spec, seed)
    full_spec = spec.model_copy(
        update={"attention": spec.attention.model_copy(update={"window": None, "window_layers": None})}
    )
    full = build64(full_spec, seed)
    full.load_state_dict(windowed.state_dict())
    ids = token_ids(spec.vocab_size, 2, min(seq, MAX_SEQ), seed)
    with torch.no_grad():
        torch.testing.assert_close(windowed(ids).logits, full(ids).logits, **CLOSE)
