"""Layers that differ (a `layers` section) and soft-caps, on whole float64 models with O(1) random weights.

- NoPE layers have no positions: a stack of them gives the same logits whatever the position ids.
- Each layer's window bounds what it sees, so a stack of windowed layers sees back sum(window - 1) tokens: a token
  further back than that never changes a later output, and the nearest one beyond a smaller bound does.
- A soft-cap bounds the logits: |logit| <= cap (tanh rounds to 1 far out), and an uncapped model's logits pass through cap * tanh(x / cap).
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st

import archspec

from .strategies import build64, decoder_dicts, seeds, token_ids

MAX_SEQ = 12


@st.composite
def layered(draw: st.DrawFn, *, windows: bool, positions: str) -> archspec.Spec:
    """A dense decoder whose every layer has a window (windows=True) or none, and whose kinds have no positions
    (positions="none") or any (NoPE, their own RoPE, the spec's)."""
    data: dict[str, Any] = draw(decoder_dicts(positions=("rope", "none"), window=False, max_layers=4))
    data["attention"].pop("window_layers", None)
    n_layers = data["n_layers"]
    names = [f"k{i}" for i in range(draw(st.integers(1, 3)))]
    kinds: dict[str, Any] = {}
    for name in names:
        kind: dict[str, Any] = {"window": draw(st.integers(1, 5))} if windows else {}
        if positions == "none":
            kind["position"] = "none"
        kinds[name] = kind
    pattern = draw(st.lists(st.sampled_from(names), min_size=1, max_size=n_layers))
    data["layers"] = {"kinds": kinds, "pattern": pattern}
    data["context_length"] = max(data["context_length"], 2 * MAX_SEQ)
    return archspec.spec_from_dict(data)


@given(spec=layered(windows=False, positions="none"), seed=seeds, data=st.data())
def test_nope_layers_ignore_positions(spec, seed, data):
    seq = data.draw(st.integers(1, MAX_SEQ), label="seq")
    model = build64(spec, seed)
    ids = token_ids(spec.vocab_size, 2, seq, seed)
    offsets = data.draw(st.lists(st.integers(0, 50), min_size=seq, max_size=seq), label="position gaps")
    position_ids = torch.tensor(offsets).cumsum(0)[None].expand(2, -1)  # any non-decreasing positions
    mask = torch.ones_like(ids)  # one document per row: the positions are only positions
    with torch.no_grad():
        expected = model(ids).logits
        moved = model(ids, attention_mask=mask, position_ids=position_ids).logits
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-12)


@given(spec=layered(windows=True, positions="any"), seed=seeds, data=st.data())
def test_a_stack_of_windows_sees_back_the_sum_of_its_windows(spec, seed, data):
    reach = sum(spec.window_for_layer(i) - 1 for i in range(spec.n_layers))  # keys back a last query can reach
    seq = data.draw(st.integers(reach + 2, reach + 4), label="seq")
    model = build64(spec.model_copy(update={"context_length": max(spec.context_length, seq)}), seed)
    ids = token_ids(spec.vocab_size, 1, seq, seed)
    far = seq - 1 - reach - 1  # one token beyond the reach of the last query
    other = ids.clone()
    other[0, far] = (other[0, far] + 1) % spec.vocab_size
    with torch.no_grad():
        last, changed = model(ids).logits[0, -1], model(other).logits[0, -1]
    torch.testing.assert_close(changed, last, rtol=0, atol=0)


@given(
    spec=st.builds(
        lambda data, cap: archspec.spec_from_dict({**data, "embeddings": {**data["embeddings"], "logit_softcap": cap}}),
        decoder_dicts(max_layers=2, min_context=5),
        st.floats(0.5, 5.0),
    ),
    seed=seeds,
)
def test_logit_softcap_bounds_the_logits(spec, seed):
    model = build64(spec, seed)
    uncapped = build64(
        spec.model_copy(update={"embeddings": spec.embeddings.model_copy(update={"logit_softcap": None})}), seed
    )
    ids = token_ids(spec.vocab_size, 2, 5, seed)
    cap = spec.embeddings.logit_softcap
    with torch.no_grad():
        logits, raw = model(ids).logits, uncapped(ids).logits
    assert logits.abs().max() <= cap  # tanh rounds to 1 far out
    torch.testing.assert_close(logits, cap * torch.tanh(raw / cap), rtol=0, atol=1e-12)
