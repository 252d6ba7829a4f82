"""A config.json that leaves keys out means what transformers' config class makes of it.

For every supported model type, the config class's own defaults (`transformers.CONFIG_MAPPING[model_type]()`,
transformers 5.25) are written out in full and imported; the same config with only the keys archspec requires
(the sizes) is imported too. The two specs must be equal: any default archspec assumes that is not the class's
(qwen3_moe inheriting qwen3's head_dim 128, kv-head counts, sliding-window sizes, rope bases, ...) shows here.
Also: the window rules of the Qwen families and DeepSeek's dense layers, as transformers builds them.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
from transformers import CONFIG_MAPPING

import archspec
from archspec.analysis import param_counts
from archspec.interop.hf import SUPPORTED_MODEL_TYPES

REQUIRED = {
    # DeepseekV2Config's num_experts_per_tok defaults to None, which its model cannot build
    "deepseek_v2": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    + ("num_experts_per_tok",),
    "gpt2": ("vocab_size", "n_embd", "n_layer", "n_head"),
    "bloom": ("vocab_size", "hidden_size", "n_layer", "n_head"),
    "t5": ("vocab_size", "d_model"),
    "falcon": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"),
    "gpt_neox": ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"),
}
LLAMA_LIKE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
REQUIRED["glm4_moe"] = (*LLAMA_LIKE, "head_dim")  # set in _class_defaults


AUTO = {"t5": T.AutoModelForSeq2SeqLM, "llava": T.AutoModelForImageTextToText}


def _class_defaults(model_type: str) -> T.PretrainedConfig:
    config = CONFIG_MAPPING[model_type]()
    if model_type == "deepseek_v2":
        config.num_experts_per_tok = 6  # DeepSeek-V2-Lite's
    if model_type in ("hunyuan_v1_dense", "hunyuan_v1_moe"):
        config.head_dim = 128  # the class leaves it None, which its attention cannot build (None ** -0.5)
    if model_type == "glm4_moe":
        # GLM-4.5-Air's; the class's own hidden_size // heads = 42 rotates 21 dims by partial_rotary_factor 0.5,
        # which archspec refuses as a spec error (RoPE rotates pairs; transformers silently rotates 22)
        config.head_dim = 128
    if model_type == "llava":
        config.text_config.vocab_size = 32064  # the class defaults put the image token (32000) outside the vocab
    return config


def _meta_parameters(config: T.PretrainedConfig) -> int:
    with torch.device("meta"):
        model = AUTO.get(config.model_type, T.AutoModelForCausalLM).from_config(config)
    # trainable ones: ERNIE 4.5 MoE keeps its correction bias as a frozen nn.Parameter, archspec as a buffer
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_left_out_keys_take_the_config_class_defaults(model_type):
    config = _class_defaults(model_type)
    full = config.to_dict()
    if model_type == "llava":
        text = {key: full["text_config"][key] for key in LLAMA_LIKE} | {"model_type": "llama"}
        minimal = {"model_type": "llava", "text_config": text}
    else:
        minimal = {"model_type": model_type} | {key: full[key] for key in REQUIRED.get(model_type, LLAMA_LIKE)}
    spec = archspec.spec_from_hf(full, name="x")
    assert archspec.spec_from_hf(minimal, name="x") == spec
    # and the spec is the model transformers builds from those defaults: a default both sides agree on but that
    # transformers does not use (qwen3_moe's head_dim) shows in the parameter count
    assert param_counts(spec).total == _meta_parameters(config)


def _windows(config: T.PretrainedConfig) -> list[int | None]:
    spec = archspec.spec_from_hf(config.to_dict(), name="x")
    return [spec.window_for_layer(index) for index in range(spec.n_layers)]


SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize(
    "config",
    [
        T.Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=3, max_window_layers=2),
        T.Qwen2Config(**SMALL, use_sliding_window=False, sliding_window=3, max_window_layers=2),
        T.Qwen3Config(**SMALL, use_sliding_window=True, sliding_window=5, max_window_layers=4),
        T.Qwen2MoeConfig(**SMALL, use_sliding_window=True, sliding_window=3, max_window_layers=5),
        T.Qwen2MoeConfig(**SMALL, use_sliding_window=False),
        T.Qwen3MoeConfig(**SMALL, use_sliding_window=True, sliding_window=3),
        T.Qwen3MoeConfig(**SMALL, use_sliding_window=False, sliding_window=3),
    ],
    ids=["qwen2", "qwen2-off", "qwen3", "qwen2_moe", "qwen2_moe-off", "qwen3_moe", "qwen3_moe-off"],
)
def test_sliding_windows_are_the_layers_transformers_slides(config):
    """Each layer's window as transformers 5.25 builds it: the attention's `sliding_window` of layer i."""
    model = T.AutoModelForCausalLM.from_config(config)
    built = [getattr(layer.self_attn, "sliding_window", None) or None for layer in model.model.layers]
    assert _windows(config) == built


def test_deepseek_v3_with_more_dense_layers_than_layers_is_all_dense():
    """first_k_dense_replace >= num_hidden_layers (the class default 3 with 2 layers): every layer dense."""
    config = T.DeepseekV3Config(
        vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=4, n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=2,
        kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8,
    )  # fmt: skip
    assert config.first_k_dense_replace == 3
    spec = archspec.spec_from_hf(config.to_dict(), name="x")
    model = T.AutoModelForCausalLM.from_config(config)
    dense = ["experts" not in dict(layer.mlp.named_children()) for layer in model.model.layers]
    assert dense == [True, True]
    assert [spec.is_moe_layer(index) for index in range(spec.n_layers)] == [False, False]
    built = archspec.build(spec, device="meta")
    hf_count = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in built.parameters()) == hf_count
