"""archspec reproduces transformers' logits and greedy tokens for every supported model type.

Reference: transformers 5.25.0, tiny random models with every weight perturbed (hf_reference.make_reference). Both
sides in float64 (transformers with sdpa attention, BLOOM with eager attention; the float32 roundings some reference
functions keep in float64 lifted as hf_reference describes): logits within 1e-10 of max|logit|, greedy tokens
equal. One float32 check per config against transformers' eager float32 path: within 1e-5 of max|logit|.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
import yaml
from hf_reference import archspec_from, assert_logits_match, saved_reference

import archspec

SMALL = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)
LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=500000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,
)
# GLM's default eos ids (151329, ...) lie outside a 128-token vocabulary: a list of ids inside it, as GLM has
GLM = dict(intermediate_size=128, num_key_value_heads=2, head_dim=16, pad_token_id=None, eos_token_id=[1, 2])

CONFIGS = {
    "llama-gqa-llama3": T.LlamaConfig(
        **SMALL,
        intermediate_size=128,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_parameters=LLAMA3_ROPE,
    ),
    "llama-mqa-bias-yarn-headdim": T.LlamaConfig(
        **SMALL,
        intermediate_size=128,
        num_key_value_heads=1,
        attention_bias=True,
        mlp_bias=True,
        head_dim=24,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=32),
    ),
    "llama-yarn-mscale": T.LlamaConfig(
        **SMALL,
        intermediate_size=96,
        num_key_value_heads=4,
        max_position_embeddings=128,
        rope_parameters=dict(
            rope_type="yarn",
            rope_theta=10000.0,
            factor=8.0,
            original_max_position_embeddings=16,
            mscale=0.8,
            mscale_all_dim=0.5,
            beta_fast=16,
            beta_slow=2,
        ),
    ),
    "llama-odd-tied-linear": T.LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=3,
        intermediate_size=72,
        tie_word_embeddings=True,
        rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0),
    ),
    # transformers keeps the frequencies of the longest length seen until a call within max_position_embeddings
    # resets them, archspec recomputes them per call: the same for the lengths used here (13; generation 5 -> 13)
    "llama-dynamic-beyond-context": T.LlamaConfig(
        **SMALL,
        intermediate_size=128,
        max_position_embeddings=8,
        rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0),
    ),
    "mistral-window": T.MistralConfig(**SMALL, intermediate_size=96, num_key_value_heads=2, sliding_window=5),
    "qwen2-sliding-layers": T.Qwen2Config(
        **SMALL,
        intermediate_size=96,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=5,
        max_window_layers=1,
    ),
    "qwen2-tied": T.Qwen2Config(**SMALL, intermediate_size=96, num_key_value_heads=1, tie_word_embeddings=True),
    "qwen3-qknorm-headdim": T.Qwen3Config(**SMALL, intermediate_size=128, num_key_value_heads=2, head_dim=32),
    "qwen3-bias": T.Qwen3Config(
        **SMALL, intermediate_size=128, num_key_value_heads=4, head_dim=16, attention_bias=True
    ),
    "gpt2": T.GPT2Config(
        vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0
    ),
    # layer i's scale is head_dim^-0.5 / (i + 1); reorder_and_upcast_attn changes only eager's float32 rounding
    "gpt2-inverse-layer-scale": T.GPT2Config(
        vocab_size=128,
        n_embd=48,
        n_layer=3,
        n_head=3,
        n_positions=32,
        scale_attn_by_inverse_layer_idx=True,
        reorder_and_upcast_attn=True,
        bos_token_id=0,
        eos_token_id=0,
    ),
    "gpt2-odd-inner": T.GPT2Config(
        vocab_size=101,
        n_embd=48,
        n_layer=3,
        n_head=3,
        n_positions=32,
        n_inner=80,
        activation_function="gelu",
        bos_token_id=0,
        eos_token_id=0,
    ),
    "bloom-6-heads": T.BloomConfig(vocab_size=128, hidden_size=48, n_layer=2, n_head=6),
    "bloom-residual-post-ln": T.BloomConfig(
        vocab_size=128, hidden_size=64, n_layer=2, n_head=4, apply_residual_connection_post_layernorm=True
    ),
    "falcon-7b-style": T.FalconConfig(**SMALL, multi_query=True, parallel_attn=True, new_decoder_architecture=False),
    "falcon-40b-style": T.FalconConfig(
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_kv_heads=2,
        new_decoder_architecture=True,
    ),
    "falcon2-one-norm-bias": T.FalconConfig(
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_kv_heads=4,
        new_decoder_architecture=True,
        num_ln_in_parallel_attn=1,
        bias=True,
    ),
    "falcon-sequential-mha": T.FalconConfig(**SMALL, multi_query=False, parallel_attn=False, bias=True),
    # Falcon-RW: ALiBi rounded to bfloat16 and divided by sqrt(head_dim), no RoPE. 20 heads: slopes 2^(-k/2) that
    # bfloat16 rounds (below 16 heads every slope is a power of two), and 4 past the power of two
    "falcon-rw-alibi-20-heads": T.FalconConfig(
        vocab_size=128,
        hidden_size=80,
        num_hidden_layers=2,
        num_attention_heads=20,
        multi_query=False,
        parallel_attn=False,
        bias=True,
        alibi=True,
    ),
    "gpt-neox-parallel": T.GPTNeoXConfig(**SMALL, intermediate_size=256),
    "gpt-neox-sequential-half-rotary": T.GPTNeoXConfig(
        **SMALL, intermediate_size=160, use_parallel_residual=False, rotary_pct=0.5, tie_word_embeddings=True
    ),
    "glm": T.GlmConfig(**SMALL, **GLM),
    "glm4": T.Glm4Config(**SMALL, **GLM),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request, tmp_path_factory):
    """hf_reference.Reference for one tiny config: its directory, transformers in float32 (eager) and float64."""
    return saved_reference(request.param, CONFIGS[request.param], tmp_path_factory.mktemp(request.param))


def _input_ids(name: str, vocab: int, length: int = 13) -> torch.Tensor:
    generator = torch.Generator().manual_seed(sum(map(ord, name)))
    return torch.randint(0, vocab, (2, length), generator=generator)


def test_logits_match_transformers(reference):
    ids = _input_ids(reference.name, reference.float64.config.vocab_size)
    assert_logits_match(reference.float64, archspec_from(reference.directory), ids)


def test_float32_logits_match_transformers_eager(reference):
    """float32 on both sides: archspec's norm statistics, RoPE tables and softmax in the dtype they are written
    for, against transformers' eager float32 path."""
    ids = _input_ids(reference.name, reference.float32.config.vocab_size)
    assert_logits_match(reference.float32, archspec_from(reference.directory, torch.float32), ids)


def test_logits_match_after_yaml_round_trip(reference, tmp_path):
    """spec_from_hf -> YAML file -> load_spec builds the same model (what `archspec import-hf` writes)."""
    spec = archspec.spec_from_hf(reference.directory)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    reloaded = archspec.load_spec(path)
    assert reloaded == spec
    model = archspec.build(reloaded, dtype=torch.float64)
    archspec.load_hf_weights(model, reference.directory)
    ids = _input_ids(reference.name, reference.float64.config.vocab_size)
    assert_logits_match(reference.float64, model.eval(), ids)


def test_greedy_generate_matches_transformers_and_full_recompute(reference):
    name, hf_model = reference.name, reference.float64
    model = archspec_from(reference.directory)
    ids = _input_ids(name, hf_model.config.vocab_size, length=5)
    new_tokens = 8 if "gpt2-odd" not in name else 6
    with torch.no_grad():
        expected = hf_model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False
        )
    cached = model.generate(ids, max_new_tokens=new_tokens)
    assert torch.equal(cached, expected)
    if "dynamic" not in name:  # dynamic NTK: cached keys keep the frequencies of their step, by design
        assert torch.equal(cached, model.generate(ids, max_new_tokens=new_tokens, use_cache=False))


def test_meta_build_then_load_materialises_everything(reference):
    """A model built on the meta device (no allocation) becomes a working model once weights are loaded."""
    spec = archspec.spec_from_hf(reference.directory)
    model = archspec.build(spec, device="meta", dtype=torch.float64)
    archspec.load_hf_weights(model, reference.directory)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    ids = _input_ids(reference.name, reference.float64.config.vocab_size)
    assert_logits_match(reference.float64, model.eval(), ids)
