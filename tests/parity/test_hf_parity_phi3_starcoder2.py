"""StarCoder2 and Phi-3 / Phi-4-mini (LongRoPE) against transformers 5.25.0, with test_hf_parity's checks.

The parity tests of test_hf_parity (float64 logits at 1e-10 of max|logit|, float32 against eager, the YAML round
trip, greedy generation cached and not, meta build + load) run here over this file's CONFIGS: they are imported
under their own names, and pytest resolves their `reference` fixture to this module's. Odd shapes: 6 heads over
2 or 3 kv heads, head_dim 12 where d_model / heads is 8, 3 layers, windows of 5 under inputs of 13 tokens.
LongRoPE: original_max_position_embeddings 4 (the long factors for every call here), 32 (the short ones), and 8,
which generation from 5 to 13 tokens crosses (transformers then drops its cache and re-encodes: archspec without
a cache does the same; its cached keys keep the short factors, see test_longrope_generation_across_the_switch).
Phi3RMSNorm keeps its statistics in float32 even in a float64 model: lifted here as hf_reference lifts the others.
Also: save_hf round trips of each config (the written tensors equal transformers' own).
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers as T
from hf_reference import archspec_from, relative_difference, saved_reference
from test_hf_export import assert_reproduces, load_transformers
from test_hf_parity import (  # noqa: F401  (collected here, over this module's `reference`)
    _input_ids,
    test_float32_logits_match_transformers_eager,
    test_greedy_generate_matches_transformers_and_full_recompute,
    test_logits_match_after_yaml_round_trip,
    test_logits_match_transformers,
    test_meta_build_then_load_materialises_everything,
)
from tiny import import_emitted
from transformers.models.phi3 import modeling_phi3

import archspec
from archspec.emit import emit_source
from archspec.interop.errors import UnsupportedConfigError
from archspec.interop.hf_export import hf_config
from archspec.spec.schema import LongRopeScaling

ODD = dict(vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=6)
# rotary dims 6 of head_dim 8 (partial_rotary_factor 0.75): 3 frequencies, 3 factors each
SHORT, LONG = [1.0, 1.7, 3.3], [2.0, 5.5, 11.0]


def _longrope(original: int, **extra: object) -> dict:
    return dict(
        rope_type="longrope",
        rope_theta=10000.0,
        partial_rotary_factor=0.75,
        short_factor=SHORT,
        long_factor=LONG,
        original_max_position_embeddings=original,
        **extra,
    )


CONFIGS = {
    "starcoder2-gqa-window-bias": T.Starcoder2Config(
        **ODD,
        num_key_value_heads=2,
        intermediate_size=80,
        max_position_embeddings=64,
        sliding_window=5,
        use_bias=True,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,  # generation runs its 8 tokens
    ),
    "starcoder2-headdim-no-bias-tied": T.Starcoder2Config(
        **ODD,
        num_key_value_heads=3,
        head_dim=12,
        intermediate_size=72,
        hidden_act="gelu",
        use_bias=False,
        tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=500.0),
        bos_token_id=None,
        eos_token_id=None,  # generation runs its 8 tokens
    ),
    "phi3-gqa-window-headdim": T.Phi3Config(
        **ODD,
        num_key_value_heads=2,
        head_dim=12,
        intermediate_size=80,
        sliding_window=5,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,  # generation runs its 8 tokens
    ),
    # Phi-4-mini's shape: partial rotary 0.75, tied embeddings, LongRoPE; every call here is past original 4
    "phi4-mini-longrope-long-tied": T.Phi3Config(
        **ODD,
        num_key_value_heads=2,
        intermediate_size=80,
        max_position_embeddings=32,
        original_max_position_embeddings=4,
        rope_parameters=_longrope(4),
        tie_word_embeddings=True,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,  # generation runs its 8 tokens
    ),
    # every call here within original 32: the short factors, attention factor sqrt(1 + ln 4 / ln 32)
    "phi3-longrope-short-window": T.Phi3Config(
        **ODD,
        num_key_value_heads=3,
        intermediate_size=64,
        max_position_embeddings=128,
        original_max_position_embeddings=32,
        rope_parameters=_longrope(32),
        sliding_window=5,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,  # generation runs its 8 tokens
    ),
    # an explicit attention_factor, long factors (every call past 3)
    "phi3-longrope-attention-factor": T.Phi3Config(
        **ODD,
        num_key_value_heads=6,
        intermediate_size=64,
        max_position_embeddings=24,
        original_max_position_embeddings=3,
        rope_parameters=_longrope(3, attention_factor=1.3),
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,  # generation runs its 8 tokens
    ),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request, tmp_path_factory):
    """hf_reference.Reference for one tiny config: its directory, transformers in float32 (eager) and float64."""
    return saved_reference(request.param, CONFIGS[request.param], tmp_path_factory.mktemp(request.param))


def test_specs_say_what_the_configs_mean(reference):
    """The parity above could pass with a feature read the same wrong way on both sides of a round trip; pin the
    imported specs' meaning against the configs."""
    spec = archspec.spec_from_hf(reference.directory)
    config = reference.float64.config
    assert spec.attention.window == getattr(config, "sliding_window", None)
    assert spec.embeddings.tied == config.tie_word_embeddings
    scaling = spec.position.scaling
    if reference.name.startswith("starcoder2"):
        assert spec.norm.kind == "layernorm" and spec.mlp.activation in ("gelu-tanh", "gelu")
        assert spec.mlp.bias == spec.attention.bias.q == config.use_bias
    if "longrope" in reference.name:
        assert isinstance(scaling, LongRopeScaling)
        assert spec.rotary_dim == 6 and spec.head_dim == 8
        assert (scaling.short_factor, scaling.long_factor) == (SHORT, LONG)
        assert scaling.original_context == config.original_max_position_embeddings
        attention = reference.float64.model.rotary_emb.attention_scaling
        factor = config.max_position_embeddings / scaling.original_context
        assert attention == (
            scaling.attention_factor or math.sqrt(1 + math.log(factor) / math.log(scaling.original_context))
        )
    else:
        assert scaling is None


def test_longrope_tables_switch_with_the_length():
    """Short factors up to original_max_position_embeddings keys, long ones past it: the same float32 tables as
    transformers' rotary embedding (the harness inputs are all on one side of the switch; here both are)."""
    config = CONFIGS["phi3-longrope-short-window"]
    theirs = modeling_phi3.Phi3RotaryEmbedding(config)
    spec = archspec.spec_from_hf(config.to_dict(), name="x")
    ours = archspec.build(spec).rotary
    from archspec.nn.positions import Context

    for length in (31, 32, 33, 40):
        positions = torch.arange(length)
        cos, sin = theirs(torch.zeros(1, dtype=torch.float32), positions[None])
        rope = ours(Context(positions=positions, keys=length))
        assert torch.equal(rope.keywords["cos"], cos[0]) and torch.equal(rope.keywords["sin"], sin[0]), length


def test_longrope_generation_across_the_switch(tmp_path):
    """Generation from 5 to 13 tokens over original_max_position_embeddings 8: transformers drops its cache at 9
    tokens and re-encodes with the long factors; archspec without a cache re-encodes every step, which is the same.
    archspec's cached generate keeps the first 8 keys rotated with the short factors: its next logits differ."""
    config = T.Phi3Config(
        **{**CONFIGS["phi4-mini-longrope-long-tied"].to_dict(), "original_max_position_embeddings": 8}
    )
    assert config.rope_parameters["original_max_position_embeddings"] == 8
    reference = saved_reference("phi3-longrope-crossing", config, tmp_path)
    model = archspec_from(reference.directory)
    ids = _input_ids(reference.name, config.vocab_size, length=5)
    with torch.no_grad():
        expected = reference.float64.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False
        )
        assert torch.equal(model.generate(ids, max_new_tokens=8, use_cache=False), expected)
        # what differs: a step over a cache of 8 short-factor keys against the full recompute with long factors
        prefix = expected[:, :9]
        full = model(prefix).logits[:, -1]
        cache = model.new_cache(batch=2, max_len=9)
        model(prefix[:, :8], cache=cache)
        step = model(prefix[:, 8:], cache=cache).logits[:, -1]
    assert relative_difference(full, step) > 1e-6


@pytest.mark.parametrize("name", ["phi4-mini-longrope-long-tied", "phi3-longrope-short-window"])
def test_emitted_longrope_file_matches_transformers(name, tmp_path):
    """The stand-alone file of a LongRoPE spec (its short and long tables, the switch and the attention factor
    kept by the `longrope` feature) reproduces transformers' logits, below and past original_context."""
    reference = saved_reference(name, CONFIGS[name], tmp_path / "hf")
    spec = archspec.spec_from_hf(reference.directory)
    source = emit_source(spec)
    assert "long_inv_freq" in source and "longrope_frequencies" in source
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # float64 weights; the RoPE tables stay float32 (`.to` would cast them)
    try:
        emitted = import_emitted(spec, tmp_path).Model().eval()
    finally:
        torch.set_default_dtype(previous)
    assert emitted.rotary.long_inv_freq.dtype == torch.float32
    emitted.load_state_dict(archspec_from(reference.directory).state_dict(), strict=True)
    original = spec.position.scaling.original_context
    for length in sorted({original, original + 1, 13}):
        ids = _input_ids(name, spec.vocab_size, length=length)
        with torch.no_grad():
            expected, actual = reference.float64(ids).logits, emitted(ids).logits
        assert relative_difference(expected, actual) <= 1e-10, length


def test_files_without_longrope_have_none_of_its_code():
    spec = archspec.spec_from_hf(CONFIGS["phi3-gqa-window-headdim"].to_dict(), name="x")
    source = emit_source(spec)
    assert "self.long_inv_freq" not in source and "longrope_frequencies" not in source


def test_export_picks_phi3_for_what_only_phi3_expresses():
    """Partial half-pair RoPE and LongRoPE: no family before phi3 (Llama refuses partial rotary) expresses them."""
    for name in ("phi4-mini-longrope-long-tied", "phi3-longrope-short-window"):
        spec = archspec.spec_from_hf(CONFIGS[name].to_dict(), name="x")
        assert hf_config(spec)["model_type"] == "phi3"
    spec = archspec.spec_from_hf(CONFIGS["starcoder2-gqa-window-bias"].to_dict(), name="x")
    assert hf_config(spec)["model_type"] == "starcoder2"


def test_phi3_refuses_other_rope_types():
    config = CONFIGS["phi3-gqa-window-headdim"].to_dict()
    config["rope_parameters"] = dict(rope_type="linear", rope_theta=10000.0, factor=2.0)
    with pytest.raises(UnsupportedConfigError, match="rope_type 'linear'"):
        archspec.spec_from_hf(config, name="x")


def test_longrope_factor_counts_are_checked():
    config = CONFIGS["phi4-mini-longrope-long-tied"].to_dict()
    config["rope_parameters"] = {**config["rope_parameters"], "long_factor": [1.0, 2.0]}
    with pytest.raises(archspec.SpecError, match=r"long_factor.*has 2 factors; 6 rotary dims have 3 frequencies"):
        archspec.spec_from_hf(config, name="x")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_hf_archspec_hf_round_trip_is_exact(name, tmp_path):
    """save_hf of an imported model: transformers loads it with nothing missing, the tensors equal the original's,
    the spec reads back the same, logits agree in float32 (eager) and float64."""
    original = saved_reference(name, CONFIGS[name], tmp_path / "original").float32
    model = archspec_from(tmp_path / "original", torch.float32)
    # a Phi-3 that rotates whole heads without LongRoPE is also a Mistral, which export tries first: ask for phi3
    archspec.save_hf(model, tmp_path / "exported", model_type=original.config.model_type)
    exported = load_transformers(tmp_path / "exported", torch.float32)
    assert exported.config.model_type == original.config.model_type
    assert archspec.spec_from_hf(tmp_path / "exported", name=model.spec.name) == model.spec
    assert_reproduces(model, exported, model.spec)
    theirs, ours = original.state_dict(), exported.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(theirs[k].dtype == ours[k].dtype and torch.equal(theirs[k], ours[k]) for k in theirs)
    assert_reproduces(archspec_from(tmp_path / "exported"), load_transformers(tmp_path / "exported"), model.spec)
