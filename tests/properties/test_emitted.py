"""The emitted stand-alone file equals the model archspec builds, for any drawn spec of any family.

`emit_source(spec)` is written to a temporary file and imported in this process (`tiny.import_emitted`, shared with
tests/unit/test_emit.py, which also runs the files with archspec blocked); its `Model()` must take the archspec
model's state dict strictly (same names, same shapes) and give the same logits (<= 1e-6, float32, random O(1)
weights) on a forward call that takes the spec's whole path (decoder inputs, prefix lengths, images), and the same
greedy continuation. Every valid spec is emittable: the file is printed from the compiler's plan, as the model is
built from it.
"""

from __future__ import annotations

import tempfile

import torch
from hypothesis import given
from hypothesis import strategies as st
from tiny import import_emitted

import archspec

from .strategies import FAMILIES, model_inputs, randomize_, seeds, specs

MAX_SEQ = 6


@given(spec=specs(families=FAMILIES, min_context=MAX_SEQ + 3), seq=st.integers(1, MAX_SEQ), seed=seeds, data=st.data())
def test_emitted_source_equals_the_built_model(spec, seq, seed, data):
    model = randomize_(archspec.build(spec), seed).eval()
    with tempfile.TemporaryDirectory() as folder:
        emitted = import_emitted(spec, folder).Model()
    emitted.load_state_dict(model.state_dict(), strict=True)
    emitted.eval()
    assert list(emitted.state_dict()) == list(model.state_dict())
    ids, kwargs = data.draw(model_inputs(spec, 2, seq, seed, dtype=torch.float32), label="inputs")
    with torch.no_grad():
        expected, actual = model(ids, **kwargs).logits, emitted(ids, **kwargs).logits
    assert (actual - expected).abs().max().item() <= 1e-6
    images = {key: value for key, value in kwargs.items() if key in ("pixel_values", "image_features")}
    assert torch.equal(emitted.generate(ids, 3, **images), model.generate(ids, 3, **images))
