"""OLMo 2, OLMo 3 and EXAONE 4.0 against transformers 5.25.0, with test_hf_parity's checks.

The parity tests of test_hf_parity (float64 logits at 1e-10 of max|logit|, float32 against eager, the YAML round
trip, greedy generation cached and not, meta build + load) run here over this file's CONFIGS, under this
module's `reference`. Odd shapes: 6 heads over 2 or 3 kv heads, head_dim 12, 16 or 20 where d_model / heads is 8
(OLMo's q/k norms then span 72 / 24 ... widths, not d_model), 3-5 layers with sliding and full attention mixed,
windows of 4 or 5 under inputs of 13 tokens, attention biases on, RoPE scalings (linear, yarn, llama3), OLMo 3's
sliding and full RoPE apart, EXAONE 4's global layers without positions. Olmo2RMSNorm, Olmo3RMSNorm and
Exaone4RMSNorm keep their statistics in float32 even in a float64 model: lifted here as hf_reference lifts the
others. Also: save_hf round trips, and configs as transformers 4.x wrote them.
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
from archspec.interop.errors import UnsupportedConfigError
from archspec.spec.schema import NoPositionSpec, QKNormSpec, RopeSpec

ODD = dict(vocab_size=97, hidden_size=48, num_attention_heads=6, max_position_embeddings=64)
NO_TOKENS = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None)  # generation runs its 8 tokens
SLIDING, FULL = "sliding_attention", "full_attention"
YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=16)
LLAMA3 = dict(
    rope_type="llama3",
    rope_theta=10000.0,
    factor=4.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=16,
)

CONFIGS = {
    "olmo2-gqa-headdim-bias-linear": T.Olmo2Config(
        **ODD,
        **NO_TOKENS,
        num_hidden_layers=3,
        num_key_value_heads=2,
        head_dim=12,
        intermediate_size=80,
        attention_bias=True,
        rope_parameters=dict(rope_type="linear", rope_theta=500.0, factor=2.0),
    ),
    "olmo2-kv3-tied-yarn": T.Olmo2Config(
        **ODD,
        **NO_TOKENS,
        num_hidden_layers=4,
        num_key_value_heads=3,
        intermediate_size=72,
        tie_word_embeddings=True,
        rope_parameters=YARN,
        rms_norm_eps=1e-6,
    ),
    # the default pattern (3 sliding, 1 full): S S S F S; sliding and full RoPE apart
    "olmo3-default-pattern-yarn-full": T.Olmo3Config(
        **ODD,
        **NO_TOKENS,
        num_hidden_layers=5,
        num_key_value_heads=3,
        head_dim=16,
        intermediate_size=64,
        sliding_window=5,
        rope_parameters={SLIDING: dict(rope_type="default", rope_theta=100.0), FULL: YARN},
    ),
    "olmo3-explicit-types-bias-tied": T.Olmo3Config(
        **ODD,
        **NO_TOKENS,
        num_hidden_layers=4,
        num_key_value_heads=2,
        head_dim=20,
        intermediate_size=64,
        sliding_window=4,
        layer_types=[FULL, SLIDING, SLIDING, FULL],
        attention_bias=True,
        tie_word_embeddings=True,
        rope_parameters={
            SLIDING: dict(rope_type="default", rope_theta=1000.0),
            FULL: dict(rope_type="default", rope_theta=1000.0),
        },
    ),
    # the default pattern 4: L L L G L, the global layer without RoPE
    "exaone4-lllg-nope-global-llama3": T.Exaone4Config(
        **ODD,
        **NO_TOKENS,
        num_hidden_layers=5,
        num_key_value_heads=2,
        head_dim=12,
        intermediate_size=80,
        sliding_window=5,
        rope_parameters=LLAMA3,
    ),
    "exaone4-explicit-types-headdim": T.Exaone4Config(
        **ODD,
        **NO_TOKENS,
        num_hidden_layers=4,
        num_key_value_heads=3,
        head_dim=20,
        intermediate_size=64,
        sliding_window=4,
        layer_types=[FULL, SLIDING, SLIDING, FULL],
        tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=300.0),
    ),
    # no window: every layer full attention *with* RoPE (the 1.2B's layout)
    "exaone4-no-window-all-rope-tied": T.Exaone4Config(
        **ODD,
        **NO_TOKENS,
        num_hidden_layers=3,
        num_key_value_heads=3,
        intermediate_size=72,
        sliding_window=None,
        layer_types=[FULL] * 3,
        tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=500.0),
    ),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request, tmp_path_factory):
    return saved_reference(request.param, CONFIGS[request.param], tmp_path_factory.mktemp(request.param))


def test_specs_say_what_the_configs_mean(reference):
    """Pin the imported specs' meaning against the configs (a feature read the same wrong way on both sides of a
    round trip would pass the parity tests): the block, the q/k norms, each layer's window and positions."""
    spec = archspec.spec_from_hf(reference.directory)
    config = reference.float64.config
    assert spec.block.kind == "output-norm"
    assert spec.embeddings.tied == config.tie_word_embeddings
    assert spec.head_dim == getattr(config, "head_dim", 8)
    model_type = config.model_type
    flag = getattr(config, "attention_bias", False)
    assert (spec.attention.bias.q, spec.attention.bias.o, spec.mlp.bias) == (flag, flag, False)
    if model_type.startswith("olmo"):
        assert spec.attention.qk_norm == QKNormSpec(over="projection")
    else:
        assert spec.attention.qk_norm == QKNormSpec()
    types = getattr(config, "layer_types", None) or [FULL] * config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    windows = [window if t == SLIDING and window is not None else None for t in types]
    assert [spec.window_for_layer(i) for i in range(spec.n_layers)] == windows
    positions = [spec.position_for_layer(i) for i in range(spec.n_layers)]
    if model_type == "exaone4":  # NoPE exactly on the global layers, when there is a window
        assert [isinstance(p, NoPositionSpec) for p in positions] == [w is None and window is not None for w in windows]
    else:
        assert all(isinstance(p, RopeSpec) for p in positions)
    if model_type == "olmo3":
        for i, t in enumerate(types):
            assert positions[i].theta == config.rope_parameters[t]["rope_theta"]


def test_save_hf_round_trip(reference, tmp_path):
    spec = archspec.spec_from_hf(reference.directory)
    model = archspec_from(reference.directory)
    archspec.save_hf(model, tmp_path / "out")
    written = archspec.spec_from_hf(tmp_path / "out")
    assert (
        json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == reference.float64.config.model_type
    )
    assert written.model_copy(update={"name": spec.name, "description": spec.description}) == spec
    assert_reproduces(model, load_transformers(tmp_path / "out"), spec)


def _written(directory, config: dict):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _without(config: T.PretrainedConfig, *keys: str) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in keys}


def test_olmo2_4x_config_keys(tmp_path):
    """transformers 4.x wrote rope_theta and rope_scaling: the same spec as 5.x's rope_parameters, and the same
    logits as transformers reading them."""
    name = "olmo2-gqa-headdim-bias-linear"
    old = _without(CONFIGS[name], "rope_parameters") | dict(
        rope_theta=500.0, rope_scaling=dict(type="linear", factor=2.0)
    )
    new = archspec.spec_from_hf(CONFIGS[name].to_dict(), name="x")
    assert archspec.spec_from_hf(old, name="x") == new
    reference = saved_reference("olmo2-4x", T.Olmo2Config(**old), tmp_path)
    assert_logits_match(reference.float64, archspec_from(reference.directory), _input_ids("olmo2-4x", 97))


def test_olmo3_4x_config_keys_as_published(tmp_path):
    """The published OLMo 3 configs (4.x keys): rope_theta 500000 and a YaRN rope_scaling, which 5.25 gives the
    full layers only; the sliding layers keep plain RoPE at 500000."""
    base = _without(CONFIGS["olmo3-default-pattern-yarn-full"], "rope_parameters", "layer_types")
    base["num_hidden_layers"] = 12  # the pattern of 4 beats one kind plus 3 exceptions
    yarn = {k: v for k, v in YARN.items() if k != "rope_theta"}
    old = base | dict(rope_theta=500000.0, rope_scaling=yarn)
    spec = archspec.spec_from_hf(old, name="x")
    nested = base | dict(rope_parameters={SLIDING: dict(rope_type="default", rope_theta=500000.0),
                                          FULL: dict(YARN, rope_theta=500000.0)})  # fmt: skip
    assert spec == archspec.spec_from_hf(nested, name="x")
    assert spec.layers is not None and spec.layers.pattern == ["sliding", "sliding", "sliding", "full"]
    assert spec.position.scaling is not None and spec.layers.kinds["sliding"].position.scaling is None
    reference = saved_reference("olmo3-4x", T.Olmo3Config(**old), tmp_path)
    assert_logits_match(reference.float64, archspec_from(reference.directory), _input_ids("olmo3-4x", 97))


def test_olmo3_4x_rope_theta_reaches_the_full_layers_only(tmp_path):
    """5.25's Olmo3Config pops a 4.x rope_theta for the full layers; the sliding ones get default_theta 500000.
    archspec reads it as 5.25 does (transformers 4.x used rope_theta on both: the published configs, at 500000,
    cannot tell the two apart)."""
    old = _without(CONFIGS["olmo3-default-pattern-yarn-full"], "rope_parameters") | dict(rope_theta=1000.0)
    spec = archspec.spec_from_hf(old, name="x")
    assert spec.position.theta == 1000.0
    assert spec.layers.kinds["sliding"].position.theta == 500000.0
    reference = saved_reference("olmo3-4x-theta", T.Olmo3Config(**old), tmp_path)
    assert reference.float64.config.rope_parameters[SLIDING]["rope_theta"] == 500000.0
    assert_logits_match(reference.float64, archspec_from(reference.directory), _input_ids("olmo3-4x-theta", 97))


def test_olmo3_refuses_flat_rope_parameters():
    """Olmo3Config ignores an un-nested rope_parameters (it adds both layer types' defaults beside it)."""
    config = CONFIGS["olmo3-explicit-types-bias-tied"].to_dict()
    config["rope_parameters"] = dict(rope_type="default", rope_theta=1000.0)
    with pytest.raises(UnsupportedConfigError, match="nested per layer type"):
        archspec.spec_from_hf(config, name="x")


def test_exaone4_4x_config_keys(tmp_path):
    """4.x's rope_theta / rope_scaling and a string sliding_window_pattern "LLLG" (which 5.25's config class
    cannot take without layer_types) read as 5.x's rope_parameters and the integer pattern 4."""
    name = "exaone4-lllg-nope-global-llama3"
    new = archspec.spec_from_hf(CONFIGS[name].to_dict(), name="x")
    scaling = {k: v for k, v in LLAMA3.items() if k != "rope_theta"}
    old = _without(CONFIGS[name], "rope_parameters") | dict(rope_theta=10000.0, rope_scaling=scaling)
    assert archspec.spec_from_hf(old, name="x") == new
    lettered = {k: v for k, v in old.items() if k != "layer_types"} | dict(sliding_window_pattern="LLLG")
    assert archspec.spec_from_hf(lettered, name="x") == new
    assert [new.layers.kind_of(i) for i in range(5)] == ["sliding", "sliding", "sliding", "global", "sliding"]
    reference = saved_reference("exaone4-4x", T.Exaone4Config(**old), tmp_path)
    assert_logits_match(reference.float64, archspec_from(reference.directory), _input_ids("exaone4-4x", 97))
    with pytest.raises(UnsupportedConfigError, match="only L"):
        archspec.spec_from_hf(lettered | dict(sliding_window_pattern="LLXG"), name="x")


@pytest.mark.parametrize("name", ["exaone4-lllg-nope-global-llama3", "exaone4-explicit-types-headdim"])
def test_exaone4_global_layers_have_no_positions(name, tmp_path):
    """Rotating the global layers' q and k changes the logits: the NoPE kind is not a no-op on these inputs."""
    reference = saved_reference(name, CONFIGS[name], tmp_path)
    spec = archspec.spec_from_hf(reference.directory)
    assert spec.layers is not None and spec.layers.kinds["global"].position.kind == "none"
    model = archspec_from(reference.directory)
    kinds = {**spec.layers.kinds, "global": spec.layers.kinds["global"].model_copy(update={"position": None})}
    rotated = archspec.build(spec.model_copy(update={"layers": spec.layers.model_copy(update={"kinds": kinds})}),
                             dtype=torch.float64)  # fmt: skip
    rotated.load_state_dict(model.state_dict())
    ids = _input_ids(reference.name, spec.vocab_size)
    with torch.no_grad():
        assert (rotated(ids).logits - model(ids).logits).abs().max() > 1e-3 * model(ids).logits.abs().max()


def test_export_picks_each_family():
    """An output-norm spec goes to olmo2 (projection q/k norms, one kind of layer), olmo3 (sliding layers) or
    exaone4 (per-head q/k norms); no earlier family expresses them."""
    from archspec.interop.hf_export import hf_config

    for name, config in CONFIGS.items():
        spec = archspec.spec_from_hf(config.to_dict(), name="x")
        assert hf_config(spec)["model_type"] == config.model_type, name
