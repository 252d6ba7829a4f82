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


def mixtral_8x7b() -> transformers.PretrainedConfig:  # mistralai/Mixtral-8x7B-v0.1
    return transformers.MixtralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=32768, rope_theta=1e6, num_local_experts=8,
        num_experts_per_tok=2, tie_word_embeddings=False,
    )  # fmt: skip


def mixtral_8x22b() -> transformers.PretrainedConfig:  # mistralai/Mixtral-8x22B-v0.1
    return transformers.MixtralConfig(
        vocab_size=32000, hidden_size=6144, intermediate_size=16384, num_hidden_layers=56, num_attention_heads=48,
        num_key_value_heads=8, max_position_embeddings=65536, rope_theta=1e6, num_local_experts=8,
        num_experts_per_tok=2, tie_word_embeddings=False,
    )  # fmt: skip


def qwen1_5_moe_a2_7b() -> transformers.PretrainedConfig:  # Qwen/Qwen1.5-MoE-A2.7B
    return transformers.Qwen2MoeConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=16, max_position_embeddings=8192, num_experts=60, num_experts_per_tok=4,
        moe_intermediate_size=1408, shared_expert_intermediate_size=5632, decoder_sparse_step=1,
        tie_word_embeddings=False,
    )  # fmt: skip


def qwen3_30b_a3b() -> transformers.PretrainedConfig:  # Qwen/Qwen3-30B-A3B
    return transformers.Qwen3MoeConfig(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=48, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, max_position_embeddings=40960, num_experts=128, num_experts_per_tok=8,
        moe_intermediate_size=768, norm_topk_prob=True, tie_word_embeddings=False,
    )  # fmt: skip


def deepseek_v2_lite() -> transformers.PretrainedConfig:  # deepseek-ai/DeepSeek-V2-Lite
    return transformers.DeepseekV2Config(
        vocab_size=102400, hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
        num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16, q_lora_rank=None, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=64, n_shared_experts=2,
        num_experts_per_tok=6, first_k_dense_replace=1, tie_word_embeddings=False,
    )  # fmt: skip


def deepseek_v3() -> transformers.PretrainedConfig:  # deepseek-ai/DeepSeek-V3
    return transformers.DeepseekV3Config(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256, n_shared_experts=1,
        num_experts_per_tok=8, n_group=8, topk_group=4, first_k_dense_replace=3, tie_word_embeddings=False,
    )  # fmt: skip


def glm_4_5_air() -> transformers.PretrainedConfig:  # zai-org/GLM-4.5-Air
    return transformers.Glm4MoeConfig(
        vocab_size=151552, hidden_size=4096, intermediate_size=10944, moe_intermediate_size=1408, head_dim=128,
        num_hidden_layers=46, num_attention_heads=96, num_key_value_heads=8, attention_bias=True, use_qk_norm=False,
        n_routed_experts=128, n_shared_experts=1, num_experts_per_tok=8, first_k_dense_replace=1, n_group=1,
        topk_group=1, partial_rotary_factor=0.5, tie_word_embeddings=False,
    )  # fmt: skip


def granite_3_1_3b_a800m() -> transformers.PretrainedConfig:  # ibm-granite/granite-3.1-3b-a800m-base
    return transformers.GraniteMoeConfig(
        vocab_size=49155, hidden_size=1536, intermediate_size=512, num_hidden_layers=32, num_attention_heads=24,
        num_key_value_heads=8, num_local_experts=40, num_experts_per_tok=8, max_position_embeddings=131072,
        rope_theta=10_000_000.0, embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.015625,
        logits_scaling=6.0, tie_word_embeddings=True,
    )  # fmt: skip


def hunyuan_a13b() -> transformers.PretrainedConfig:  # tencent/Hunyuan-A13B-Instruct
    return transformers.HunYuanMoEV1Config(
        vocab_size=128167, hidden_size=4096, intermediate_size=3072, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, num_experts=64, moe_topk=8, max_position_embeddings=262144,
        rms_norm_eps=1e-5, attention_bias=False, tie_word_embeddings=True, eos_token_id=127960, pad_token_id=127961,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "alpha": 1000.0, "factor": 1.0},
    )  # fmt: skip


def minimax_m2() -> transformers.PretrainedConfig:  # MiniMaxAI/MiniMax-M2
    return transformers.MiniMaxM2Config(
        vocab_size=200064, hidden_size=3072, intermediate_size=1536, num_hidden_layers=62, num_attention_heads=48,
        num_key_value_heads=8, head_dim=128, rotary_dim=64, num_local_experts=256, num_experts_per_tok=8,
        max_position_embeddings=196608, tie_word_embeddings=False,
    )  # fmt: skip


def ernie_4_5_21b_a3b() -> transformers.PretrainedConfig:  # baidu/ERNIE-4.5-21B-A3B-PT
    return transformers.Ernie4_5_MoeConfig(
        vocab_size=103424, hidden_size=2560, intermediate_size=12288, num_hidden_layers=28, num_attention_heads=20,
        num_key_value_heads=4, head_dim=128, moe_intermediate_size=1536, moe_k=6, moe_num_experts=64,
        moe_num_shared_experts=2, moe_layer_start_index=1, moe_layer_end_index=27, moe_layer_interval=1,
        use_bias=False, tie_word_embeddings=True,
    )  # fmt: skip


def gpt_oss(layers: int, experts: int) -> transformers.PretrainedConfig:  # openai/gpt-oss-20b and -120b
    return transformers.GptOssConfig(
        vocab_size=201088, hidden_size=2880, intermediate_size=2880, num_hidden_layers=layers, head_dim=64,
        num_attention_heads=64, num_key_value_heads=8, num_local_experts=experts, num_experts_per_tok=4,
        sliding_window=128, attention_bias=True, tie_word_embeddings=False,
    )  # fmt: skip


def deepseek_moe_16b_by_hand() -> int:
    """deepseek-ai/deepseek-moe-16b-base has no transformers class: its count, term by term from its config.json.

    Llama MHA attention and RMSNorms, layer 0 a dense SwiGLU of 10944, layers 1..27 a router over 64 experts of
    1408 plus 2 shared experts (one SwiGLU of 2816); untied head. The paper reports 16.4B.
    """
    d, vocab, layers = 2048, 102400, 28
    attention, norms = 4 * d * d, 2 * d
    dense_mlp = 3 * d * 10944
    moe_mlp = 64 * d + 64 * 3 * d * 1408 + 3 * d * 2 * 1408
    return 2 * vocab * d + layers * (attention + norms) + dense_mlp + (layers - 1) * moe_mlp + d


def t5_small() -> transformers.PretrainedConfig:  # google-t5/t5-small
    return transformers.T5Config(
        vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8,
        relative_attention_num_buckets=32, feed_forward_proj="relu", layer_norm_epsilon=1e-6,
    )  # fmt: skip


def t5_base() -> transformers.PretrainedConfig:  # google-t5/t5-base
    return transformers.T5Config(
        vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12,
        relative_attention_num_buckets=32, feed_forward_proj="relu", layer_norm_epsilon=1e-6,
    )  # fmt: skip


def t5_v1_1_base() -> transformers.PretrainedConfig:  # google/t5-v1_1-base
    return transformers.T5Config(
        vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12,
        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,
    )  # fmt: skip


def flan_t5_xl() -> transformers.PretrainedConfig:  # google/flan-t5-xl
    return transformers.T5Config(
        vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32,
        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6,
        tie_word_embeddings=False,
    )  # fmt: skip


def glm_by_hand(vocab: int, d: int, layers: int, d_ff: int, gated: bool) -> int:
    """A GLM / ChatGLM-6B / GLM-130B stack, term by term: word embedding (tied output layer); per layer a fused
    query_key_value [3d, d] + bias, dense [d, d] + bias, dense_h_to_4h [(2 if GeGLU else 1) d_ff, d] + bias,
    dense_4h_to_h [d, d_ff] + bias, two LayerNorms (weight + bias); a final LayerNorm."""
    attention = 3 * d * d + 3 * d + d * d + d
    up = (2 if gated else 1) * d_ff
    mlp = up * d + up + d_ff * d + d
    return vocab * d + layers * (attention + mlp + 2 * 2 * d) + 2 * d


def chatglm_6b_by_hand() -> int:
    """THUDM/chatglm-6b (no transformers class): hidden 4096, 28 layers, inner 16384 GELU MLP, vocab 130528."""
    return glm_by_hand(vocab=130528, d=4096, layers=28, d_ff=16384, gated=False)


def glm_130b_by_hand() -> int:
    """GLM-130B (Zeng et al. 2022): hidden 12288, 70 layers, GeGLU of 32768, vocab 150528."""
    return glm_by_hand(vocab=150528, d=12288, layers=70, d_ff=32768, gated=True)


def llava_1_5_7b() -> transformers.PretrainedConfig:  # llava-hf/llava-1.5-7b-hf
    vision = transformers.CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
        patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )  # fmt: skip
    text = transformers.LlamaConfig(
        vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5, pad_token_id=32001
    )
    return transformers.LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=32000, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=576,
        tie_word_embeddings=False, pad_token_id=32001,
    )  # fmt: skip


def vlm_pooled_example_by_hand() -> int:
    """specs/vlm-pooled-example.yaml is no published checkpoint: its count, term by term. Untied embedding and head;
    per layer GQA attention (q and o d x d, k and v d x 256), a SwiGLU of 2816 and two RMSNorms; a final RMSNorm;
    the projector's two linear layers with biases (1024 -> 1024 -> 1024). The external tower and the pooling own
    no parameters."""
    d, vocab, layers, d_ff, kv_width = 1024, 32064, 8, 2816, 4 * 64
    attention = 2 * d * d + 2 * d * kv_width
    block = attention + 3 * d * d_ff + 2 * d
    projector = (1024 * d + d) + (d * d + d)
    return 2 * vocab * d + layers * block + d + projector


def starcoder2_15b() -> transformers.PretrainedConfig:  # bigcode/starcoder2-15b
    return transformers.Starcoder2Config(
        vocab_size=49152, hidden_size=6144, intermediate_size=24576, num_hidden_layers=40, num_attention_heads=48,
        num_key_value_heads=4, max_position_embeddings=16384, sliding_window=4096, norm_epsilon=1e-5,
        hidden_act="gelu_pytorch_tanh", use_bias=True, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )  # fmt: skip


def phi_3_mini_4k() -> transformers.PretrainedConfig:  # microsoft/Phi-3-mini-4k-instruct
    return transformers.Phi3Config(
        vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=4096, original_max_position_embeddings=4096,
        rms_norm_eps=1e-5, sliding_window=2047, tie_word_embeddings=False, bos_token_id=1, eos_token_id=32000,
        pad_token_id=32000, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )  # fmt: skip


BY_HAND: dict[str, Callable[[], int]] = {
    "deepseek-moe-16b.yaml": deepseek_moe_16b_by_hand,
    "vlm-pooled-example.yaml": vlm_pooled_example_by_hand,
    "chatglm-6b.yaml": chatglm_6b_by_hand,
    "glm-130b.yaml": glm_130b_by_hand,
}


def gemma_7b() -> transformers.PretrainedConfig:  # google/gemma-7b
    return transformers.GemmaConfig(
        vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=16, head_dim=256, max_position_embeddings=8192,
        tie_word_embeddings=True,
    )  # fmt: skip


def gemma_2_9b() -> transformers.PretrainedConfig:  # google/gemma-2-9b
    return transformers.Gemma2Config(
        vocab_size=256000, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
        num_attention_heads=16, num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0, tie_word_embeddings=True,
    )  # fmt: skip


def gemma_3_27b() -> transformers.PretrainedConfig:  # text_config of google/gemma-3-27b-pt
    return transformers.Gemma3TextConfig(
        vocab_size=262208, hidden_size=5376, intermediate_size=21504, num_hidden_layers=62,
        num_attention_heads=32, num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=168,
        sliding_window=1024, max_position_embeddings=131072, tie_word_embeddings=True,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
    )  # fmt: skip


def command_r_v01() -> transformers.PretrainedConfig:  # CohereForAI/c4ai-command-r-v01
    return transformers.CohereConfig(
        vocab_size=256000, hidden_size=8192, intermediate_size=22528, num_hidden_layers=40,
        num_attention_heads=64, num_key_value_heads=64, max_position_embeddings=8192, layer_norm_eps=1e-5,
        logit_scale=0.0625, rope_theta=8000000.0, use_qk_norm=False, tie_word_embeddings=True,
    )  # fmt: skip


def command_r7b() -> transformers.PretrainedConfig:  # CohereForAI/c4ai-command-r7b-12-2024
    return transformers.Cohere2Config(
        vocab_size=256000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, layer_norm_eps=1e-5,
        logit_scale=0.25, rope_theta=50000.0, sliding_window=4096, sliding_window_pattern=4,
        tie_word_embeddings=True,
    )  # fmt: skip


def granite_3_1_8b() -> transformers.PretrainedConfig:  # ibm-granite/granite-3.1-8b-base
    return transformers.GraniteConfig(
        vocab_size=49155, hidden_size=4096, intermediate_size=12800, num_hidden_layers=40,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=10_000_000.0, embedding_multiplier=12.0, residual_multiplier=0.22,
        attention_multiplier=0.0078125, logits_scaling=16.0, tie_word_embeddings=True,
    )  # fmt: skip


def smollm3_3b() -> transformers.PretrainedConfig:  # HuggingFaceTB/SmolLM3-3B
    return transformers.SmolLM3Config(
        vocab_size=128256, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=4, max_position_embeddings=65536, rms_norm_eps=1e-6, tie_word_embeddings=True,
        no_rope_layer_interval=4, use_sliding_window=False, sliding_window=None, bos_token_id=None,
        eos_token_id=128012, pad_token_id=128004, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0},
    )  # fmt: skip


def ernie_4_5_0_3b() -> transformers.PretrainedConfig:  # baidu/ERNIE-4.5-0.3B-PT
    return transformers.Ernie4_5Config(
        vocab_size=103424, hidden_size=1024, intermediate_size=3072, num_hidden_layers=18, num_attention_heads=16,
        num_key_value_heads=2, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5, use_bias=False,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )  # fmt: skip


def hunyuan_7b() -> transformers.PretrainedConfig:  # tencent/Hunyuan-7B-Instruct
    return transformers.HunYuanDenseV1Config(
        vocab_size=128167, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, max_position_embeddings=262144, rms_norm_eps=1e-5,
        attention_bias=False, tie_word_embeddings=False, eos_token_id=127960, pad_token_id=127961,
        rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "alpha": 1000.0, "factor": 1.0},
    )  # fmt: skip


def olmo_2_1124_7b() -> transformers.PretrainedConfig:  # allenai/OLMo-2-1124-7B
    return transformers.Olmo2Config(
        vocab_size=100352, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=100257, pad_token_id=100277,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )  # fmt: skip


def olmo_2_1124_13b() -> transformers.PretrainedConfig:  # allenai/OLMo-2-1124-13B
    return transformers.Olmo2Config(
        vocab_size=100352, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
        num_key_value_heads=40, max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=100257, pad_token_id=100277,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
    )  # fmt: skip


def exaone_4_0_1_2b() -> transformers.PretrainedConfig:  # LGAI-EXAONE/EXAONE-4.0-1.2B
    return transformers.Exaone4Config(
        vocab_size=102400, hidden_size=2048, intermediate_size=4096, num_hidden_layers=30, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, max_position_embeddings=65536, rms_norm_eps=1e-5, sliding_window=None,
        layer_types=["full_attention"] * 30, tie_word_embeddings=True, bos_token_id=1, eos_token_id=361,
        pad_token_id=0,
        rope_parameters={"rope_type": "llama3", "rope_theta": 1_000_000.0, "factor": 16.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )  # fmt: skip


def olmo_3_1025_7b() -> transformers.PretrainedConfig:  # allenai/Olmo-3-1025-7B
    return transformers.Olmo3Config(
        vocab_size=100278, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=65536, sliding_window=4096,
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
    "mixtral-8x7b.yaml": mixtral_8x7b,
    "mixtral-8x22b.yaml": mixtral_8x22b,
    "qwen1.5-moe-a2.7b.yaml": qwen1_5_moe_a2_7b,
    "qwen3-30b-a3b.yaml": qwen3_30b_a3b,
    "deepseek-v2-lite.yaml": deepseek_v2_lite,
    "deepseek-v3.yaml": deepseek_v3,
    "glm-4.5-air.yaml": glm_4_5_air,
    "granite-3.1-3b-a800m.yaml": granite_3_1_3b_a800m,
    "hunyuan-a13b.yaml": hunyuan_a13b,
    "minimax-m2.yaml": minimax_m2,
    "ernie-4.5-21b-a3b.yaml": ernie_4_5_21b_a3b,
    "gpt-oss-20b.yaml": lambda: gpt_oss(24, 32),
    "gpt-oss-120b.yaml": lambda: gpt_oss(36, 128),
    "llava-1.5-7b.yaml": llava_1_5_7b,
    "t5-small.yaml": t5_small,
    "t5-base.yaml": t5_base,
    "t5-v1_1-base.yaml": t5_v1_1_base,
    "flan-t5-xl.yaml": flan_t5_xl,
    "starcoder2-15b.yaml": starcoder2_15b,
    "phi-3-mini-4k.yaml": phi_3_mini_4k,
    "gemma-7b.yaml": gemma_7b,
    "gemma-2-9b.yaml": gemma_2_9b,
    "gemma-3-27b.yaml": gemma_3_27b,
    "command-r-v01.yaml": command_r_v01,
    "command-r7b.yaml": command_r7b,
    "smollm3-3b.yaml": smollm3_3b,
    "ernie-4.5-0.3b.yaml": ernie_4_5_0_3b,
    "hunyuan-7b.yaml": hunyuan_7b,
    "olmo-2-1124-7b.yaml": olmo_2_1124_7b,
    "olmo-2-1124-13b.yaml": olmo_2_1124_13b,
    "exaone-4.0-1.2b.yaml": exaone_4_0_1_2b,
    "granite-3.1-8b.yaml": granite_3_1_8b,
    "olmo-3-1025-7b.yaml": olmo_3_1025_7b,
}


# ------------------------------------------------------------------------------------------ helpers
def unique_parameter_count(model: nn.Module) -> int:
    """Trainable parameters counted once each, however many modules share them (tied heads). Frozen ones are
    state, not weights: ERNIE 4.5 MoE's selection bias is an nn.Parameter with requires_grad=False in transformers,
    a buffer in archspec (as DeepSeek-V3's is in both)."""
    unique = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}
    return sum(p.numel() for p in unique.values() if p.requires_grad)


def head_is_tied(model: nn.Module) -> bool:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else model.lm_head
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else model.embed
    return head.weight is embed.weight


def reference_model(config: transformers.PretrainedConfig) -> nn.Module:
    with torch.device("meta"):
        if isinstance(config, transformers.T5Config):
            model = transformers.T5ForConditionalGeneration(config)
            if not config.scale_decoder_outputs:
                # transformers 5.x ties lm_head to `shared` for every T5 built from a config; a v1.1 checkpoint
                # (tie_word_embeddings=False, hence no output scaling) loads with its own lm_head.
                model.lm_head.weight = nn.Parameter(torch.empty_like(model.lm_head.weight))
            return model
        if isinstance(config, transformers.LlavaConfig):  # an image-text-to-text model, not AutoModelForCausalLM
            return transformers.LlavaForConditionalGeneration(config)
        return transformers.AutoModelForCausalLM.from_config(config)


# -------------------------------------------------------------------------------------------- tests
def test_every_spec_has_a_reference() -> None:
    """A new spec file needs a reference config here (or a note on why it cannot have one)."""
    on_disk = {path.name for path in SPECS.glob("*.yaml")}
    known = REFERENCES.keys() | BY_HAND.keys()
    assert on_disk - known == set(), "add a reference config for these specs"
    assert known - on_disk == set(), "these referenced specs no longer exist"


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


@pytest.mark.parametrize("filename", sorted(BY_HAND))
def test_parameter_count_equals_the_count_by_hand(filename: str) -> None:
    ours = archspec.build(archspec.load_spec(SPECS / filename), device="meta")
    assert sum(p.numel() for p in ours.parameters()) == BY_HAND[filename]()


def test_deepseek_moe_16b_is_the_published_size() -> None:
    assert round(deepseek_moe_16b_by_hand() / 1e9, 1) == 16.4


def test_glm_sizes_are_the_published_ones() -> None:
    """ChatGLM-6B's README says 6.2B parameters; GLM-130B's paper says 130B (two significant figures)."""
    assert round(chatglm_6b_by_hand() / 1e9, 1) == 6.2
    assert round(glm_130b_by_hand() / 1e10) * 10 == 130
