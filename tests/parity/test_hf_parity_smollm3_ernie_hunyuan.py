"""SmolLM3 (NoPE layers), ERNIE 4.5 dense (interleaved RoPE) and Hunyuan dense (qk-norm after RoPE, NTK-alpha)
against transformers 5.25.0, with test_hf_parity's checks.

The parity tests of test_hf_parity (float64 logits at 1e-10 of max|logit|, float32 against eager, the YAML round
trip, greedy generation cached and not, meta build + load) run here over this file's CONFIGS, under this
module's `reference`. Odd shapes: 6 heads over 2 or 3 kv heads, head_dim 12 or 16 where d_model / heads is 8,
3-5 layers so that the NoPE / sliding patterns show, windows of 5 under inputs of 13 tokens, biases on.
The three families' RMSNorms keep their statistics in float32 and ERNIE rotates `q.float()` / `k.float()`: lifted
in float64 here (hf_reference.keep_float64). Also: save_hf round trips, and configs as transformers 4.x wrote them.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from hf_reference import archspec_from, assert_logits_match, load_reference, saved_reference
from test_hf_export import assert_reproduces, load_transformers
from test_hf_parity import (  # noqa: F401  (collected here, over this module's `reference`)
    _input_ids,
    test_float32_logits_match_transformers_eager,
    test_greedy_generate_matches_transformers_and_full_recompute,
    test_logits_match_after_yaml_round_trip,
    test_logits_match_transformers,
    test_meta_build_then_load_materialises_everything,
)
from transformers.models.ernie4_5 import modeling_ernie4_5
from transformers.models.hunyuan_v1_dense import modeling_hunyuan_v1_dense

import archspec
from archspec.interop.errors import UnsupportedConfigError
from archspec.spec.schema import NoPositionSpec, QKNormSpec, RopeSpec

# eos None: generation runs its 8 tokens; SmolLM3's default ids lie outside a 97-token vocabulary
ODD = dict(
    vocab_size=97, hidden_size=48, num_attention_heads=6, pad_token_id=None, bos_token_id=None, eos_token_id=None
)
SLIDING, FULL = "sliding_attention", "full_attention"
ALPHA = dict(rope_type="dynamic", rope_theta=10000.0, alpha=1000.0, factor=1.0)

CONFIGS = {
    # NoPE every 3rd layer (layer 2), head_dim 12 != 48 / 6, a theta of its own
    "smollm3-nope-interval-headdim": T.SmolLM3Config(
        **ODD,
        num_hidden_layers=5,
        num_key_value_heads=2,
        head_dim=12,
        intermediate_size=72,
        no_rope_layer_interval=3,
        rope_parameters=dict(rope_type="default", rope_theta=500.0),
    ),  # fmt: skip
    # the class's own rule: the NoPE layer (3) slides, the RoPE layers attend in full; biases; linear RoPE
    "smollm3-sliding-nope-bias-untied": T.SmolLM3Config(
        **ODD,
        num_hidden_layers=4,
        num_key_value_heads=3,
        intermediate_size=80,
        use_sliding_window=True,
        sliding_window=5,
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
        rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
    ),  # fmt: skip
    # explicit lists: every RoPE / NoPE x sliding / full pair; sliding_attention without use_sliding_window slides
    # under eager and sdpa (the mask is built from layer_types and sliding_window alone)
    "smollm3-explicit-lists": T.SmolLM3Config(
        **ODD,
        num_hidden_layers=5,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=64,
        sliding_window=5,
        no_rope_layers=[0, 1, 0, 1, 1],
        layer_types=[SLIDING, SLIDING, FULL, FULL, SLIDING],
    ),  # fmt: skip
    "ernie-headdim-bias-tied": T.Ernie4_5Config(
        **ODD,
        num_hidden_layers=3,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=72,
        use_bias=True,
        rope_parameters=dict(rope_type="default", rope_theta=500000.0),
    ),  # fmt: skip
    # head_dim null: hidden_size / heads; linear RoPE on interleaved pairs; untied
    "ernie-untied-linear-rope": T.Ernie4_5Config(
        **ODD,
        num_hidden_layers=4,
        num_key_value_heads=3,
        head_dim=None,
        intermediate_size=64,
        tie_word_embeddings=False,
        rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=3.0),
    ),  # fmt: skip
    "hunyuan-ntk-alpha-headdim": T.HunYuanDenseV1Config(
        **ODD,
        num_hidden_layers=3,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=72,
        rope_parameters=ALPHA,
    ),  # fmt: skip
    # dynamic NTK without alpha, past max_position_embeddings 8 (13 tokens); biases; tied
    "hunyuan-dynamic-bias-tied": T.HunYuanDenseV1Config(
        **ODD,
        num_hidden_layers=4,
        num_key_value_heads=3,
        head_dim=12,
        intermediate_size=64,
        attention_bias=True,
        tie_word_embeddings=True,
        max_position_embeddings=8,
        rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0),
    ),  # fmt: skip
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request, tmp_path_factory):
    """hf_reference.Reference for one tiny config: its directory, transformers in float32 (eager) and float64."""
    return saved_reference(request.param, CONFIGS[request.param], tmp_path_factory.mktemp(request.param))


def test_specs_say_what_the_configs_mean(reference):
    """Pin the imported specs' meaning against the modules transformers built (a feature read the same wrong way
    on both sides of a round trip would pass the parity above)."""
    spec = archspec.spec_from_hf(reference.directory)
    model = reference.float64
    config = model.config
    assert spec.embeddings.tied == config.tie_word_embeddings
    layers = model.model.layers
    for index, layer in enumerate(layers):
        attn = layer.self_attn
        assert spec.head_dim == attn.head_dim
        assert (attn.q_proj.bias is not None) == spec.attention.bias.q == spec.attention.bias.o
        assert (layer.mlp.up_proj.bias is not None) == spec.mlp.bias
        position = spec.position_for_layer(index)
        if config.model_type == "smollm3":
            assert isinstance(position, RopeSpec if attn.use_rope else NoPositionSpec), index
            expected = config.sliding_window if config.layer_types[index] == SLIDING else None
            assert spec.window_for_layer(index) == expected, index
        else:
            assert isinstance(position, RopeSpec) and spec.window_for_layer(index) is None
    if config.model_type == "ernie4_5":
        assert spec.position.pairing == "interleaved" and spec.attention.qk_norm is None
    if config.model_type == "hunyuan_v1_dense":
        assert spec.attention.qk_norm == QKNormSpec(after_rope=True)
    if config.model_type == "smollm3":
        assert any(isinstance(spec.position_for_layer(i), NoPositionSpec) for i in range(spec.n_layers))


def test_ntk_alpha_is_a_static_base_read_exactly():
    """Hunyuan's "dynamic" with alpha: theta * alpha ** (d / (d - 2)) as a fixed base, the same float32
    frequencies as transformers' rotary embedding, at every length (no dynamic update)."""
    config = CONFIGS["hunyuan-ntk-alpha-headdim"]
    spec = archspec.spec_from_hf(config.to_dict(), name="x")
    assert spec.position.scaling is None
    assert spec.position.theta == 10000.0 * 1000.0 ** (16 / 14)
    theirs = modeling_hunyuan_v1_dense.HunYuanDenseV1RotaryEmbedding(config)
    assert theirs.rope_type == "ntk_alpha"
    ours = archspec.build(spec).rotary
    assert torch.equal(ours.inv_freq, theirs.inv_freq)
    from archspec.nn.positions import Context

    for length in (5, 13, 200):  # 200: far past max_position_embeddings, where "dynamic" alone would rescale
        positions = torch.arange(length)
        cos, sin = theirs(torch.zeros(1, dtype=torch.float32), positions[None])
        rope = ours(Context(positions=positions, keys=length))
        assert torch.equal(rope.keywords["cos"], cos[0]) and torch.equal(rope.keywords["sin"], sin[0]), length


def test_save_hf_round_trip(reference, tmp_path):
    """save_hf of an imported model: transformers loads it with nothing missing, the spec reads back the same,
    the tensors equal the original's, logits agree in float64."""
    spec = archspec.spec_from_hf(reference.directory)
    model = archspec_from(reference.directory)
    archspec.save_hf(model, tmp_path / "out", model_type=reference.float64.config.model_type)
    written = archspec.spec_from_hf(tmp_path / "out")
    assert written.model_copy(update={"name": spec.name, "description": spec.description}) == spec
    exported = load_transformers(tmp_path / "out")
    assert_reproduces(model, exported, spec)
    theirs, ours = reference.float64.state_dict(), exported.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)


def test_export_picks_each_family_for_what_only_it_expresses():
    for name, model_type in (
        ("smollm3-explicit-lists", "smollm3"),
        ("ernie-headdim-bias-tied", "ernie4_5"),
        ("hunyuan-dynamic-bias-tied", "hunyuan_v1_dense"),
    ):
        spec = archspec.spec_from_hf(CONFIGS[name].to_dict(), name="x")
        assert archspec.interop.hf_export.hf_config(spec)["model_type"] == model_type, name


# ------------------------------------------------------------------------------------ 4.x-style configs
def _written(directory, config: dict):
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def _as_4x(name: str, rope: dict) -> dict:
    """CONFIGS[name] with 4.x's rope keys (rope_theta, rope_scaling) in place of rope_parameters."""
    config = {k: v for k, v in CONFIGS[name].to_dict().items() if k != "rope_parameters"}
    return config | rope


FOUR_X = {
    # Hunyuan's hub configs: {"type": "dynamic", "alpha": ..., "factor": 1} with integer values
    "hunyuan-ntk-alpha-headdim": dict(rope_theta=10000, rope_scaling=dict(type="dynamic", alpha=1000, factor=1)),
    "hunyuan-dynamic-bias-tied": dict(rope_theta=10000.0, rope_scaling=dict(type="dynamic", factor=2.0)),
    "smollm3-nope-interval-headdim": dict(rope_theta=500.0, rope_scaling=None),
    "ernie-untied-linear-rope": dict(rope_theta=10000.0, rope_scaling=dict(type="linear", factor=3.0)),
}


@pytest.mark.parametrize("name", sorted(FOUR_X))
def test_4x_config_keys(name, tmp_path):
    """rope_theta / rope_scaling as 4.x wrote them: the same spec as the 5.x keys, and archspec and transformers
    (which reads them too) give the same logits."""
    new = archspec.spec_from_hf(CONFIGS[name].to_dict(), name="x")
    old = _as_4x(name, FOUR_X[name])
    assert archspec.spec_from_hf(_written(tmp_path / "old", old), name="x") == new
    config_class = type(CONFIGS[name])
    reference = saved_reference(name, config_class(**old), tmp_path / "reference")
    ids = _input_ids(name, 97)
    assert_logits_match(reference.float64, archspec_from(reference.directory), ids)


def test_smollm3_all_nope_and_longer_list():
    """Every layer NoPE: no layers section, position none; a no_rope_layers list longer than the stack counts its
    first num_hidden_layers entries."""
    config = CONFIGS["smollm3-nope-interval-headdim"].to_dict() | {"no_rope_layers": [0, 0, 0, 0, 0, 1, 1]}
    spec = archspec.spec_from_hf(config, name="x")
    assert spec.layers is None and isinstance(spec.position, NoPositionSpec)


def test_hunyuan_refuses_what_transformers_does_not_run():
    config = CONFIGS["hunyuan-ntk-alpha-headdim"].to_dict()
    with pytest.raises(UnsupportedConfigError, match="use_cla"):
        archspec.spec_from_hf(config | {"use_cla": True, "cla_share_factor": 2}, name="x")
    with pytest.raises(UnsupportedConfigError, match="use_qk_norm"):
        archspec.spec_from_hf(config | {"use_qk_norm": False}, name="x")


def test_ernie_half_precision_rotation_is_the_known_gap(tmp_path, monkeypatch):
    """ERNIE rotates q and k in float32 with float32 tables and rounds once; archspec rotates in the model's dtype.
    In bfloat16 the logits therefore differ, and only by that: with transformers' rotation done in bfloat16 (as
    archspec does it) they are equal. Fails, as it should, once archspec gains a float32 rotation for ERNIE."""
    name = "ernie-headdim-bias-tied"
    reference = saved_reference(name, CONFIGS[name], tmp_path)
    theirs = load_reference(reference.directory, dtype=torch.bfloat16)
    ids = _input_ids(name, 97)
    with torch.no_grad():
        ours = archspec_from(reference.directory, torch.bfloat16)(ids).logits
        assert not torch.equal(theirs(ids).logits, ours)

        def rotated_in_the_dtype(q, k, cos, sin, unsqueeze_dim=1):
            cos, sin = (t.unsqueeze(unsqueeze_dim).to(q.dtype) for t in (cos, sin))
            cos, sin = (t[..., : t.shape[-1] // 2].repeat_interleave(2, dim=-1) for t in (cos, sin))
            rotate = modeling_ernie4_5.rotate_half
            return q * cos + rotate(q) * sin, k * cos + rotate(k) * sin

        monkeypatch.setattr(modeling_ernie4_5, "apply_rotary_pos_emb", rotated_in_the_dtype)
        assert torch.equal(theirs(ids).logits, ours)
