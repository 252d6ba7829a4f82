"""MoE and MLA families against transformers 5.25.0: mixtral, qwen2_moe, qwen3_moe, deepseek_v2, deepseek_v3,
glm4_moe, granitemoe, hunyuan_v1_moe, minimax_m2,
ernie4_5_moe, gpt_oss.

Tiny random models, every weight and the DeepSeek-V3 correction bias perturbed. Both sides in float64 (sdpa
attention, eager experts; the float32 roundings of the reference's routers, RMSNorms and balance loss, and
DeepSeek-V2's complex64 RoPE, lifted for float64 inputs as hf_reference describes): logits within 1e-10 of
max|logit|, greedy tokens equal, the Switch balance loss within 1e-10 relative, the total loss within 1e-6 (its
cross-entropy comes from float32 logits on both sides). float32 on both sides, against transformers' eager path,
where archspec's router computes in float32 as every family's reference does: logits within 1e-5 of max|logit|,
balance and total loss within 1e-6 relative.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
from hf_reference import (
    LOSS_RELATIVE_TOLERANCE,
    RELATIVE_TOLERANCE,
    archspec_from,
    assert_logits_match,
    assert_loss_matches,
    load_reference,
    make_reference,
    saved_reference,
)

import archspec

SMALL = dict(vocab_size=128, hidden_size=64, num_hidden_layers=3, num_attention_heads=4)
MLA = dict(
    kv_lora_rank=32,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=12,
    moe_intermediate_size=32,
    intermediate_size=128,
    num_key_value_heads=4,
)
YARN = dict(
    rope_type="yarn", rope_theta=1e4, factor=40.0, original_max_position_embeddings=64, beta_fast=32, beta_slow=1
)

CONFIGS = {
    "mixtral-top2": T.MixtralConfig(
        **SMALL, num_key_value_heads=2, intermediate_size=96, num_local_experts=4, num_experts_per_tok=2
    ),
    "mixtral-top1-window": T.MixtralConfig(
        **SMALL,
        num_key_value_heads=2,
        intermediate_size=96,
        num_local_experts=4,
        num_experts_per_tok=1,
        sliding_window=5,
    ),
    "qwen2-moe-shared-gated-sparse-step": T.Qwen2MoeConfig(
        **SMALL,
        num_key_value_heads=2,
        intermediate_size=96,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=48,
        num_experts=6,
        num_experts_per_tok=3,
        decoder_sparse_step=2,
    ),
    "qwen3-moe-top4-renorm-dense-first": T.Qwen3MoeConfig(
        **SMALL,
        num_key_value_heads=2,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=4,
        head_dim=16,
        norm_topk_prob=True,
        mlp_only_layers=[0],
    ),
    "deepseek-v2-greedy-no-q-lora": T.DeepseekV2Config(
        **SMALL,
        **MLA,
        q_lora_rank=None,
        n_routed_experts=8,
        n_shared_experts=2,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
    ),
    "deepseek-v2-group-limited-yarn": T.DeepseekV2Config(
        **SMALL,
        **MLA,
        q_lora_rank=24,
        n_routed_experts=8,
        n_shared_experts=2,
        num_experts_per_tok=3,
        first_k_dense_replace=1,
        topk_method="group_limited_greedy",
        n_group=4,
        topk_group=2,
        routed_scaling_factor=1.5,
        max_position_embeddings=256,
        rope_parameters=dict(YARN, mscale=0.707, mscale_all_dim=0.707),
    ),
    "deepseek-v3-yarn-groups": T.DeepseekV3Config(
        **SMALL,
        **MLA,
        q_lora_rank=24,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        max_position_embeddings=256,
        rope_parameters=dict(YARN, mscale=1.0, mscale_all_dim=0.8),
    ),
    "deepseek-v3-half-rope-no-renorm": T.DeepseekV3Config(
        **SMALL,
        **MLA,
        q_lora_rank=None,
        n_routed_experts=8,
        n_shared_experts=2,
        num_experts_per_tok=3,
        first_k_dense_replace=0,
        n_group=2,
        topk_group=1,
        norm_topk_prob=False,
        rope_interleave=False,
    ),
    # Granite-MoE: Granite's four multipliers around every-layer experts stored fused (input_linear, output_linear)
    "granitemoe-multipliers-top3": T.GraniteMoeConfig(
        vocab_size=128,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        intermediate_size=40,
        num_local_experts=5,
        num_experts_per_tok=3,
        embedding_multiplier=3.5,
        residual_multiplier=0.7,
        attention_multiplier=0.11,
        logits_scaling=2.5,
        router_aux_loss_coef=0.01,
    ),
    # Hunyuan-A13B: q/k norms after RoPE, NTK-alpha RoPE, a shared MLP beside the routed experts in every layer
    "hunyuan-moe-shared-mlp-ntk-alpha": T.HunYuanMoEV1Config(
        vocab_size=128,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=10,
        intermediate_size=40,
        num_experts=5,
        moe_topk=2,
        attention_bias=True,
        rope_parameters=dict(rope_type="dynamic", rope_theta=1e4, alpha=1000.0, factor=1.0),
    ),
    # MiniMax-M2: qk-norm over the whole projections, partial RoPE (rotary_dim), sigmoid router with a selection bias
    "minimax-m2-projection-qk-norm-partial-rope": T.MiniMaxM2Config(
        vocab_size=128,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=12,
        rotary_dim=6,
        intermediate_size=40,
        num_local_experts=6,
        num_experts_per_tok=3,
        router_aux_loss_coef=0.02,
    ),
    # ERNIE 4.5 MoE: softmax router with a selection bias ([1, E] in the checkpoint), shared experts, MoE on a range
    "ernie-moe-range-interval-shared": T.Ernie4_5_MoeConfig(
        vocab_size=128,
        hidden_size=48,
        num_hidden_layers=5,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=10,
        intermediate_size=56,
        moe_intermediate_size=20,
        moe_num_experts=6,
        moe_k=3,
        moe_num_shared_experts=1,
        moe_layer_start_index=1,
        moe_layer_end_index=3,
        moe_layer_interval=2,
        tie_word_embeddings=False,
        router_aux_loss_coef=0.02,
    ),
    # gpt-oss: sinks, biases, sliding/full layers (window 5 under 13 tokens), YaRN, clamped SwiGLU experts with
    # biases (a limit of 0.4 clamps the tiny model's activations), a biased router
    "gpt-oss-sinks-window-clamped": T.GptOssConfig(
        vocab_size=128,
        hidden_size=48,
        num_hidden_layers=4,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=10,
        intermediate_size=20,
        num_local_experts=5,
        num_experts_per_tok=2,
        sliding_window=5,
        swiglu_limit=0.4,
        router_aux_loss_coef=0.02,
        max_position_embeddings=256,
    ),
    # GLM-4.5: GQA with q/k/v biases, half-width RoPE in halves, DeepSeek-V3's router with groups, a dense start
    "glm4-moe-qk-norm-groups-dense-first": T.Glm4MoeConfig(
        **SMALL,
        num_key_value_heads=2,
        head_dim=20,
        intermediate_size=96,
        moe_intermediate_size=24,
        attention_bias=True,
        use_qk_norm=True,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=3,
        first_k_dense_replace=1,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
    ),
    "glm4-moe-air-shape-two-shared-no-renorm": T.Glm4MoeConfig(
        vocab_size=128,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=12,
        intermediate_size=80,
        moe_intermediate_size=16,
        attention_bias=True,
        n_routed_experts=6,
        n_shared_experts=2,
        num_experts_per_tok=2,
        first_k_dense_replace=2,
        norm_topk_prob=False,
        rope_parameters=dict(rope_type="default", rope_theta=1e6, partial_rotary_factor=0.5),
    ),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request, tmp_path_factory):
    return saved_reference(request.param, CONFIGS[request.param], tmp_path_factory.mktemp(request.param))


def _ids(name: str, length: int = 13) -> torch.Tensor:
    return torch.randint(0, 128, (2, length), generator=torch.Generator().manual_seed(len(name)))


def test_logits_match_transformers(reference):
    assert_logits_match(reference.float64, archspec_from(reference.directory), _ids(reference.name))


def test_float32_logits_match_transformers_eager(reference):
    """archspec's router, norms and RoPE tables in float32 against transformers' eager float32 path."""
    model = archspec_from(reference.directory, torch.float32)
    assert_logits_match(reference.float32, model, _ids(reference.name))


def test_greedy_generate_matches_transformers_and_recompute(reference):
    model = archspec_from(reference.directory)
    ids = _ids(reference.name, length=5)
    with torch.no_grad():
        expected = reference.float64.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False
        )
    cached = model.generate(ids, max_new_tokens=8)
    assert torch.equal(cached, model.generate(ids, max_new_tokens=8, use_cache=False))
    assert torch.equal(cached, expected)


@pytest.mark.parametrize("name", [name for name in sorted(CONFIGS) if name.startswith("deepseek")])
def test_mla_cache_holds_the_latent_not_the_heads(name):
    spec = archspec.spec_from_hf(CONFIGS[name].to_dict())
    cache = archspec.build(spec).new_cache(batch=1, max_len=16)
    layer = cache.layers[0]
    assert layer.keys.shape == (1, 1, 16, spec.attention.kv_rank)
    assert layer.values.shape == (1, 1, 16, spec.attention.rope_dim)


AUX_LOSS_CONFIGS = [
    "mixtral-top2",
    "qwen2-moe-shared-gated-sparse-step",
    "qwen3-moe-top4-renorm-dense-first",
    "granitemoe-multipliers-top3",
    "minimax-m2-projection-qk-norm-partial-rope",
    "ernie-moe-range-interval-shared",
    "gpt-oss-sinks-window-clamped",
]


@pytest.mark.parametrize("name", AUX_LOSS_CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_aux_loss_matches_transformers(name, dtype, tmp_path):
    """transformers' load_balancing_loss_func (Switch loss over all MoE layers' tokens) and its loss total."""
    float32 = make_reference(CONFIGS[name], tmp_path)
    hf_model = float32 if dtype == torch.float32 else load_reference(tmp_path)
    model = archspec_from(tmp_path, dtype)
    ids = _ids(name)
    with torch.no_grad():
        expected = hf_model(ids, labels=ids, output_router_logits=True)
        actual = model(ids, labels=ids)
        # padded tokens do not count: transformers' load_balancing_loss_func with the attention mask
        mask = torch.ones_like(ids)
        mask[1, :5] = 0
        padded_expected = hf_model(ids, attention_mask=mask, labels=ids, output_router_logits=True).aux_loss
        padded = model(ids, attention_mask=mask, labels=ids).aux_loss
    assert actual.aux_loss.dtype == expected.aux_loss.dtype == dtype
    tolerance = RELATIVE_TOLERANCE if dtype == torch.float64 else LOSS_RELATIVE_TOLERANCE
    assert abs(actual.aux_loss - expected.aux_loss) <= tolerance * expected.aux_loss
    assert abs(padded - padded_expected) <= tolerance * padded_expected
    assert abs(padded - actual.aux_loss) > 1e-6 * actual.aux_loss  # the mask changed it
    assert_loss_matches(expected.loss, actual.loss)
