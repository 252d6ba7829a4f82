"""Gemma, Gemma 2 and Gemma 3 (text) against transformers 5.25.0, with test_hf_parity's checks.

The parity tests of test_hf_parity (float64 logits at 1e-10 of max|logit|, float32 against eager, the YAML round
trip, greedy generation cached and not, meta build + load) run here over this file's CONFIGS, under this
module's `reference`. Odd shapes: 6 heads over 2 or 3 kv heads, head_dim 20 or 24 where d_model / heads is 8,
3-5 layers with sliding and full attention mixed, windows of 5 under inputs of 13 tokens, d_model 48 (sqrt(48)
is not a bfloat16 number: the embedding scale's rounding shows), soft-caps small enough to bite (the
scores and logits reach several times the cap), Gemma 3's local and global RoPE apart (theta and linear scaling).
Also: save_hf round trips, and configs as transformers 4.x wrote them.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from hf_reference import archspec_from, assert_logits_match, saved_reference
from test_hf_export import assert_reproduces, load_transformers
from test_hf_parity import (  # noqa: F401  (collected here, over this module's `reference`)
    _input_ids,
    test_float32_logits_match_transformers_eager,
    test_greedy_generate_matches_transformers_and_full_recompute,
    test_logits_match_after_yaml_round_trip,
    test_logits_match_transformers,
    test_meta_build_then_load_materialises_everything,
)

import archspec

ODD = dict(vocab_size=97, hidden_size=48, num_attention_heads=6, max_position_embeddings=64, eos_token_id=None)
SLIDING, FULL = "sliding_attention", "full_attention"

CONFIGS = {
    # hidden_act "gelu" is the releases' legacy value for the tanh approximation
    "gemma-odd-legacy-gelu": T.GemmaConfig(
        **ODD, num_hidden_layers=3, num_key_value_heads=2, head_dim=20, intermediate_size=72, hidden_act="gelu"
    ),
    "gemma2-softcaps-window-pattern": T.Gemma2Config(
        **ODD,
        num_hidden_layers=4,
        num_key_value_heads=3,
        head_dim=24,
        intermediate_size=80,
        query_pre_attn_scalar=20,
        sliding_window=5,
        attn_logit_softcapping=0.5,
        final_logit_softcapping=1.5,
        tie_word_embeddings=False,
    ),
    "gemma3-local-global-rope": T.Gemma3TextConfig(
        **ODD,
        num_hidden_layers=5,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=64,
        query_pre_attn_scalar=24,
        sliding_window=5,
        layer_types=[SLIDING, SLIDING, FULL, SLIDING, FULL],
        rope_parameters={
            SLIDING: dict(rope_type="default", rope_theta=100.0),
            FULL: dict(rope_type="linear", rope_theta=10000.0, factor=4.0),
        },
        final_logit_softcapping=2.0,
    ),
    "gemma3-default-pattern-bias": T.Gemma3TextConfig(
        **ODD,
        num_hidden_layers=7,
        num_key_value_heads=3,
        head_dim=16,
        intermediate_size=64,
        sliding_window=4,
        attention_bias=True,
    ),  # fmt: skip
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request, tmp_path_factory):
    return saved_reference(request.param, CONFIGS[request.param], tmp_path_factory.mktemp(request.param))


def test_softcaps_are_read_and_bite(reference):
    """The spec carries the config's caps, and they are reached: the logits come near the logit cap, and without
    the attention cap the logits move by far more than rounding."""
    config = reference.float64.config
    spec = archspec.spec_from_hf(reference.directory)
    cap = getattr(config, "final_logit_softcapping", None)
    assert spec.embeddings.logit_softcap == cap
    expected_attention_cap = config.attn_logit_softcapping if config.model_type == "gemma2" else None
    assert spec.attention.softcap == expected_attention_cap
    ids = _input_ids(reference.name, config.vocab_size)
    model = archspec_from(reference.directory)
    logits = model(ids).logits
    if cap is not None:
        assert logits.abs().max() > 0.8 * cap
    if expected_attention_cap is not None:
        uncapped = archspec.build(spec.model_copy(update={"attention": spec.attention.model_copy(
            update={"softcap": None})}), dtype=torch.float64)  # fmt: skip
        uncapped.load_state_dict(model.state_dict())
        assert (uncapped(ids).logits - logits).abs().max() > 1e-3 * logits.abs().max()


def test_spec_says_the_layer_pattern(reference):
    spec = archspec.spec_from_hf(reference.directory)
    layer_types = reference.float64.config.layer_types if spec.block.kind == "sandwich" else None
    if layer_types is None:
        assert spec.layers is None
        return
    windows = [spec.window_for_layer(i) for i in range(spec.n_layers)]
    assert windows == [reference.float64.config.sliding_window if t == SLIDING else None for t in layer_types]


def test_save_hf_round_trip(reference, tmp_path):
    spec = archspec.spec_from_hf(reference.directory)
    model = archspec_from(reference.directory)
    archspec.save_hf(model, tmp_path / "out")
    written = archspec.spec_from_hf(tmp_path / "out")
    assert written.model_copy(update={"name": spec.name, "description": spec.description}) == spec
    assert_reproduces(model, load_transformers(tmp_path / "out"), spec)


def test_gemma3_4x_config_keys(tmp_path):
    """transformers 4.x wrote Gemma 3's RoPE as rope_theta (global), rope_local_base_freq and rope_scaling (of the
    global layers), and the pattern as sliding_window_pattern: the same spec as the 5.x keys."""
    config = CONFIGS["gemma3-local-global-rope"].to_dict()
    new = archspec.spec_from_hf(_written(tmp_path / "new", config))
    old = {k: v for k, v in config.items() if k not in ("rope_parameters", "layer_types")}
    old |= dict(rope_theta=10000.0, rope_local_base_freq=100.0, rope_scaling=dict(rope_type="linear", factor=4.0))
    old |= dict(sliding_window_pattern=3, num_hidden_layers=6)
    spec = archspec.spec_from_hf(_written(tmp_path / "old", old))
    assert spec.layers is not None and spec.layers.pattern == ["sliding", "sliding", "full"]
    assert spec.position == new.position
    assert spec.layers.kinds["sliding"] == new.layers.kinds["sliding"]


def _written(directory, config: dict):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def test_gemma3_against_transformers_reading_the_4x_keys(tmp_path):
    """Built from the 4.x keys, archspec and transformers (which reads them too) give the same logits."""
    config = CONFIGS["gemma3-local-global-rope"].to_dict()
    old = {k: v for k, v in config.items() if k not in ("rope_parameters", "layer_types")}
    old |= dict(rope_theta=10000.0, rope_local_base_freq=100.0, rope_scaling=dict(rope_type="linear", factor=4.0))
    reference = saved_reference("gemma3-4x", T.Gemma3TextConfig(**old), tmp_path)
    ids = _input_ids("gemma3-4x", 97)
    assert_logits_match(reference.float64, archspec_from(reference.directory), ids)


def test_embedding_scale_is_rounded_to_the_dtype(reference):
    """In bfloat16, sqrt(48) is rounded to bfloat16 before the multiply, as transformers' scaled embedding holds it
    in the model's dtype: not the same as multiplying by the Python float."""
    model = archspec_from(reference.directory, torch.bfloat16)
    ids = torch.tensor([[3, 5, 7, 11]])
    hooked = {}
    handle = model.layers[0].register_forward_pre_hook(lambda module, args: hooked.update(x=args[0]))
    model(ids)
    handle.remove()
    embedded = model.embed(ids)
    assert torch.equal(hooked["x"], embedded * torch.tensor(48**0.5, dtype=torch.bfloat16))
    assert not torch.equal(hooked["x"], embedded * 48**0.5)
