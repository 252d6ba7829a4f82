"""Cohere (Command-R), Cohere 2 (Command R7B / A) and Granite 3.x against transformers 5.25.0, with test_hf_parity's
checks.

The parity tests of test_hf_parity (float64 logits at 1e-10 of max|logit|, float32 against eager, the YAML round
trip, greedy generation cached and not, meta build + load) run here over this file's CONFIGS, under this module's
`reference`. Odd shapes: 6 heads over 2 or 3 kv heads, head_dim 12 where d_model / heads is 8 (Cohere and Granite
read a config's head_dim; Cohere 2 forces d_model / heads), 3-5 layers, windows of 5 under inputs of 13 tokens.
Options turned on: Cohere's per-head q/k LayerNorms and biases, linear RoPE scaling, untied heads; Cohere 2's
default 3-sliding-1-global pattern and an explicit layer_types that starts with a global (NoPE) layer; Granite's
four multipliers, none a power of two where that matters (logits_scaling 3: division against a multiply by 1/3).
Also: save_hf round trips, and configs as transformers 4.x wrote them.

CohereLayerNorm / Cohere2LayerNorm and GraniteRMSNorm keep their statistics in float32, and Cohere's
apply_rotary_pos_emb rotates q and k in float32, even in a float64 model: lifted here as hf_reference lifts the
others (hf_reference.keep_float64).
"""

from __future__ import annotations

import json

import pytest
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
from archspec.interop.errors import UnsupportedConfigError
from archspec.interop.hf_export import hf_config
from archspec.spec.schema import NoPositionSpec, RopeSpec

SLIDING, FULL = "sliding_attention", "full_attention"
ODD = dict(vocab_size=97, hidden_size=48, num_attention_heads=6, max_position_embeddings=64)
NO_TOKENS = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)  # generation runs its 8 tokens

CONFIGS = {
    "cohere-qk-norm-headdim-bias": T.CohereConfig(
        **ODD,
        **NO_TOKENS,
        num_hidden_layers=3,
        num_key_value_heads=2,
        head_dim=12,
        intermediate_size=72,
        use_qk_norm=True,
        attention_bias=True,
        logit_scale=0.3,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
    ),
    "cohere-linear-rope-untied": T.CohereConfig(
        **ODD,
        **NO_TOKENS,
        num_hidden_layers=4,
        num_key_value_heads=3,
        intermediate_size=64,
        tie_word_embeddings=False,
        rope_parameters=dict(rope_type="linear", rope_theta=1000.0, factor=2.0),
    ),
    # the class default pattern: layers 0-2 slide and rotate, layer 3 is global without positions, layer 4 slides
    "cohere2-default-pattern": T.Cohere2Config(
        **ODD,
        **NO_TOKENS,
        num_hidden_layers=5,
        num_key_value_heads=2,
        intermediate_size=64,
        sliding_window=5,
        logit_scale=0.25,
        rope_parameters=dict(rope_type="default", rope_theta=500.0),
    ),
    "cohere2-layer-types-bias-untied": T.Cohere2Config(
        **ODD,
        **NO_TOKENS,
        num_hidden_layers=4,
        num_key_value_heads=3,
        intermediate_size=80,
        sliding_window=5,
        layer_types=[FULL, SLIDING, FULL, SLIDING],
        attention_bias=True,
        tie_word_embeddings=False,
        logit_scale=0.7,
    ),
    # Granite 3.x's 8B multipliers in shape (embedding 12, residual 0.22), a softmax scale far from head_dim^-0.5
    "granite-multipliers-tied": T.GraniteConfig(
        **ODD,
        **NO_TOKENS,
        num_hidden_layers=3,
        num_key_value_heads=2,
        intermediate_size=64,
        tie_word_embeddings=True,
        embedding_multiplier=12.0,
        residual_multiplier=0.22,
        attention_multiplier=0.3,
        logits_scaling=3.0,
        rope_parameters=dict(rope_type="default", rope_theta=10_000_000.0),
    ),
    "granite-headdim-bias-linear": T.GraniteConfig(
        **ODD,
        **NO_TOKENS,
        num_hidden_layers=3,
        num_key_value_heads=3,
        head_dim=12,
        intermediate_size=72,
        attention_bias=True,
        mlp_bias=True,
        embedding_multiplier=2.5,
        residual_multiplier=0.6,
        attention_multiplier=0.125,
        logits_scaling=16.0,
        rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
    ),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request, tmp_path_factory):
    return saved_reference(request.param, CONFIGS[request.param], tmp_path_factory.mktemp(request.param))


def test_specs_say_what_the_configs_mean(reference):
    """Pin the imported specs' meaning against the configs (a feature read the same wrong way on both sides of a
    round trip would pass the parity above)."""
    spec = archspec.spec_from_hf(reference.directory)
    config = reference.float64.config
    assert spec.embeddings.tied == config.tie_word_embeddings
    if config.model_type == "granite":
        assert (spec.norm.kind, spec.block.kind) == ("rmsnorm", "pre-norm")
        assert spec.block.residual_scale == config.residual_multiplier
        assert spec.attention.scale == config.attention_multiplier
        assert spec.embeddings.scale == config.embedding_multiplier
        assert spec.embeddings.logit_scale == 1 / config.logits_scaling
        assert spec.head_dim == reference.float64.model.layers[0].self_attn.head_dim
        return
    assert (spec.norm.kind, spec.norm.bias, spec.block.kind, spec.block.parallel_norms) == (
        "layernorm",
        False,
        "parallel",
        1,
    )
    assert spec.embeddings.logit_scale == config.logit_scale
    assert spec.head_dim == reference.float64.model.layers[0].self_attn.head_dim
    if config.model_type == "cohere":
        assert (spec.attention.qk_norm is not None) == config.use_qk_norm
        if config.use_qk_norm:
            assert spec.attention.qk_norm.per_head_weights and not spec.attention.qk_norm.after_rope
        assert spec.layers is None and spec.position.pairing == "interleaved"
        return
    for index, layer in enumerate(reference.float64.model.layers):  # transformers rotates where it slides
        window = layer.self_attn.sliding_window
        assert spec.window_for_layer(index) == window
        position = spec.position_for_layer(index)
        assert isinstance(position, RopeSpec if window is not None else NoPositionSpec), index


def test_save_hf_round_trip(reference, tmp_path):
    spec = archspec.spec_from_hf(reference.directory)
    model = archspec_from(reference.directory)
    archspec.save_hf(model, tmp_path / "out")
    written = archspec.spec_from_hf(tmp_path / "out")
    assert written.model_copy(update={"name": spec.name, "description": spec.description}) == spec
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == reference.float64.config.model_type
    assert_reproduces(model, load_transformers(tmp_path / "out"), spec)


def test_granite_logits_scaling_is_written_as_the_config_wrote_it():
    """1 / logit_scale is not always exactly logits_scaling (1 / (1 / x) can be x's neighbour): export writes the
    shortest decimal whose reciprocal is the spec's logit_scale."""
    for scaling in (3.0, 16.0, 7.1, 0.3, 49.0):
        config = CONFIGS["granite-multipliers-tied"].to_dict() | {"logits_scaling": scaling}
        spec = archspec.spec_from_hf(config, name="x")
        assert hf_config(spec)["logits_scaling"] == scaling


def _written(directory, config: dict):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _as_4x(config: T.PretrainedConfig, **extra: object) -> dict:
    """The config without 5.x's rope_parameters / layer_types: rope_theta and rope_scaling at the top."""
    data = {k: v for k, v in config.to_dict().items() if k not in ("rope_parameters", "layer_types")}
    params = dict(config.rope_parameters)
    data["rope_theta"] = params.pop("rope_theta")
    data["rope_scaling"] = None if params.get("rope_type") == "default" else params
    return data | extra


# Command R7B's config.json (transformers 4.48) carries keys no 5.25 class reads, all meaning what 5.25 hard-codes
R7B_KEYS = dict(
    position_embedding_type="rope_gptj",
    rotary_pct=1.0,
    order_of_interleaved_layers="local_attn_first",
    use_gated_activation=True,
    use_embedding_sharing=True,
    layer_switch=4,
    cache_implementation="hybrid",
)


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("cohere-linear-rope-untied", {}),
        ("granite-headdim-bias-linear", {}),
        ("cohere2-default-pattern", dict(R7B_KEYS, sliding_window_pattern=4)),
    ],
)
def test_4x_config_keys_read_as_the_5x_ones(name, extra, tmp_path):
    """transformers 4.x wrote rope_theta / rope_scaling (and Cohere 2's sliding_window_pattern, no layer_types):
    the same spec as the 5.x keys, and transformers reading the 4.x keys gives the same logits as archspec."""
    config = CONFIGS[name]
    old = _as_4x(config, **extra)
    new_spec = archspec.spec_from_hf(_written(tmp_path / "new", config.to_dict()))
    old_spec = archspec.spec_from_hf(_written(tmp_path / "old", old))
    assert old_spec.model_copy(update={"name": new_spec.name}) == new_spec
    reference = saved_reference(f"{name}-4x", type(config)(**old), tmp_path / "reference")
    assert reference.float64.config.to_dict()["rope_parameters"] == config.rope_parameters
    ids = _input_ids(name, config.vocab_size)
    assert_logits_match(reference.float64, archspec_from(reference.directory), ids)


def test_cohere2_sliding_window_pattern_of_4x():
    """sliding_window_pattern 2 without layer_types: every second layer global, as Cohere2Config builds it."""
    config = _as_4x(CONFIGS["cohere2-default-pattern"], sliding_window_pattern=2)
    spec = archspec.spec_from_hf(config, name="x")
    assert spec.layers is not None and spec.layers.pattern == ["sliding", "full"]
    assert T.Cohere2Config(**config).layer_types == [SLIDING, FULL] * 2 + [SLIDING]


@pytest.mark.parametrize("layer_type", [SLIDING, FULL])
def test_cohere2_all_alike_needs_no_layers_section(layer_type):
    """All sliding: one window and RoPE everywhere; all full: no positions anywhere (and a sliding_window that is
    never applied, which export still writes, since Cohere2Model builds a sliding mask for every config)."""
    config = CONFIGS["cohere2-default-pattern"].to_dict() | {"layer_types": [layer_type] * 5}
    spec = archspec.spec_from_hf(config, name="x")
    assert spec.layers is None
    if layer_type == SLIDING:
        assert spec.attention.window == 5 and isinstance(spec.position, RopeSpec)
    else:
        assert spec.attention.window is None and isinstance(spec.position, NoPositionSpec)
    written = hf_config(spec)
    assert written["model_type"] == "cohere2" and written["layer_types"] == [layer_type] * 5
    assert written["sliding_window"] is not None


def test_cohere2_without_a_window_is_refused():
    config = CONFIGS["cohere2-default-pattern"].to_dict() | {"sliding_window": None}
    with pytest.raises(UnsupportedConfigError, match="sliding_window null"):
        archspec.spec_from_hf(config, name="x")


def test_export_refuses_what_cohere_cannot_say():
    """A Cohere spec with the norm's bias, or half-pair RoPE, is no Cohere model (nor any other family's)."""
    spec = archspec.spec_from_hf(CONFIGS["cohere-qk-norm-headdim-bias"].to_dict(), name="x")
    for update in (
        {"norm": spec.norm.model_copy(update={"bias": True})},
        {"position": spec.position.model_copy(update={"pairing": "half"})},
    ):
        with pytest.raises(archspec.ArchspecError):
            hf_config(spec.model_copy(update=update), model_type="cohere")
