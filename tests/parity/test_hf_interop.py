"""HF interop edges: 4.x config fields, sharded checkpoints, and strict loading that names every problem.

Logits are compared as in hf_reference (transformers 5.25.0): float64 on both sides within 1e-10 of max|logit|, and
float32 (transformers' eager path) within 1e-5 of max|logit|.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from hf_reference import archspec_from, assert_logits_match, load_reference, make_reference
from safetensors.torch import load_file, save_file

import archspec
from archspec.interop.hf import UnsupportedConfigError

SMALL = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama")
    config = T.LlamaConfig(**SMALL, intermediate_size=128, num_key_value_heads=2)
    return make_reference(config, directory), directory


def _legacy(config_5x: dict) -> dict:
    """The same config as transformers 4.x wrote it: rope_theta and rope_scaling (with the old `type` key)."""
    config = dict(config_5x)
    params = dict(config.pop("rope_parameters"))
    config["rope_theta"] = params.pop("rope_theta")
    rope_type = params.pop("rope_type")
    if rope_type != "default":
        config["rope_scaling"] = {"type": rope_type, **params}
    return config


@pytest.mark.parametrize(
    "rope",
    [
        dict(rope_type="default", rope_theta=500000.0),
        dict(
            rope_type="llama3",
            rope_theta=500000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=64,
        ),
        dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32),
        dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
    ],
)
def test_4x_rope_fields_give_the_same_spec(rope):
    config = T.LlamaConfig(**SMALL, intermediate_size=128, rope_parameters=rope).to_dict()
    assert archspec.spec_from_hf(_legacy(config), name="x") == archspec.spec_from_hf(config, name="x")


def test_4x_gpt_neox_rotary_fields():
    config = T.GPTNeoXConfig(
        **SMALL, intermediate_size=256, rope_parameters=dict(rope_theta=20000.0, partial_rotary_factor=0.5)
    ).to_dict()
    legacy = {k: v for k, v in config.items() if k != "rope_parameters"} | {"rotary_pct": 0.5, "rotary_emb_base": 20000}
    spec = archspec.spec_from_hf(legacy, name="neox")
    assert spec.position.fraction == 0.5 and spec.position.theta == 20000.0
    assert spec == archspec.spec_from_hf(config, name="neox")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_sharded_checkpoint_loads(tmp_path, dtype):
    config = T.Qwen3Config(**SMALL, intermediate_size=128, num_key_value_heads=2, head_dim=16)
    torch.manual_seed(0)
    reference = T.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    reference.save_pretrained(tmp_path, max_shard_size="40KB")
    assert len(set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    if dtype == torch.float64:
        reference = load_reference(tmp_path)
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(0))
    assert_logits_match(reference, archspec_from(tmp_path, dtype), ids)


def _rewrite_checkpoint(source_dir, target_dir, edit) -> None:
    tensors = load_file(source_dir / "model.safetensors")
    edit(tensors)
    target_dir.mkdir(exist_ok=True)
    save_file(tensors, target_dir / "model.safetensors")
    (target_dir / "config.json").write_text((source_dir / "config.json").read_text())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"), "missing: layers.1.attn.k.weight"),
        (
            lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(3)}),
            "unexpected: model.layers.0.extra.weight",
        ),
        (
            lambda t: t.update({"model.layers.0.mlp.up_proj.weight": torch.zeros(100, 64)}),
            "wrong shape: layers.0.mlp.up.weight",
        ),
    ],
    ids=["missing", "unexpected", "mis-shaped"],
)
def test_strict_loading_names_the_tensor_and_changes_nothing(llama_dir, tmp_path, edit, message):
    _, directory = llama_dir
    _rewrite_checkpoint(directory, tmp_path / "broken", edit)
    model = archspec.build(archspec.spec_from_hf(directory))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(archspec.WeightLoadError, match=message.replace(".", r"\.")):
        archspec.load_hf_weights(model, tmp_path / "broken")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_checkpoint_of_another_architecture_is_rejected(llama_dir, tmp_path):
    _, directory = llama_dir
    wrong = archspec.spec_from_hf(json.loads((directory / "config.json").read_text()) | {"intermediate_size": 96})
    with pytest.raises(archspec.WeightLoadError, match="wrong shape"):
        archspec.load_hf_weights(archspec.build(wrong), directory)


def test_untied_head_in_a_checkpoint_for_a_tied_spec_is_an_error(tmp_path):
    config = T.Qwen2Config(**SMALL, intermediate_size=96, num_key_value_heads=2, tie_word_embeddings=True)
    make_reference(config, tmp_path / "tied")
    _rewrite_checkpoint(
        tmp_path / "tied", tmp_path / "bad", lambda t: t.update({"lm_head.weight": torch.randn(128, 64)})
    )
    model = archspec.build(archspec.spec_from_hf(tmp_path / "tied"))
    with pytest.raises(archspec.WeightLoadError, match="ties embeddings"):
        archspec.load_hf_weights(model, tmp_path / "bad")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model_type": "whisper"}, "not supported"),
        (
            T.LlamaConfig(**SMALL).to_dict() | {"rope_parameters": {"rope_type": "frequency-warp", "rope_theta": 1e4}},
            "rope_type 'frequency-warp' is not supported",
        ),
    ],
)
def test_unsupported_configs_fail_clearly(config, message):
    with pytest.raises(UnsupportedConfigError, match=message):
        archspec.spec_from_hf(config)


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(archspec.ArchspecError, match="no config.json"):
        archspec.spec_from_hf(tmp_path / "nope")
