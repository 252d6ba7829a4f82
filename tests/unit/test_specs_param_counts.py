"""Each spec in specs/ has exactly the parameters of the `transformers` model it describes.

The reference side is written by hand, independently of the YAML: for every spec, the `transformers` config of
the published checkpoint (the values of its config.json, typed in again here) is instantiated on the meta device,
and its parameter count must equal archspec's to the last integer. A wrong width, a missing bias, a forgotten
norm or an untied head all change the count. Tied weights are counted once on both sides: `parameters()`
de-duplicates by identity, and a tied `lm_head.weight` *is* the embedding's parameter on both sides (asserted
below, so a silently untied reference cannot cancel an untied spec).

Everything runs on the meta device, so even BLOOM-176B allocates nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers
from torch import nn

import archspec

SPECS = Path(__file__).resolve().parents[2] / "specs"


# ------------------------------------------------------------------------------ reference configs
# One function per spec file: the transformers config of the checkpoint the spec's comments cite.
# Only architecture-relevant fields are set; tokens and eps values do not change a parameter count.


def llama3_8b() -> transformers.PretrainedConfig:  # meta-llama/Meta-Llama-3-8B
    return transformers.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=500000.0, attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128001,
    )  # fmt: skip


def llama3_1_8b() -> transformers.PretrainedConfig:  # meta-llama/Llama-3.1-8B
    return transformers.LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                             high_freq_factor=4.0, original_max_position_embeddings=8192),
        tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
    )  # fmt: skip


def llama3_70b() -> transformers.PretrainedConfig:  # meta-llama/Meta-Llama-3-70B
    return transformers.LlamaConfig(
        vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
        num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
    )  # fmt: skip


def mistral_7b() -> transformers.PretrainedConfig:  # mistralai/Mistral-7B-v0.1
    return transformers.MistralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5,
        rope_theta=10000.0, sliding_window=4096, tie_word_embeddings=False,
    )  # fmt: skip


def qwen2_5_7b() -> transformers.PretrainedConfig:  # Qwen/Qwen2.5-7B
    return transformers.Qwen2Config(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=131072, rms_norm_eps=1e-6,
        rope_theta=1000000.0, use_sliding_window=False, tie_word_embeddings=False,
    )  # fmt: skip


def qwen3_8b() -> transformers.PretrainedConfig:  # Qwen/Qwen3-8B
    return transformers.Qwen3Config(
        vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rms_norm_eps=1e-6, rope_theta=1000000.0, attention_bias=False, tie_word_embeddings=False,
    )  # fmt: skip


def gpt2() -> transformers.PretrainedConfig:  # openai-community/gpt2
    return transformers.GPT2Config(
        vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
        activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=True,
    )  # fmt: skip


def gpt() -> transformers.PretrainedConfig:  # openai-community/openai-gpt
    return transformers.OpenAIGPTConfig(
        vocab_size=40478, n_positions=512, n_embd=768, n_layer=12, n_head=12, afn="gelu",
        layer_norm_epsilon=1e-5, tie_word_embeddings=True,
    )  # fmt: skip


def bloom_560m() -> transformers.PretrainedConfig:  # bigscience/bloom-560m
    return transformers.BloomConfig(
        vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16, layer_norm_epsilon=1e-5,
        apply_residual_connection_post_layernorm=False, tie_word_embeddings=True,
    )  # fmt: skip


def bloom_176b() -> transformers.PretrainedConfig:  # bigscience/bloom
    return transformers.BloomConfig(
        vocab_size=250880, hidden_size=14336, n_layer=70, n_head=112, layer_norm_epsilon=1e-5,
        apply_residual_connection_post_layernorm=False, tie_word_embeddings=True,
    )  # fmt: skip


def falcon_7b() -> transformers.PretrainedConfig:  # tiiuae/falcon-7b
    return transformers.FalconConfig(
        vocab_size=65024, hidden_size=4544, num_hidden_layers=32, num_attention_heads=71,
        new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False, alibi=False,
        activation="gelu", ffn_hidden_size=None, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
    )  # fmt: skip


def falcon_40b() -> transformers.PretrainedConfig:  # tiiuae/falcon-40b
    return transformers.FalconConfig(
        vocab_size=65024, hidden_size=8192, num_hidden_layers=60, num_attention_heads=128, num_kv_heads=8,
        new_decoder_architecture=True, num_ln_in_parallel_attn=None, parallel_attn=True, bias=False,
        alibi=False, activation="gelu", layer_norm_epsilon=1e-5, tie_word_embeddings=True,
    )  # fmt: skip


def glm4_9b() -> transformers.PretrainedConfig:  # THUDM/GLM-4-9B-0414
    return transformers.Glm4Config(
        vocab_size=151552, hidden_size=4096, intermediate_size=13696, num_hidden_layers=40,
        num_attention_heads=32, num_key_value_heads=2, head_dim=128, attention_bias=True,
        partial_rotary_factor=0.5, max_position_embeddings=32768, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, pad_token_id=151329,
    )  # fmt: skip


def gpt_neox_20b() -> transformers.PretrainedConfig:  # EleutherAI/gpt-neox-20b
    return transformers.GPTNeoXConfig(
        vocab_size=50432, hidden_size=6144, intermediate_size=24576, num_hidden_layers=44,
        num_attention_heads=64, rotary_pct=0.25, rotary_emb_base=10000, max_position_embeddings=2048,
        hidden_act="gelu_fast", layer_norm_eps=1e-5, use_parallel_residual=True, attention_bias=True,
        tie_word_embeddings=False,
    )  # fmt: skip


REFERENCES: dict[str, Callable[[], transformers.PretrainedConfig]] = {
    "llama3.yaml": llama3_8b,
    "llama3-8b.yaml": llama3_8b,
    "llama3.1-8b.yaml": llama3_1_8b,
    "llama3-70b.yaml": llama3_70b,
    "mistral-7b.yaml": mistral_7b,
    "qwen2.5-7b.yaml": qwen2_5_7b,
    "qwen3-8b.yaml": qwen3_8b,
    "gpt2.yaml": gpt2,
    "gpt.yaml": gpt,
    "bloom-560m.yaml": bloom_560m,
    "bloom-176b.yaml": bloom_176b,
    "falcon-7b.yaml": falcon_7b,
    "falcon-40b.yaml": falcon_40b,
    "glm4-9b.yaml": glm4_9b,
    "gpt-neox-20b.yaml": gpt_neox_20b,
}


# ------------------------------------------------------------------------------------------ helpers
def unique_parameter_count(model: nn.Module) -> int:
    """Parameters counted once each, however many modules share them (tied heads)."""
    unique = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}
    return sum(p.numel() for p in unique.values())


def head_is_tied(model: nn.Module) -> bool:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else model.lm_head
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model.embed
    return head.weight is embed.weight


def reference_model(config: transformers.PretrainedConfig) -> nn.Module:
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


# -------------------------------------------------------------------------------------------- tests
def test_every_spec_has_a_reference() -> None:
    """A new spec file needs a reference config here (or a note on why it cannot have one)."""
    on_disk = {path.name for path in SPECS.glob("*.yaml")}
    assert on_disk - REFERENCES.keys() == set(), "add a reference config for these specs"
    assert REFERENCES.keys() - on_disk == set(), "these referenced specs no longer exist"


@pytest.mark.parametrize("filename", sorted(REFERENCES))
def test_parameter_count_equals_transformers(filename: str) -> None:
    spec = archspec.load_spec(SPECS / filename)
    ours = archspec.build(spec, device="meta")
    theirs = reference_model(REFERENCES[filename]())

    assert head_is_tied(theirs) == spec.embeddings.tied, "the reference config and the spec disagree on tying"
    assert (ours.lm_head.weight is ours.embed.weight) == spec.embeddings.tied
    assert unique_parameter_count(ours) == unique_parameter_count(theirs)
    # `parameters()` (identity de-duplication) is what users call; it must agree with the explicit count.
    assert sum(p.numel() for p in ours.parameters()) == unique_parameter_count(ours)


def test_llama3_is_llama3_8b_renamed() -> None:
    short, full = archspec.load_spec(SPECS / "llama3.yaml"), archspec.load_spec(SPECS / "llama3-8b.yaml")
    assert short.name == "llama3"
    assert short.model_dump(exclude={"name"}) == full.model_dump(exclude={"name"})
